"""The common record format of every re-ID data set, its checks and its summary.

A data set is three lists of records ``(path, pid, camid)``: ``train``, ``query`` and
``gallery``. Camera ids are 0-based. Training pids are relabelled to ``0..N-1`` (in the
order of the sorted raw pids) so they index a classifier; query and gallery pids keep
their raw values because the evaluator only compares them. Gallery images of pid ``-1``
("junk", Market-1501's convention) are dropped by default; pid ``0`` (distractors) stays.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: One image: ``(path, pid, camid)``.
Record = tuple[str, int, int]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
JUNK_PID = -1
DISTRACTOR_PID = 0


class DatasetLayoutError(FileNotFoundError):
    """The folder given as a data set root does not have the expected layout."""


class ImageReadError(OSError):
    """An image file is missing, unreadable or corrupt; the message names the file."""


class StatisticsMismatchWarning(UserWarning):
    """The counts found on disk differ from a data set's official statistics."""


#: 16-bit grayscale modes: scaled to 8 bits (PIL's own conversion to RGB clips them, all white).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: Modes converted to RGB as PIL does it, named as the data set's note says them.
_CONVERTED = {"L": "grayscale", "LA": "grayscale", "P": "palette", "RGBA": "RGBA", "CMYK": "CMYK", "1": "1-bit"}


def _to_rgb(img: Image.Image, path: str | os.PathLike[str]) -> Image.Image:
    """``img`` as 8-bit RGB: 16-bit grayscale scaled by 1/256, 32-bit modes refused (no known range)."""
    if img.mode in _SIXTEEN_BIT:
        img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
    elif img.mode in ("I", "F"):
        raise ImageReadError(
            f"cannot read image {os.fspath(path)!r}: its pixels are 32-bit ({img.mode} mode) with no known range; "
            "convert it to 8-bit RGB"
        )
    return img.convert("RGB")


def image_conversion(path: str | os.PathLike[str]) -> str | None:
    """What :func:`read_image` converts ``path`` from (``"16-bit grayscale"``, ``"RGBA"``, ...), None for RGB."""
    with Image.open(path) as img:
        return "16-bit grayscale" if img.mode in _SIXTEEN_BIT else _CONVERTED.get(img.mode)


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image fully and return it as RGB; raise :class:`ImageReadError` naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img, path)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad files
        raise ImageReadError(f"cannot read image {os.fspath(path)!r}: {exc}") from exc


