"""Evaluator speed on a Market-1501-sized problem, against one full argsort of the same matrix.

The problem (fixed seed): 3,368 queries x 15,913 gallery items, 751 identities over 6
cameras; the gallery holds junk (pid -1) and distractors (pid 0) in Market-1501's
proportions (3,819 and 2,798 of its 19,732 test files). Distances are cosine distances
between noisy identity-clustered random features, so the matrix looks like an imperfect
model's (mAP about 0.5, mINP about 0.1: not 1.0 and not chance).

Timed, best of ``--repeats`` runs each, in the same process:

* ``np.argsort(distmat, axis=1)`` (NumPy's default sort, what the common evaluators start with);
* ``canlib.metrics.evaluate(distmat, ...)`` (rank counting, no sort).

The result is checked against :func:`canlib.metrics.reference.reference_evaluate`, which
ranks every row with a STABLE argsort (same protocol, ties by gallery order): mAP / mINP to
1e-12, CMC exactly. The problem comes from :func:`canlib.metrics.reference.make_market_like`.
Target: evaluate <= 0.25 x argsort.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py [--quick]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import best_time

from canlib.metrics import evaluate, pairwise_distance
from canlib.metrics.reference import MARKET_SIZE, make_market_like, reference_evaluate

MARKET = MARKET_SIZE
QUICK = {"num_query": 800, "num_gallery": 4000, "num_ids": 200, "num_cams": 6}
TARGET_RATIO = 0.25


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
    t_stable, ref = best_time(lambda: reference_evaluate(distmat, *ids), 1)
    same = (
        abs(result["mAP"] - ref["mAP"]) <= 1e-12
        and abs(result["mINP"] - ref["mINP"]) <= 1e-12
        and np.array_equal(result["cmc"], ref["cmc"])
    )
    ratio = t_eval / t_sort
    print(
        f"problem: {distmat.shape[0]} x {distmat.shape[1]} float32, {size['num_ids']} ids, "
        f"{size['num_cams']} cameras, {int((p['g_pids'] == -1).sum())} junk, "
        f"{int((p['g_pids'] == 0).sum())} distractors; torch threads {torch.get_num_threads()}"
    )
    print(
        f"result: mAP {result['mAP']:.4f}  mINP {result['mINP']:.4f}  rank-1 {result['cmc'][0]:.4f}  "
        f"rank-5 {result['cmc'][4]:.4f}  valid queries {result['num_valid_queries']}"
    )
    print(f"np.argsort(distmat, axis=1)          {t_sort:8.3f} s  (best of {args.repeats})")
    print(f"reference_evaluate (stable argsort)  {t_stable:8.3f} s  (reference only, 1 run)")
    print(f"canlib.metrics.evaluate              {t_eval:8.3f} s  (best of {args.repeats})")
    print(f"ratio evaluate / argsort             {ratio:8.3f}    (target <= {TARGET_RATIO})")
    print(f"identical to the stable-argsort reference: {same}")
    return 0 if same and ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
