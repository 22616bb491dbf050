"""A validation split carved from the training identities (for decisions, never the test split).

Every choice the paper leaves open is made on identities the test split never sees: a fixed
share of the *training* identities is held out, and their images are divided into a query
and a gallery set the way the benchmarks do (Market-1501: queries from several cameras, each
with a true match in another camera of the gallery). The run then trains on the remaining
identities and is evaluated on this split.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence

from canlib.data.base import Record, ReIDDataset

log = logging.getLogger(__name__)


def _valid(queries: Sequence[Record], gallery: Sequence[Record]) -> bool:
    """Every query has a gallery image of its identity from another camera (Market's protocol)."""
    cams = {cam for _, _, cam in gallery}
    return all(any(c != cam for c in cams) for _, _, cam in queries)


def split_identity(images: Sequence[Record], rng: random.Random) -> tuple[list[Record], list[Record]]:
    """One identity's images -> (query, gallery): at most one query per camera, each query kept
    only if every query still has a gallery match in another camera."""
    by_cam: dict[int, list[Record]] = defaultdict(list)
    for rec in images:
        by_cam[rec[2]].append(rec)
    query: list[Record] = []
    rest = list(images)
    cams = sorted(by_cam)
    rng.shuffle(cams)
    for cam in cams:
        candidate = rng.choice(sorted(by_cam[cam]))
        remaining = [r for r in rest if r != candidate]
        if _valid([*query, candidate], remaining):
            query.append(candidate)
            rest = remaining
    return query, rest


def hold_out_validation(dataset: ReIDDataset, num_ids: int, seed: int = 0) -> ReIDDataset:
    """A data set whose train split lacks ``num_ids`` training identities, and whose query and
    gallery are those identities' images (the original query/gallery are not carried over).

    Identities are drawn with ``random.Random(seed)`` from the sorted raw training pids, so the
    split is a function of (data set, ``num_ids``, ``seed``) alone.
    """
    raw_of = {new: raw for raw, new in dataset.pid_map.items()}
    raw_pids = sorted(raw_of.values())
    if not 0 < num_ids < len(raw_pids) - 1:
        raise ValueError(
            f"data.val_ids must be between 1 and {len(raw_pids) - 2} for {dataset.name} "
            f"({len(raw_pids)} training identities), got {num_ids}"
        )
    rng = random.Random(seed)
    held = set(rng.sample(raw_pids, num_ids))
    train: list[Record] = []
    images: dict[int, list[Record]] = defaultdict(list)
    for path, pid, cam in dataset.train:
        raw = raw_of[pid]
        (images[raw] if raw in held else train).append((path, raw, cam))
    query: list[Record] = []
    gallery: list[Record] = []
    for raw in sorted(held):
        q, g = split_identity(images[raw], rng)
        query += q
        gallery += g
    split = ReIDDataset(train, query, gallery, root=dataset.root, check_stats=False)
    split.name = f"{dataset.name}[val {num_ids} ids, seed {seed}]"
    split.held_out_pids = sorted(held)
    log.info(
        "validation split: %d of %d training ids held out (%d query, %d gallery images)",
        num_ids,
        len(raw_pids),
        len(query),
        len(gallery),
    )
    return split