def find_unreadable(paths: Sequence[str], workers: int | None = None) -> dict[str, str]:
    """``{path: message}`` for the images among ``paths`` that do not decode, in their order.

    Decoding runs in ``workers`` threads (default: one per core; PIL releases the GIL).
    """

    def check(path: str) -> str | None:
        try:
            read_image(path)
        except ImageReadError as exc:
            return str(exc)
        return None

    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < 64:
        found = [check(path) for path in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            found = list(pool.map(check, paths, chunksize=64))
    return {path: msg for path, msg in zip(paths, found, strict=True) if msg is not None}


def conversions_note(paths: Sequence[str]) -> str:
    """One line counting the images among ``paths`` that are not RGB and are converted ("" when none)."""
    counts = Counter(kind for kind in map(image_conversion, paths) if kind is not None)
    return ", ".join(f"{n:,} {kind}" for kind, n in sorted(counts.items()))


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (other files are ignored)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def locate_root(root: str | os.PathLike[str], candidates: Sequence[str], required: Sequence[str], what: str) -> Path:
    """Find the data set folder: ``root`` itself or ``root/<candidate>``, holding every ``required`` entry.

    Raises :class:`DatasetLayoutError` naming the root, the places tried and the entries expected.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetLayoutError(
            f"{what}: root {str(base)!r} is not a directory; expected a folder holding {', '.join(required)}"
        )
    tried = [base] + [base / c for c in candidates]
    for folder in tried:
        if all((folder / r).exists() for r in required):
            return folder
    missing_here = [r for r in required if not (base / r).exists()]
    raise DatasetLayoutError(
        f"{what}: no folder with the expected layout under root {str(base)!r}. "
        f"Expected {', '.join(repr(r) for r in required)} in the root itself or in one of "
        f"{', '.join(repr(c) for c in candidates) or '(no sub-folders)'}; the root lacks {', '.join(missing_here)}. "
        "canlib downloads nothing: place the data set there yourself."
    )


def relabel(records: Iterable[Record]) -> tuple[list[Record], dict[int, int]]:
    """Map the raw pids of ``records`` to ``0..N-1`` in sorted order; returns the records and the map."""
    records = list(records)
    mapping = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in records}))}
    return [(path, mapping[pid], cam) for path, pid, cam in records], mapping


class ReIDDataset:
    """Train/query/gallery records plus the checks every reader shares.

    ``num_train_pids``: training ids; ``num_train_cams``: distinct cameras among the training images.

    Subclasses parse their layout and pass the raw records here. ``official`` maps count
    names (see :meth:`statistics`) to the published values; counts found that differ are
    reported with a :class:`StatisticsMismatchWarning`.
    """

    name: str = "reid"
    official: Mapping[str, int] = {}
    #: The identities a validation split holds out (set by :func:`canlib.data.split.hold_out_validation`).
    held_out_pids: list[int]
    #: Raw pids of identities drawn as look-alikes of each other (the synthetic set records them), or None.
    look_alike_groups: list[list[int]] | None = None

    def __init__(
        self,
        train: Sequence[Record],
        query: Sequence[Record],
        gallery: Sequence[Record],
        *,
        root: str | os.PathLike[str] = "",
        keep_junk: bool = False,
        relabel_train: bool = True,
        verify_images: bool = False,
        skip_corrupt: bool = False,
        check_stats: bool = True,
        official: Mapping[str, int] | None = None,
    ) -> None:
        self.root = str(root)
        if official is not None:
            self.official = dict(official)
        self.num_junk = sum(1 for _, pid, _ in gallery if pid == JUNK_PID)
        if not keep_junk:
            gallery = [r for r in gallery if r[1] != JUNK_PID]
        self.num_corrupt_skipped = 0
        if verify_images:
            train, query, gallery = (self._verify(s, skip_corrupt) for s in (train, query, gallery))
        self.raw_train_pids: list[int] = sorted({pid for _, pid, _ in train})
        if relabel_train:
            self.train, self.pid_map = relabel(train)
        else:
            self.train, self.pid_map = list(train), {p: p for p in self.raw_train_pids}
        self.query: list[Record] = list(query)
        self.gallery: list[Record] = list(gallery)
        self.num_train_pids = len(self.raw_train_pids)
        self.num_train_cams = len({cam for _, _, cam in self.train})
        if check_stats and self.official:
            self.check_statistics()
        log.info(
            "loaded %s from %s: %d train ids / %d images, %d query, %d gallery",
            self.name,
            self.root,
            self.num_train_pids,
            len(self.train),
            len(self.query),
            len(self.gallery),
        )

    def verify_images(
        self, subsets: Sequence[str] = ("train", "query", "gallery"), part: tuple[int, int] = (0, 1)
    ) -> int:
        """Decode every image of ``subsets`` once; return how many, or raise :class:`ImageReadError`
        (one line: how many do not decode and the first one's file and reason).

        ``part=(i, n)`` checks only every n-th image from the i-th (one of n processes' share).
        """
        paths = [path for subset in subsets for path, _, _ in getattr(self, subset)][part[0] :: part[1]]
        bad = find_unreadable(paths)
        if bad:
            more = f" (and {len(bad) - 1} more of the {len(paths):,} images)" if len(bad) > 1 else ""
            raise ImageReadError(f"{self.name}: {next(iter(bad.values()))}{more}")
        note = conversions_note(paths)
        if note:  # once per data set: what is not RGB is read as RGB (16-bit grayscale scaled to 8 bits)
            log.info("%s: converted to 8-bit RGB as they are read: %s images", self.name, note)
        return len(paths)

    def _verify(self, records: Sequence[Record], skip: bool) -> list[Record]:
        kept = []
        skipped = 0
        bad = find_unreadable([rec[0] for rec in records])
        for rec in records:
            msg = bad.get(rec[0])
            if msg is not None:
                if not skip:
                    raise ImageReadError(msg)
                log.warning("skipping corrupt image: %s", msg)
                skipped += 1
                continue
            kept.append(rec)
        if skipped:  # one warning per subset, counting that subset's files only
            self.num_corrupt_skipped += skipped
            warnings.warn(f"{self.name}: skipped {skipped} corrupt image(s)", stacklevel=3)
        return kept

    def statistics(self) -> dict[str, int]:
        """Counts of the loaded records; gallery counts exclude junk (``gallery_junk`` counts it)."""
        gallery = [r for r in self.gallery if r[1] != JUNK_PID]
        return {
            "train_ids": self.num_train_pids,
            "train_images": len(self.train),
            "query_ids": len({pid for _, pid, _ in self.query}),
            "query_images": len(self.query),
            "gallery_ids": len({pid for _, pid, _ in gallery}),
            "gallery_images": len(gallery),
            "gallery_junk": self.num_junk,
            "cameras": len({cam for records in (self.train, self.query, gallery) for _, _, cam in records}),
        }

    def check_statistics(self) -> list[str]:
        """Compare :meth:`statistics` with ``official``; warn and return the differences."""
        found = self.statistics()
        diffs = [
            f"{key} {found[key]:,} (official {value:,})"
            for key, value in self.official.items()
            if key in found and found[key] != value
        ]
        if diffs:
            warnings.warn(
                f"{self.name} at {self.root!r}: counts differ from the official statistics: " + "; ".join(diffs),
                StatisticsMismatchWarning,
                stacklevel=3,
            )
        return diffs

    def summary(self) -> str:
        """A small table: subset, ids, images, cameras."""
        rows = [("subset", "ids", "images", "cameras")]
        for subset, records in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            rows.append(
                (
                    subset,
                    f"{len({p for _, p, _ in records}):,}",
                    f"{len(records):,}",
                    f"{len({c for _, _, c in records}):,}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"{self.name} ({self.root})"]
        for i, row in enumerate(rows):
            cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))]
            lines.append("  " + " | ".join(cells))
            if i == 0:
                lines.append("  " + "-+-".join("-" * w for w in widths))
        if self.num_junk:
            lines.append(
                f"  gallery junk (pid -1) found: {self.num_junk:,}"
                + ("" if any(p == JUNK_PID for _, p, _ in self.gallery) else ", dropped")
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, train={len(self.train)}, "
            f"query={len(self.query)}, gallery={len(self.gallery)})"
        )
