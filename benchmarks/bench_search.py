"""Exact search in a 100,000-image gallery: chunked top-k against a full NumPy argsort of the same distances.

The gallery (fixed seed): ``--gallery`` 100,000 random L2-normalised descriptors of ``--dim`` 4,096
dimensions, the default model's descriptor (Part-1,3,5,7: 16 features x 256). Two workloads: one
query, and a batch of ``--batch`` 100 queries. Timed, best of ``--repeats`` runs each, in the same
process:

* ``canlib.metrics.search.exact_topk`` (what ``canlib search`` runs): the gallery in chunks of
  32,768 rows (queries in blocks of 256), one matrix product and ``torch.topk`` per chunk, the best
  merged; the ``(Q, G)`` distance matrix is never held;
* plain NumPy: the full ``1 - q @ g.T`` distance matrix, then ``np.argsort`` of every row.

Both must return the same top-``--top`` indices (random data has no ties); exit status 1 if not.
The ratio printed is measured in this run (no target: the machine's load moves both sides). At
4,096 dimensions both sides are dominated by the same matrix product, so expect a ratio near 1:
what chunking buys is memory (the NumPy side holds ``Q x G`` distances and as many int64 indices).

Run: ``.venv/bin/python benchmarks/bench_search.py [--quick]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import best_time

from canlib.metrics.search import exact_topk


def normalised(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_argsort(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The plain way: the full distance matrix, every row sorted."""
    dist = 1.0 - q @ g.T
    order = np.argsort(dist, axis=1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=4096, help="descriptor size (default: the default model's)")
    parser.add_argument("--batch", type=int, default=100, help="queries of the batch workload")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts")
    parser.add_argument("--quick", action="store_true", help="a 20,000 x 512 gallery")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.gallery, args.dim = 20_000, 512
    rng = np.random.default_rng(args.seed)
    gallery = normalised(rng, args.gallery, args.dim)
    queries = normalised(rng, args.batch, args.dim)
    print(f"gallery {args.gallery:,} x {args.dim} float32, top {args.top}, torch threads {torch.get_num_threads()}")
    ok = True
    for label, q in (("1 query", queries[:1]), (f"{args.batch} queries", queries)):
        t_topk, (d_topk, i_topk) = best_time(lambda q=q: exact_topk(q, gallery, args.top), args.repeats)
        t_sort, (d_sort, i_sort) = best_time(lambda q=q: numpy_argsort(q, gallery, args.top), args.repeats)
        same = bool(np.array_equal(i_topk, i_sort))
        ok &= same
        print(
            f"{label:>12}: chunked topk {t_topk:.3f} s, NumPy full distances + argsort {t_sort:.3f} s, "
            f"ratio {t_topk / t_sort:.2f}; same top-{args.top}: {same} "
            f"(largest distance difference {np.abs(d_topk - d_sort).max():.1e})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
