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
names ``PPPP_cC_<original name>``, C the camera within the pair (1 or 2). Needs h5py and scipy.
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
    config_dir: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    variants: Sequence[str] = ("labeled", "detected"),
) -> dict[str, dict[str, int]]:
    """Write the CUHK03-NP layout under ``out_root/cuhk03-np``; returns the images written per variant and split."""
    try:
        import h5py
        from scipy.io import loadmat
    except ImportError as exc:  # optional dependencies (the "test" and "book" extras)
        raise ImportError("the CUHK03 converter needs h5py and scipy") from exc
    raw_mat, config_dir = Path(raw_mat), Path(config_dir)
    for path in [raw_mat] + [config_dir / f"cuhk03_new_protocol_config_{v}.mat" for v in variants]:
        if not path.is_file():
            raise FileNotFoundError(f"cuhk03: expected {str(path)!r} (canlib downloads nothing)")
    counts: dict[str, dict[str, int]] = {}
    with h5py.File(raw_mat, "r") as mat:
        for variant in variants:
            config = loadmat(config_dir / f"cuhk03_new_protocol_config_{variant}.mat")
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
                        raise ValueError(f"cuhk03: {name} (listed in the {variant} config) is missing from {raw_mat}")
                    cam = int(name.split("_")[2])
                    Image.fromarray(image).save(target / f"{labels[idx]:04d}_c{cam}_{name}")
                    written += 1
                counts[variant][folder] = written
            log.info("cuhk03-np %s: %s", variant, counts[variant])
    return counts
