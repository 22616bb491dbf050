"""Readers for the public re-ID benchmarks, the synthetic set and any Market-layout folder.

canlib downloads nothing. Each reader takes the folder the user already holds (the data
set folder itself or its parent), checks the layout at once and compares what it finds
with the official statistics. Market-1501, CUHK03 and MSMT17 are for non-commercial
research only and must be obtained from their owners; DukeMTMC-reID was withdrawn by its
creators in 2019 and is read only for comparison with published numbers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from canlib.data.base import DISTRACTOR_PID, JUNK_PID, DatasetLayoutError, Record, ReIDDataset, list_images, locate_root
from canlib.data.checks import check_split, report_findings

log = logging.getLogger(__name__)

#: The WHOLE file name: pid (``-1`` junk, ``0`` distractor), 1-based camera, then an optional
#: sequence ``sS`` and ``_``-separated numbers (a letter may lead): Market-1501's
#: ``0001_c1s1_001051_00.jpg``, DukeMTMC-reID's ``0001_c2_f0046182.jpg``, CUHK03-NP's
#: ``0001_c1_1_001_1_01.png``. Copies such as ``0001_c1s1_001051_00 copy.jpg`` do not match.
MARKET_NAME = re.compile(r"(-?\d+)_c(\d+)(?:s\d+)?(?:_[A-Za-z]?\d+)*\.[A-Za-z]+")

MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")


def parse_market_name(name: str) -> tuple[int, int] | None:
    """``(pid, camid)`` (camid 0-based) from a Market-style file name, or ``None`` if it does not match."""
    match = MARKET_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)) - 1


class MarketLayoutDataset(ReIDDataset):
    """A folder with ``bounding_box_train/``, ``bounding_box_test/`` and ``query/`` of Market-named images.

    Training images of pid ``-1`` or ``0`` are not identities and are left out; query junk too.
    Names that do not parse, or whose camera exceeds ``num_cameras``, are skipped with a warning.
    """

    name: str = "folder"
    candidates: tuple[str, ...] = ()
    num_cameras: ClassVar[int | None] = None

    def __init__(self, root: str | os.PathLike[str], **options: Any) -> None:
        self.dataset_dir = self.locate(root)
        skipped: list[str] = []
        train = self._parse(self.dataset_dir / "bounding_box_train", skipped, train=True)
        query = self._parse(self.dataset_dir / "query", skipped, train=False)
        gallery = self._parse(self.dataset_dir / "bounding_box_test", skipped, train=False, keep_junk=True)
        for folder, records in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
            if not records:
                raise DatasetLayoutError(
                    f"{self.name}: {self.dataset_dir / folder} holds no usable image (expected Market-named files "
                    f"PPPP_cC[sS]_NNNN[_NN].jpg in each of {', '.join(MARKET_FOLDERS)})"
                )
        if skipped:  # one warning for the whole data set
            warnings.warn(
                f"{self.name}: skipped {len(skipped)} file(s) under {str(self.dataset_dir)!r} whose "
                f"names are not PPPP_cC[sS]_NNNN[_NN].ext with a known camera (e.g. {skipped[0]!r})",
                stacklevel=2,
            )
        query = [r for r in query if r[1] != JUNK_PID]
        super().__init__(train, query, gallery, root=self.dataset_dir, **options)

    def locate(self, root: str | os.PathLike[str]) -> Path:
        """The data set folder under ``root`` (``root`` itself or one of ``candidates``)."""
        return locate_root(root, self.candidates, MARKET_FOLDERS, self.name)

    def _parse(self, folder: Path, bad: list[str], *, train: bool, keep_junk: bool = False) -> list[Record]:
        """The records of ``folder``; names that do not parse are appended to ``bad`` (as folder/name)."""
        records: list[Record] = []
        for path in list_images(folder):
            parsed = parse_market_name(path.name)
            if parsed is None or parsed[1] < 0 or (self.num_cameras is not None and parsed[1] >= self.num_cameras):
                bad.append(f"{folder.name}/{path.name}")
                continue
            pid, cam = parsed
            if train and pid in (JUNK_PID, DISTRACTOR_PID):
                continue
            if pid < JUNK_PID:
                bad.append(f"{folder.name}/{path.name}")
                continue
            records.append((str(path), pid, cam))
        return records


class Market1501(MarketLayoutDataset):
    """Market-1501 (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015).

    Official statistics: 751 train ids / 12,936 train images; 750 test ids, 3,368 query
    images; 19,732 files in ``bounding_box_test``, of which 3,819 junk (pid -1), leaving
    15,913 gallery images (751 ids with the distractors, pid 0); 6 cameras. Names
    ``PPPP_cCsS_FFFFFF_BB.jpg``. Non-commercial research use; obtain it from its authors.
    Expected at ``root`` or ``root/Market-1501-v15.09.15`` (also ``Market-1501``, ``market1501``).
    """

    name: str = "market1501"
    candidates = ("Market-1501-v15.09.15", "Market-1501", "market1501", "market1501/Market-1501-v15.09.15")
    num_cameras = 6
    official: Mapping[str, int] = {
        "train_ids": 751,
        "train_images": 12936,
        "query_ids": 750,
        "query_images": 3368,
        "gallery_ids": 751,
        "gallery_images": 15913,
        "gallery_junk": 3819,
        "cameras": 6,
    }


class DukeMTMCReID(MarketLayoutDataset):
    """DukeMTMC-reID (Ristani et al., ECCV-W 2016; Zheng et al., ICCV 2017).

    Official statistics: 702 train ids / 16,522 images; 702 query ids / 2,228 images;
    17,661 gallery images (1,110 ids: the 702 plus 408 distractor ids); 8 cameras; no junk.
    Names ``PPPP_cC_fFFFFFFF.jpg``. The DukeMTMC data set was WITHDRAWN by its creators in
    2019; it is read here only to compare with published numbers, under its original
    non-commercial terms. Expected at ``root`` or ``root/DukeMTMC-reID``.
    """

    name: str = "dukemtmc"
    candidates = ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid")
    num_cameras = 8
    official: Mapping[str, int] = {
        "train_ids": 702,
        "train_images": 16522,
        "query_ids": 702,
        "query_images": 2228,
        "gallery_ids": 1110,
        "gallery_images": 17661,
        "cameras": 8,
    }


class CUHK03NP(MarketLayoutDataset):
    """CUHK03 under the new protocol (Li et al., CVPR 2014; split of Zhong et al., CVPR 2017).

    767 train ids / 700 test ids; "labeled" (hand-drawn boxes): 7,368 train / 1,400 query /
    5,328 gallery images; "detected" (DPM boxes): 7,365 / 1,400 / 5,332. Market-like
    ``.png`` names whose camera is the camera within a pair (c1/c2), so 2 "cameras" are
    counted (not compared: the source folder could not be inspected here). Expected at
    ``root/cuhk03-np/<variant>/`` (also ``root/<variant>/`` or the variant folder itself).
    Non-commercial research use. The paper does not say which variant Table 6 uses.
    """

    name: str = "cuhk03np"
    variants: ClassVar[dict[str, dict[str, int]]] = {
        "labeled": {
            "train_ids": 767,
            "train_images": 7368,
            "query_ids": 700,
            "query_images": 1400,
            "gallery_ids": 700,
            "gallery_images": 5328,
        },
        "detected": {
            "train_ids": 767,
            "train_images": 7365,
            "query_ids": 700,
            "query_images": 1400,
            "gallery_ids": 700,
            "gallery_images": 5332,
        },
    }

    def __init__(self, root: str | os.PathLike[str], variant: str = "labeled", **options: Any) -> None:
        if variant not in self.variants:
            raise ValueError(f"cuhk03np: variant must be one of {sorted(self.variants)}, got {variant!r}")
        self.variant = variant
        parents = ("cuhk03-np", "CUHK03-NP", "cuhk03_np", "cuhk03")
        self.candidates = (*(f"{d}/{variant}" for d in parents), variant)
        options.setdefault("official", self.variants[variant])
        super().__init__(root, **options)


class MSMT17(ReIDDataset):
    """MSMT17 (Wei et al., "Person Transfer GAN ...", CVPR 2018).

    Official statistics: 1,041 train ids / 32,621 images (``list_train.txt`` 30,248 plus
    ``list_val.txt`` 2,373); 3,060 test ids, 11,659 query and 82,161 gallery images; 15
    cameras. Lists hold ``relative/path pid`` lines; the camera is the third ``_`` field of the
    file name (1-based). Version 1 keeps images in ``train/`` and ``test/``, version 2 in
    ``mask_train_v2/`` and ``mask_test_v2/``. ``combine_train_val=True`` (default, as is
    common) trains on train+val. Non-commercial research use; obtain it from its authors.
    """

    name: str = "msmt17"
    candidates: tuple[str, ...] = (
        "MSMT17_V1",
        "MSMT17_V2",
        "MSMT17",
        "msmt17",
        "msmt17/MSMT17_V1",
        "msmt17/MSMT17_V2",
    )
    lists: ClassVar[tuple[str, ...]] = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
    official: Mapping[str, int] = {
        "train_ids": 1041,
        "train_images": 32621,
        "query_ids": 3060,
        "query_images": 11659,
        "gallery_ids": 3060,
        "gallery_images": 82161,
        "cameras": 15,
    }

    def __init__(self, root: str | os.PathLike[str], combine_train_val: bool = True, **options: Any) -> None:
        self.dataset_dir = self._locate(root)
        folder = self.dataset_dir
        train_dir, test_dir = ("train", "test") if (folder / "train").is_dir() else ("mask_train_v2", "mask_test_v2")
        train = self._read_list(folder / "list_train.txt", folder / train_dir)
        if combine_train_val:
            train += self._read_list(folder / "list_val.txt", folder / train_dir)
        else:
            official = dict(self.official, train_images=30248)
            official.pop("train_ids")
            options.setdefault("official", official)
        query = self._read_list(folder / "list_query.txt", folder / test_dir)
        gallery = self._read_list(folder / "list_gallery.txt", folder / test_dir)
        super().__init__(train, query, gallery, root=folder, **options)

    def _locate(self, root: str | os.PathLike[str]) -> Path:
        base = Path(root).expanduser()
        for folder in [base] + [base / c for c in self.candidates]:
            if all((folder / f).is_file() for f in self.lists) and (
                ((folder / "train").is_dir() and (folder / "test").is_dir())
                or ((folder / "mask_train_v2").is_dir() and (folder / "mask_test_v2").is_dir())
            ):
                return folder
        raise DatasetLayoutError(
            f"msmt17: no folder with the expected layout under root {str(base)!r}. Expected "
            f"{', '.join(self.lists)} and the image folders 'train/' + 'test/' (v1) or 'mask_train_v2/' + "
            f"'mask_test_v2/' (v2), in the root itself or in one of {', '.join(self.candidates)}. "
            "canlib downloads nothing: place the data set there yourself."
        )

    @staticmethod
    def _read_list(list_file: Path, image_dir: Path) -> list[Record]:
        records: list[Record] = []
        for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rel, pid_text = line.split()
                pid, cam = int(pid_text), int(Path(rel).name.split("_")[2]) - 1
            except (ValueError, IndexError) as exc:
                raise ValueError(f"msmt17: cannot parse line {lineno} of {str(list_file)!r}: {line!r}") from exc
            records.append((str(image_dir / rel), pid, cam))
        return records


class SyntheticReID(MarketLayoutDataset):
    """The synthetic set generated by :func:`canlib.data.synthetic.make_synthetic` (Market layout).

    Its "official" statistics are the counts the generator recorded in ``meta.json``.
    """

    name: str = "synthetic"
    candidates = ("synthetic",)

    def __init__(self, root: str | os.PathLike[str], **options: Any) -> None:
        folder = self.locate(root)
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            options.setdefault("official", meta.get("statistics", {}))
            self.meta = meta
            self.look_alike_groups = [list(g["pids"]) for g in meta.get("groups", [])]
        else:
            log.warning("synthetic: %s has no meta.json; counts are not checked", folder)
            self.meta = {}
        super().__init__(folder, **options)


DATASETS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": Market1501,
    "dukemtmc": DukeMTMCReID,
    "cuhk03np": CUHK03NP,
    "msmt17": MSMT17,
    "synthetic": SyntheticReID,
    "folder": MarketLayoutDataset,
}

_ALIASES = {
    "market": "market1501",
    "market-1501": "market1501",
    "duke": "dukemtmc",
    "dukemtmcreid": "dukemtmc",
    "dukemtmc-reid": "dukemtmc",
    "cuhk03": "cuhk03np",
    "cuhk03-np": "cuhk03np",
    "msmt": "msmt17",
}


def official_statistics(name: str) -> dict[str, int]:
    """The official counts of data set ``name`` (an alias too) that its reader checks; empty if it has none."""
    reader = DATASETS.get(_ALIASES.get(name.lower(), name.lower()))
    return dict(getattr(reader, "official", {}) or {})


def dataset_names() -> tuple[str, ...]:
    """Every name :func:`load_dataset` accepts (case aside): the readers', then their aliases."""
    return (*sorted(DATASETS), *sorted(_ALIASES))


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, **options: Any) -> ReIDDataset:
    """Read data set ``name`` (see ``DATASETS``) from ``root``; ``options`` go to its reader.

    ``root=None`` means ``$CANLIB_DATA_ROOT`` (set by the Makefile to the synthetic set).
    Common options: ``keep_junk`` (default False), ``verify_images``, ``skip_corrupt``,
    ``check_stats`` (default True); ``variant`` for cuhk03np; ``combine_train_val`` for msmt17.
    The query/gallery split is checked against the protocol (:func:`canlib.data.checks.check_split`):
    a warning counts the queries it drops, a :class:`~canlib.data.checks.DatasetCheckError` says
    why none can be scored.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    if root is None:
        root = os.environ.get("CANLIB_DATA_ROOT")
        if not root:
            raise ValueError(f"{name}: no root given and $CANLIB_DATA_ROOT is not set")
    dataset = DATASETS[key](root, **options)
    report_findings(check_split(dataset))
    return dataset
