"""Checks of a data set before any training or evaluation: what the protocol and the sampler cannot use.

The evaluation protocol (Market-1501's, :mod:`canlib.metrics`) scores a query only against gallery
images of its identity taken by *another* camera: gallery images of the same identity and the same
camera are junk, and a query left with no match is dropped. The PK sampler draws ``k`` images per
identity, with replacement when an identity has fewer. Each finding is one line: an ``error`` where
nothing can be measured (raised as :class:`DatasetCheckError`, a ``ValueError``, before any work),
a ``warning`` with the counts where the result is still defined.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from canlib.data.base import JUNK_PID, Record

if TYPE_CHECKING:
    from canlib.data.base import ReIDDataset

log = logging.getLogger(__name__)


class DatasetCheckError(ValueError):
    """A data set on which nothing can be measured (no query can be scored); the message says why."""


class Finding(NamedTuple):
    """One result of a check: ``level`` (``"error"`` or ``"warning"``) and a one-line ``message``."""

    level: Literal["error", "warning"]
    message: str


def _examples(pids: Iterable[int], limit: int = 3) -> str:
    shown = sorted(set(pids))
    more = ", ..." if len(shown) > limit else ""
    return ", ".join(str(p) for p in shown[:limit]) + more


def unscorable_queries(query: Sequence[Record], gallery: Sequence[Record]) -> list[Record]:
    """The queries with no gallery image of their identity from another camera (junk, pid -1, never matches)."""
    cams: dict[int, set[int]] = defaultdict(set)
    for _, pid, cam in gallery:
        if pid != JUNK_PID:
            cams[pid].add(cam)
    return [rec for rec in query if not cams.get(rec[1], set()) - {rec[2]}]


def _absent(dropped: Sequence[Record], gallery: Sequence[Record]) -> str:
    """`` (N of them with no gallery image of their identity at all)``, or "" when every one has some."""
    in_gallery = {pid for _, pid, _ in gallery}
    absent = sum(1 for _, pid, _ in dropped if pid not in in_gallery)
    return f" ({absent} of them with no gallery image of their identity at all)" if absent else ""


def check_split(dataset: ReIDDataset) -> list[Finding]:
    """The query/gallery split against the protocol: one camera only, queries without a cross-camera match."""
    name = f"{dataset.name} ({dataset.root})" if dataset.root else dataset.name
    query, gallery = dataset.query, [r for r in dataset.gallery if r[1] != JUNK_PID]
    if not query:
        return [
            Finding("error", f"{name}: no query image is left (junk, pid -1, is left out), so nothing can be evaluated")
        ]
    cams = sorted({cam for _, _, cam in (*query, *gallery)})
    if len(cams) == 1:
        message = (
            f"{name}: every query and gallery image is from one camera (c{cams[0] + 1}); the protocol scores a "
            "query only against gallery images from another camera, so nothing can be evaluated "
            "(the camera is the number after '_c' in each file name)"
        )
        return [Finding("error", message)]
    dropped = unscorable_queries(query, gallery)
    if len(dropped) == len(query):
        message = (
            f"{name}: none of the {len(query)} queries has a gallery image of its identity from another camera"
            f"{_absent(dropped, gallery)}, so nothing can be evaluated; check the identities (pids) and cameras "
            "of the query and gallery images"
        )
        return [Finding("error", message)]
    if dropped:
        examples = _examples(pid for _, pid, _ in dropped)
        message = (
            f"{name}: {len(dropped)} of {len(query)} queries have no gallery image of their identity from another "
            f"camera{_absent(dropped, gallery)}; the protocol drops them (e.g. pid {examples})"
        )
        return [Finding("warning", message)]
    return []


def check_training(pids: Sequence[int], k: int) -> list[Finding]:
    """The training identities against PK sampling with ``k`` images per identity per batch."""
    counts = Counter(int(p) for p in pids)
    if not counts:
        return []
    findings: list[Finding] = []
    single = [pid for pid, n in counts.items() if n == 1]
    if single and k > 1:  # with k=1 no identity has a positive in its batch
        findings.append(
            Finding(
                "warning",
                f"{len(single)} of {len(counts)} training identities have a single image; the PK sampler repeats it "
                f"k={k} times, so the triplet loss has no other picture of them as a positive",
            )
        )
    median = statistics.median(counts.values())
    if k > median:
        findings.append(
            Finding(
                "warning",
                f"data.k={k} images per identity per batch, but the median training identity has {median:g} "
                f"images: they repeat about {k / median:.1f}x in each batch (a data.k of at most {int(median)} "
                "avoids it)",
            )
        )
    return findings


def report_findings(findings: Iterable[Finding]) -> None:
    """Log each warning; raise :class:`DatasetCheckError` with the first error (after the warnings)."""
    errors = []
    for finding in findings:
        if finding.level == "error":
            errors.append(finding.message)
        else:
            log.warning("%s", finding.message)
    if errors:
        raise DatasetCheckError(errors[0])
