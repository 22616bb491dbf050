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
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
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
    for path in given:
        if not path.exists():
            raise FileNotFoundError(
                f"--splits {str(path)!r}: no such file or folder (expected the folder holding "
                f"{SPLIT_FILE.format('labeled')} and {SPLIT_FILE.format('detected')}, or those files)"
            )
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


@dataclass(frozen=True)
class SplitFile:
    """One variant's new-protocol split, read and checked: its file names, their labels, and the
    0-based indices of each split (:data:`SPLITS`)."""

    path: Path
    names: list[str]
    labels: np.ndarray
    indices: dict[str, np.ndarray]


#: What a new-protocol split file holds.
SPLIT_KEYS = ("filelist", "labels", *(key for key, _ in SPLITS))


def read_split(path: Path) -> SplitFile:
    """Read a new-protocol split file (MATLAB v5) and check it before anything is written: ``ValueError``
    naming the file for one that is not such a file, lacks a key, or lists an index beyond its files."""
    from scipy.io import loadmat

    expected = f"expected a new-protocol split file ({SPLIT_FILE.format('labeled')}: {', '.join(SPLIT_KEYS)})"
    try:
        config = loadmat(path)
    except Exception as exc:  # scipy's refusals have no common type (MatReadError, ValueError, ...)
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"--splits {str(path)!r} cannot be read as a MATLAB v5 file ({why}): {expected}") from None
    lacking = [key for key in SPLIT_KEYS if key not in config]
    if lacking:
        raise ValueError(f"--splits {str(path)!r} has no {', '.join(lacking)}: {expected}")
    names = [str(np.asarray(cell).ravel()[0]) for cell in config["filelist"].ravel()]
    labels = config["labels"].ravel().astype(int)
    if len(labels) != len(names):
        raise ValueError(f"--splits {str(path)!r}: {len(labels)} labels for {len(names)} files (filelist): {expected}")
    indices = {key: config[key].ravel().astype(int) - 1 for key, _ in SPLITS}
    for key, idx in indices.items():
        bad = idx[(idx < 0) | (idx >= len(names))]
        if bad.size:
            raise ValueError(
                f"--splits {str(path)!r}: {key} holds index {int(bad[0]) + 1}, outside its {len(names)} files "
                "(1-based indices into filelist)"
            )
    return SplitFile(path, names, labels, indices)


def _open_raw(raw_mat: Path) -> Any:
    """The original release, open (h5py); ``ValueError`` naming ``--mat`` for any other file."""
    import h5py

    if not raw_mat.is_file():
        raise FileNotFoundError(f"cuhk03: expected {str(raw_mat)!r} (canlib downloads nothing)")
    expected = "expected the original release's cuhk-03.mat, a MATLAB v7.3 (HDF5) file"
    if not h5py.is_hdf5(raw_mat):
        with raw_mat.open("rb") as fh:
            v5 = fh.read(10) == b"MATLAB 5.0"
        what = "a MATLAB v5 file (such as a split file)" if v5 else "not an HDF5 file"
        raise ValueError(f"--mat {str(raw_mat)!r} is {what}: {expected}")
    return h5py.File(raw_mat, "r")


def check_out(out_root: str | os.PathLike[str], variants: Sequence[str], overwrite: bool) -> None:
    """Before any write: each variant's folder under ``out_root/cuhk03-np`` is absent or empty, unless
    ``overwrite`` (it is then replaced whole): a conversion never mixes two splits' images."""
    for variant in variants:
        target = Path(out_root) / "cuhk03-np" / variant
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"--out {str(out_root)!r}: {target} is a file, not a folder")
        held = sum(1 for p in target.rglob("*") if p.is_file()) if target.is_dir() else 0
        if held and not overwrite:
            raise FileExistsError(
                f"--out {str(out_root)!r} already holds {target} ({held} files): pass --overwrite to replace it "
                "whole, or choose another --out (converting into it would mix two splits' images)"
            )


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


def _write_variant(mat: Any, raw_mat: Path, split: SplitFile, refs: dict[str, Any], target: Path) -> dict[str, int]:
    """Write one variant's images into ``target`` (a new folder); the images written per split."""
    counts: dict[str, int] = {}
    for key, folder in SPLITS:
        (target / folder).mkdir(parents=True)
        for idx in split.indices[key]:
            name = split.names[idx]
            image = _load_image(mat, refs[name])
            if image is None:
                raise ValueError(f"cuhk03: {name} (listed in {split.path}) is an empty cell of {raw_mat}")
            cam = int(name.split("_")[2])
            Image.fromarray(image).save(target / folder / f"{split.labels[idx]:04d}_c{cam}_{name}")
        counts[folder] = len(split.indices[key])
    return counts


def _variant_refs(mat: Any, raw_mat: Path, variant: str, split: SplitFile) -> dict[str, Any]:
    """:func:`read_raw_images` of ``variant``, checked: the variant is there and holds every listed file."""
    if variant not in mat:
        raise ValueError(
            f"--mat {str(raw_mat)!r} has no {variant!r} images: expected the original release's cuhk-03.mat "
            f"(with {' and '.join(repr(v) for v in VARIANTS)})"
        )
    refs = read_raw_images(mat, variant)
    missing = [name for name in split.names if name not in refs]
    if missing:
        raise ValueError(f"cuhk03: {missing[0]} (listed in {split.path}) is missing from {raw_mat}")
    return refs


def convert_cuhk03_np(
    raw_mat: str | os.PathLike[str],
    splits: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_root: str | os.PathLike[str],
    variants: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, dict[str, int]]:
    """Write the CUHK03-NP layout under ``out_root/cuhk03-np`` for the variants ``splits`` gives
    (:func:`split_files`), read each back with the data set's reader (a warning names counts that
    differ from the official ones), and return the images written per variant and split.

    Every input is checked before any write (:func:`read_split`, :func:`check_out`); a variant's folder
    is written beside its place and renamed into it, so that a failure leaves no partial folder, and
    an existing one is replaced whole (``overwrite``) or refused."""
    try:
        import h5py  # noqa: F401
        import scipy.io  # noqa: F401
    except ImportError as exc:  # optional dependencies (the "test" and "book" extras)
        raise ImportError("the CUHK03 converter needs h5py and scipy") from exc
    from canlib.data.datasets import CUHK03NP

    raw_mat, configs = Path(raw_mat), split_files(splits, variants)
    check_out(out_root, list(configs), overwrite)
    read = {variant: read_split(path) for variant, path in configs.items()}
    counts: dict[str, dict[str, int]] = {}
    with _open_raw(raw_mat) as mat:
        refs = {variant: _variant_refs(mat, raw_mat, variant, split) for variant, split in read.items()}
        for variant, split in read.items():
            target = Path(out_root) / "cuhk03-np" / variant
            partial = target.with_name(f".{variant}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            try:
                counts[variant] = _write_variant(mat, raw_mat, split, refs[variant], partial)
                shutil.rmtree(target, ignore_errors=True)  # empty, or replaced whole (check_out)
                partial.rename(target)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            log.info("cuhk03-np %s: %s\n%s", variant, counts[variant], CUHK03NP(out_root, variant=variant).summary())
    return counts
