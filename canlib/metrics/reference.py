"""A plain reference evaluator and a Market-like test problem, to check :func:`canlib.metrics.evaluate`.

:func:`reference_evaluate` applies the Market-1501 protocol the obvious way: a *stable* argsort
of every query row (ties: the lower gallery index first, the rule of
:mod:`canlib.metrics.reid`), the protocol's removals, then the metrics read off the ranked
list. It is slow (one full sort per row) and has no tricks, which is what a reference is for.
The tests, the evaluator benchmark and the metrics chapter all compare against this one
function.

:func:`make_market_like` draws query/gallery features of a split shaped like Market-1501's
test set (:data:`MARKET_SIZE`), from an imperfect synthetic "model", for benchmarks and the
book.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from canlib.metrics.distance import ArrayLike, to_numpy
from canlib.metrics.ranking import JUNK_PID
from canlib.metrics.reid import AP_VARIANTS

__all__ = [
    "MARKET_DISTRACTOR_FRACTION",
    "MARKET_JUNK_FRACTION",
    "MARKET_SIZE",
    "make_market_like",
    "reference_evaluate",
]

#: Market-1501's test split: 3,368 queries, 15,913 gallery images, 751 gallery ids, 6 cameras.
MARKET_SIZE: dict[str, int] = {"num_query": 3368, "num_gallery": 15913, "num_ids": 751, "num_cams": 6}
#: Shares of junk (3,819) and distractor (2,798) files among the 19,732 of bounding_box_test.
MARKET_JUNK_FRACTION = 3819 / 19732
MARKET_DISTRACTOR_FRACTION = 2798 / 19732


def _ap_terms(i: np.ndarray, r: np.ndarray, ap: str) -> np.ndarray:
    """AP terms of matches number ``i`` (1-based) at ranks ``r``: step or trapezoid."""
    if ap == "step":
        return i / r
    before = np.where(r > 1, (i - 1) / np.maximum(r - 1, 1), 1.0)  # precision just before the hit
    return 0.5 * (before + i / r)


def reference_evaluate(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    ap: str = "step",
    block_rows: int = 256,
) -> dict[str, Any]:
    """CMC, mAP and mINP from a stable argsort of every row (the Market-1501 protocol, plainly).

    Returns ``mAP``, ``mINP``, ``cmc`` (``max_rank`` values), ``num_valid_queries`` and
    ``ap_per_query`` (NaN for skipped queries). Raises ``ValueError`` when no query has a true
    match left, as :func:`canlib.metrics.evaluate` does.
    """
    if ap not in AP_VARIANTS:
        raise ValueError(f"unknown AP variant '{ap}'; expected one of {AP_VARIANTS}")
    d = to_numpy(distmat)
    q_pids, g_pids, q_camids, g_camids = (
        to_numpy(a).astype(np.int64).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)
    )
    aps, inps, firsts = [], [], []
    for s in range(0, d.shape[0], block_rows):
        order = np.argsort(d[s : s + block_rows], axis=1, kind="stable")  # ties: lower gallery index first
        gp, gc = g_pids[order], g_camids[order]
        qp, qc = q_pids[s : s + block_rows, None], q_camids[s : s + block_rows, None]
        removed = (gp == JUNK_PID) | ((gp == qp) & (gc == qc))  # junk; same person, same camera
        match = (gp == qp) & ~removed
        rank = np.cumsum(~removed, axis=1).astype(np.float64)  # 1-based rank among the kept items
        i = np.cumsum(match, axis=1).astype(np.float64)  # how many matches up to here
        n = match.sum(1)
        terms = np.where(match, _ap_terms(i, np.where(match, rank, 1.0), ap), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            aps.append(np.where(n > 0, terms.sum(1) / n, np.nan))
            inps.append(np.where(n > 0, n / np.where(match, rank, 0).max(1, initial=0), np.nan))
        firsts.append(np.where(match, rank, np.inf).min(1, initial=np.inf))
    ap_q, inp_q, first = np.concatenate(aps), np.concatenate(inps), np.concatenate(firsts)
    valid = np.isfinite(first)
    if not valid.any():
        raise ValueError("no query has a true match in another camera: nothing to evaluate")
    cmc = np.array([(first[valid] <= k).mean() for k in range(1, max_rank + 1)])
    return {
        "mAP": float(ap_q[valid].mean()),
        "mINP": float(inp_q[valid].mean()),
        "cmc": cmc,
        "num_valid_queries": int(valid.sum()),
        "ap_per_query": ap_q,
    }


def make_market_like(
    num_query: int,
    num_gallery: int,
    num_ids: int,
    num_cams: int,
    dim: int = 128,
    noise: float = 1.4,
    camera_bias: float = 0.5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Query/gallery features, pids and cameras of a Market-like split (``qf``, ``gf``, ``q_pids``, ...).

    Every identity is seen by 2..num_cams cameras; queries are one image per (identity,
    camera) pair, trimmed or topped up to ``num_query``; gallery identity images are spread
    over the identity's cameras, and the gallery holds junk (pid -1) and distractors (pid 0)
    in Market-1501's proportions. Feature = identity centre + camera bias + Gaussian noise
    (``noise`` sets how imperfect the "model" is: the defaults give an mAP near 0.5);
    distractors and junk are random.
    """
    rng = np.random.default_rng(seed)
    cams_of = [rng.choice(num_cams, size=rng.integers(2, num_cams + 1), replace=False) for _ in range(num_ids)]
    pairs = np.array([(i + 1, c) for i in range(num_ids) for c in cams_of[i]])
    pick = rng.choice(len(pairs), size=num_query, replace=num_query > len(pairs))
    q_pids, q_cams = pairs[pick, 0], pairs[pick, 1]
    n_junk = round(num_gallery * MARKET_JUNK_FRACTION)
    n_dis = round(num_gallery * MARKET_DISTRACTOR_FRACTION)
    n_id = num_gallery - n_junk - n_dis
    id_of_image = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, n_id - num_ids)])
    g_pids = np.concatenate([id_of_image + 1, np.zeros(n_dis, np.int64), np.full(n_junk, JUNK_PID)])
    g_cams = np.concatenate([[rng.choice(cams_of[i]) for i in id_of_image], rng.integers(0, num_cams, n_dis + n_junk)])
    shuffle = rng.permutation(num_gallery)
    g_pids, g_cams = g_pids[shuffle], g_cams[shuffle]
    centres = rng.standard_normal((num_ids + 1, dim))
    cam_vecs = rng.standard_normal((num_cams, dim))

    def features(pids: np.ndarray, cams: np.ndarray) -> np.ndarray:
        f = camera_bias * cam_vecs[cams] + noise * rng.standard_normal((len(pids), dim))
        real = pids > 0
        f[real] += centres[pids[real]]
        f[~real] += rng.standard_normal((int((~real).sum()), dim))
        return f.astype(np.float32)

    return {
        "qf": features(q_pids, q_cams),
        "gf": features(g_pids, g_cams),
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": q_cams,
        "g_camids": g_cams,
    }
