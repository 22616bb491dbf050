"""Convert the original CUHK03 release to the CUHK03-NP folder layout that :class:`CUHK03NP` reads.

Inputs (obtained by the user from the data set's owners; canlib downloads nothing):

* ``cuhk-03.mat`` (Li et al., CVPR 2014), a MATLAB v7.3 (HDF5) file: ``labeled`` and
  ``detected`` each hold 5 camera pairs; a pair is a cell array of (ids x 10) images,
  the first five seen by the pair's first camera, the last five by its second; empty
  cells are missing images.
* ``cuhk03_new_protocol_config_{labeled,detected}.mat`` (Zhong et al., CVPR 2017),
  MATLAB v5 files with ``filelist`` (names ``<pair>_<id>_<camera>_<image>.png``),
  ``labels`` (the identity of each file) and the 1-based ``train_idx``, ``query_idx``
  and ``gallery_idx``.

Output: ``out/cuhk03-np/<variant>/{bounding_box_train,query,bounding_box_test}/`` with
names ``PPPP_cC_<original name>``, C the camera within the pair (1 or 2), read back by
:class:`canlib.data.datasets.CUHK03NP` (``python -m canlib convert-cuhk03`` runs it). Needs h5py
(the v7.3 file is HDF5) and scipy (``scipy.io.loadmat`` for the v5 split files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

SPLITS = (("train_idx", "bounding_box_train"), ("query_idx", "query"), ("gallery_idx", "bounding_box_test"))
VARIANTS = ("labeled", "detected")
#: The split file of each variant, as Zhong et al. distribute them.
SPLIT_FILE = "cuhk03_new_protocol_config_{}.mat"


def split_files(
    splits: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], variants: Sequence[str] | None = None
) -> dict[str, Path]:
    """The new-protocol split file of each variant: ``splits`` is a folder holding
    ``cuhk03_new_protocol_config_<variant>.mat`` for each of ``variants`` (default both), or the files
    themselves, each named after its variant (``..._labeled.mat``, ``..._detected.mat``)."""
    given = [Path(splits)] if isinstance(splits, (str, os.PathLike)) else [Path(p) for p in splits]
    if len(given) == 1 and given[0].is_dir():
        found = {v: given[0] / SPLIT_FILE.format(v) for v in (variants or VARIANTS)}
    else:
        found = {}
        for path in given:
            named = [v for v in VARIANTS if v in path.name.lower()]
            if len(named) != 1:
                raise ValueError(
                    f"cuhk03: cannot tell the variant of the split file {str(path)!r}: expected "
                    f"a name with 'labeled' or 'detected' ({SPLIT_FILE.format('labeled')})"
                )
            if named[0] in found:
                raise ValueError(f"cuhk03: two split files for {named[0]}: {str(found[named[0]])!r}, {str(path)!r}")
            found[named[0]] = path
        found = {v: p for v, p in found.items() if variants is None or v in variants}
    if not found:
        raise ValueError(f"cuhk03: no split file given for the variants {list(variants or VARIANTS)}")
    for path in found.values():
        if not path.is_file():
            raise FileNotFoundError(f"cuhk03: expected {str(path)!r} (canlib downloads nothing)")
    return found


def _cell_name(pair: int, pid: int, image: int) -> str:
    """The new-protocol file name of image ``image`` (0-9) of id ``pid`` in camera pair ``pair`` (0-based)."""
    return f"{pair + 1}_{pid + 1:03d}_{1 if image < 5 else 2}_{image + 1:02d}.png"


def read_raw_images(mat: Any, variant: str) -> dict[str, Any]:
    """Map every new-protocol file name to its HDF5 image reference in an open ``cuhk-03.mat``."""
    refs: dict[str, Any] = {}
    for pair, pair_ref in enumerate(np.asarray(mat[variant]).ravel()):
        cells = np.asarray(mat[pair_ref]).T  # (ids, 10): MATLAB's column-major order reversed by HDF5
        for pid in range(cells.shape[0]):
            for image in range(cells.shape[1]):
                refs[_cell_name(pair, pid, image)] = cells[pid, image]
    return refs


def _load_image(mat: Any, ref: Any) -> np.ndarray | None:
    data = np.asarray(mat[ref])
    if data.ndim != 3 or data.size == 0:
        return None  # an empty cell
    return np.ascontiguousarray(data.transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)


def convert_cuhk03_np(
    raw_mat: str | os.PathLike[str],
    splits: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_root: str | os.PathLike[str],
    variants: Sequence[str] | None = None,
) -> dict[str, dict[str, int]]:
    """Write the CUHK03-NP layout under ``out_root/cuhk03-np`` for the variants ``splits`` gives
    (:func:`split_files`), read each back with the data set's reader (a warning names counts that
    differ from the official ones), and return the images written per variant and split."""
    try:
        import h5py
        from scipy.io import loadmat
    except ImportError as exc:  # optional dependencies (the "test" and "book" extras)
        raise ImportError("the CUHK03 converter needs h5py and scipy") from exc
    from canlib.data.datasets import CUHK03NP

    raw_mat, configs = Path(raw_mat), split_files(splits, variants)
    if not raw_mat.is_file():
        raise FileNotFoundError(f"cuhk03: expected {str(raw_mat)!r} (canlib downloads nothing)")
    counts: dict[str, dict[str, int]] = {}
    with h5py.File(raw_mat, "r") as mat:
        for variant, config_file in configs.items():
            config = loadmat(config_file)
            names = [str(np.asarray(cell).ravel()[0]) for cell in config["filelist"].ravel()]
            labels = config["labels"].ravel().astype(int)
            refs = read_raw_images(mat, variant)
            counts[variant] = {}
            for key, folder in SPLITS:
                target = Path(out_root) / "cuhk03-np" / variant / folder
                target.mkdir(parents=True, exist_ok=True)
                written = 0
                for idx in config[key].ravel().astype(int) - 1:
                    name = names[idx]
                    image = _load_image(mat, refs[name]) if name in refs else None
                    if image is None:
                        raise ValueError(f"cuhk03: {name} (listed in {config_file}) is missing from {raw_mat}")
                    cam = int(name.split("_")[2])
                    Image.fromarray(image).save(target / f"{labels[idx]:04d}_c{cam}_{name}")
                    written += 1
                counts[variant][folder] = written
            log.info("cuhk03-np %s: %s\n%s", variant, counts[variant], CUHK03NP(out_root, variant=variant).summary())
    return counts
