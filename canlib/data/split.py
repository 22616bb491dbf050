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

from canlib.data.base import DISTRACTOR_PID, Record, ReIDDataset

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


def _draw_ids(
    raw_pids: Sequence[int], num_ids: int, rng: random.Random, groups: Sequence[Sequence[int]] | None
) -> set[int]:
    """``num_ids`` raw pids; with ``groups`` (look-alike groups), a group is held out whole or not at all."""
    if groups is None:
        return set(rng.sample(list(raw_pids), num_ids))
    known = set(raw_pids)
    units = [sorted(set(g) & known) for g in groups]
    grouped = {p for u in units for p in u}
    units = [u for u in units if u] + [[p] for p in raw_pids if p not in grouped]
    rng.shuffle(units)
    held: set[int] = set()
    for unit in units:  # a group that would overshoot is skipped; single ids fill the rest exactly
        if len(held) + len(unit) <= num_ids:
            held.update(unit)
    return held


def _distractor_share(dataset: ReIDDataset) -> float:
    """The test gallery's share of distractor images (pid 0). Its junk (pid -1) is dropped before any
    evaluation (the protocol ignores it), so the validation gallery gets none."""
    return sum(1 for _, pid, _ in dataset.gallery if pid == DISTRACTOR_PID) / max(len(dataset.gallery), 1)


def _with_distractors(
    parts: dict[int, tuple[list[Record], list[Record]]], share: float, rng: random.Random
) -> tuple[list[Record], list[Record]]:
    """Query and gallery of the held-out ids, some of whose ids become gallery-only distractors
    (pid 0, all their images) while distractors stay within ``share`` of the gallery."""
    order = sorted(parts)
    rng.shuffle(order)
    gallery_size = sum(len(g) for _, g in parts.values())
    distractors: set[int] = set()
    count = 0
    for pid in order[:-2]:  # at least two queried ids stay
        q, g = parts[pid]
        if (count + len(q) + len(g)) / (gallery_size + len(q)) <= share:
            distractors.add(pid)
            count += len(q) + len(g)
            gallery_size += len(q)
    query: list[Record] = []
    gallery: list[Record] = []
    for pid in sorted(parts):
        q, g = parts[pid]
        if pid in distractors:
            gallery += [(path, DISTRACTOR_PID, cam) for path, _, cam in (*q, *g)]
        else:
            query += q
            gallery += g
    return query, gallery


def hold_out_validation(
    dataset: ReIDDataset,
    num_ids: int,
    seed: int = 0,
    groups: Sequence[Sequence[int]] | None = None,
    like_test_gallery: bool = False,
    extra_gallery: Sequence[Record] = (),
) -> ReIDDataset:
    """A data set whose train split lacks ``num_ids`` training identities, and whose query and
    gallery are those identities' images (the original query/gallery are not carried over).

    Identities are drawn with ``random.Random(seed)`` from the sorted raw training pids, so the
    split is a function of (data set, arguments) alone. ``groups`` (raw pids of look-alike groups,
    e.g. the synthetic set's ``meta.json``) are held out whole, so that a held-out identity's
    look-alikes are not in training, as on the test split. ``like_test_gallery`` makes some held-out
    identities gallery-only distractors (pid 0), in the proportion of the data set's test gallery.
    ``extra_gallery`` records (people outside the data set, e.g.
    :func:`canlib.data.synthetic.gallery_identities`) join the gallery as they are.
    """
    raw_of = {new: raw for raw, new in dataset.pid_map.items()}
    raw_pids = sorted(raw_of.values())
    if not 0 < num_ids < len(raw_pids) - 1:
        raise ValueError(
            f"data.val_ids must be between 1 and {len(raw_pids) - 2} for {dataset.name} "
            f"({len(raw_pids)} training identities), got {num_ids}"
        )
    rng = random.Random(seed)
    held = _draw_ids(raw_pids, num_ids, rng, groups)
    train: list[Record] = []
    images: dict[int, list[Record]] = defaultdict(list)
    for path, pid, cam in dataset.train:
        raw = raw_of[pid]
        (images[raw] if raw in held else train).append((path, raw, cam))
    parts = {raw: split_identity(images[raw], rng) for raw in sorted(held)}
    if like_test_gallery:
        query, gallery = _with_distractors(parts, _distractor_share(dataset), rng)
    else:
        query = [r for q, _ in parts.values() for r in q]
        gallery = [r for _, g in parts.values() for r in g]
    gallery = [*gallery, *extra_gallery]
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
