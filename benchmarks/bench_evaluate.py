"""Evaluator speed on a Market-1501-sized problem, against one full argsort of the same matrix.

The problem (fixed seed): 3,368 queries x 15,913 gallery items, 751 identities over 6
cameras; the gallery holds junk (pid -1) and distractors (pid 0) in Market-1501's
proportions (3,819 and 2,798 of its 19,732 test files). Distances are cosine distances
between noisy identity-clustered random features, so the matrix looks like an imperfect
model's (mAP about 0.5, mINP about 0.1: not 1.0 and not chance).

Timed, best of ``--repeats`` runs each, in the same process:

* ``np.argsort(distmat, axis=1)`` (NumPy's default sort, what the common evaluators start with);
* ``canlib.metrics.evaluate(distmat, ...)`` (rank counting, no sort).

The result is checked against a reference computed from a STABLE argsort of the same
matrix (vectorised, same protocol, ties by gallery order): mAP / mINP to 1e-12, CMC exactly.
Target: evaluate <= 0.25 x argsort.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch

from canlib.metrics import evaluate, pairwise_distance

MARKET = dict(num_query=3368, num_gallery=15913, num_ids=751, num_cams=6)
QUICK = dict(num_query=800, num_gallery=4000, num_ids=200, num_cams=6)
JUNK_FRACTION = 3819 / 19732  # Market-1501 bounding_box_test
DISTRACTOR_FRACTION = 2798 / 19732
TARGET_RATIO = 0.25


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
    """Query/gallery features, pids and cameras of a Market-like split.

    Every identity is seen by 2..num_cams cameras; queries are one image per (identity,
    camera) pair, trimmed or topped up to ``num_query``; gallery identity images are spread
    over the identity's cameras. Feature = identity centre + camera bias + Gaussian noise
    (``noise`` sets how imperfect the "model" is); distractors and junk are random.
    """
    rng = np.random.default_rng(seed)
    cams_of = [rng.choice(num_cams, size=rng.integers(2, num_cams + 1), replace=False) for _ in range(num_ids)]
    pairs = np.array([(i + 1, c) for i in range(num_ids) for c in cams_of[i]])
    pick = rng.choice(len(pairs), size=num_query, replace=num_query > len(pairs))
    q_pids, q_cams = pairs[pick, 0], pairs[pick, 1]
    n_junk = round(num_gallery * JUNK_FRACTION)
    n_dis = round(num_gallery * DISTRACTOR_FRACTION)
    n_id = num_gallery - n_junk - n_dis
    id_of_image = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, n_id - num_ids)])
    g_pids = np.concatenate([id_of_image + 1, np.zeros(n_dis, np.int64), np.full(n_junk, -1)])
    g_cams = np.concatenate(
        [[rng.choice(cams_of[i]) for i in id_of_image], rng.integers(0, num_cams, n_dis + n_junk)]
    )
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

    return dict(
        qf=features(q_pids, q_cams), gf=features(g_pids, g_cams),
        q_pids=q_pids, g_pids=g_pids, q_camids=q_cams, g_camids=g_cams,
    )


def reference_from_order(order: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """The protocol applied to a full ranked list (vectorised over query rows)."""
    aps, inps, firsts = [], [], []
    for s in range(0, order.shape[0], 256):
        o = order[s : s + 256]
        gp, gc = g_pids[o], g_camids[o]
        qp, qc = q_pids[s : s + 256, None], q_camids[s : s + 256, None]
        removed = (gp == -1) | ((gp == qp) & (gc == qc))
        match = (gp == qp) & ~removed
        position = np.cumsum(~removed, axis=1)  # 1-based rank among the kept items
        i = np.cumsum(match, axis=1)
        n = match.sum(1)
        valid = n > 0
        precision = np.divide(i, position, out=np.zeros(i.shape), where=match)
        ap = precision.sum(1)[valid] / n[valid]
        last = np.where(match, position, 0).max(1)[valid]
        first = np.where(match, position, np.iinfo(np.int64).max).min(1)[valid]
        aps.append(ap), inps.append(n[valid] / last), firsts.append(first)
    first = np.concatenate(firsts)
    cmc = np.array([(first <= k).sum() for k in range(1, max_rank + 1)]) / first.size
    return dict(mAP=np.concatenate(aps).mean(), mINP=np.concatenate(inps).mean(), cmc=cmc)


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller problem (800 x 4,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = QUICK if args.quick else MARKET
    p = make_market_like(**size, seed=args.seed)
    distmat = pairwise_distance(p["qf"], p["gf"], metric="cosine")
    ids = (p["q_pids"], p["g_pids"], p["q_camids"], p["g_camids"])

    t_sort, _ = best_time(lambda: np.argsort(distmat, axis=1), args.repeats)
    t_eval, result = best_time(lambda: evaluate(distmat, *ids), args.repeats)
    t_stable, order = best_time(lambda: np.argsort(distmat, axis=1, kind="stable"), 1)
    ref = reference_from_order(order, *ids)
    same = (
        abs(result["mAP"] - ref["mAP"]) <= 1e-12
        and abs(result["mINP"] - ref["mINP"]) <= 1e-12
        and np.array_equal(result["cmc"], ref["cmc"])
    )
    ratio = t_eval / t_sort
    print(f"problem: {distmat.shape[0]} x {distmat.shape[1]} float32, {size['num_ids']} ids, "
          f"{size['num_cams']} cameras, {int((p['g_pids'] == -1).sum())} junk, "
          f"{int((p['g_pids'] == 0).sum())} distractors; torch threads {torch.get_num_threads()}")
    print(f"result: mAP {result['mAP']:.4f}  mINP {result['mINP']:.4f}  rank-1 {result['cmc'][0]:.4f}  "
          f"rank-5 {result['cmc'][4]:.4f}  valid queries {result['num_valid_queries']}")
    print(f"np.argsort(distmat, axis=1)          {t_sort:8.3f} s  (best of {args.repeats})")
    print(f"np.argsort(..., kind='stable')       {t_stable:8.3f} s  (reference only, 1 run)")
    print(f"canlib.metrics.evaluate              {t_eval:8.3f} s  (best of {args.repeats})")
    print(f"ratio evaluate / argsort             {ratio:8.3f}    (target <= {TARGET_RATIO})")
    print(f"identical to the stable-argsort reference: {same}")
    return 0 if same and ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
