"""Evaluation straight from features at MSMT17 size, with bounded memory.

MSMT17's test split is 11,659 queries x 82,161 gallery images (15 cameras): the full
float32 distance matrix would take 11,659 * 82,161 * 4 B = 3.83 GB. ``evaluate_features``
computes distances for ``--chunk-size`` queries at a time, ranks their true matches and
discards the block, so the matrix is never held.

Features are synthetic (identity-clustered noise, ``--dim`` dimensions, 256 by default like
CAN's 256-d embedding of each feature; CAN's concatenated descriptor is 16 x 256 = 4096-d
and only changes the matmul cost). Reported: wall time, the process's peak resident set
size (``resource.getrusage``, which includes Python, torch and the features), the peak
resident growth during the evaluation, and tracemalloc's peak of NumPy allocations.

Run: ``.venv/bin/python benchmarks/bench_evaluate_memory.py [--dim 256] [--chunk-size 2048]``.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from pathlib import Path

import torch

from canlib.metrics import evaluate_features
from canlib.metrics.distance import GalleryDistances
from canlib.metrics.reference import make_market_like

MSMT17 = {"num_query": 11659, "num_gallery": 82161, "num_ids": 3060, "num_cams": 15}
QUICK = {"num_query": 2000, "num_gallery": 15000, "num_ids": 500, "num_cams": 15}
BYTES_PER_GIB = 1024**3


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since the last :func:`reset_peak_rss`).

    Linux: ``VmHWM`` of ``/proc/self/status``; elsewhere ``ru_maxrss`` (never reset).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    """Resident set size now (Linux ``VmRSS``; elsewhere the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256, help="feature dimension (default 256)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="queries per distance block")
    parser.add_argument("--quick", action="store_true", help="a smaller problem (2,000 x 15,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = QUICK if args.quick else MSMT17
    p = make_market_like(**size, dim=args.dim, seed=args.seed)
    qf, gf = torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"])
    full_matrix = size["num_query"] * size["num_gallery"] * 4

    rss_before = current_rss_bytes()
    reset = reset_peak_rss()
    tracemalloc.start()
    t = time.perf_counter()
    result = evaluate_features(
        qf, gf, p["q_pids"], p["g_pids"], p["q_camids"], p["g_camids"], chunk_size=args.chunk_size
    )
    wall = time.perf_counter() - t
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = peak_rss_bytes()

    # the same distance blocks alone, to show how much of the wall time is the matmul
    t = time.perf_counter()
    with torch.no_grad():
        distances = GalleryDistances(gf, "cosine")
        for start in range(0, qf.shape[0], args.chunk_size):
            block = distances(qf[start : start + args.chunk_size])
            del block
    wall_distances = time.perf_counter() - t

    print(
        f"problem: {size['num_query']} x {size['num_gallery']}, {size['num_ids']} ids, {size['num_cams']} cameras, "
        f"dim {args.dim}, chunk_size {args.chunk_size}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"result: mAP {result['mAP']:.4f}  mINP {result['mINP']:.4f}  rank-1 {result['cmc'][0]:.4f}  "
        f"valid queries {result['num_valid_queries']}"
    )
    print(f"wall time                         {wall:8.2f} s")
    print(f"  of which distance blocks alone  {wall_distances:8.2f} s (cosine matmul, measured separately)")
    print(f"full float32 matrix would need    {full_matrix / BYTES_PER_GIB:8.2f} GiB ({full_matrix / 1e9:.2f} GB)")
    since = "during evaluate_features" if reset else "whole process, could not reset the mark"
    print(
        f"peak RSS ({since})  {rss_after / BYTES_PER_GIB:.2f} GiB; RSS before it {rss_before / BYTES_PER_GIB:.2f} GiB"
    )
    print(f"peak RSS growth while evaluating  {(rss_after - rss_before) / BYTES_PER_GIB:8.2f} GiB")
    print(f"tracemalloc peak (NumPy buffers)  {traced_peak / BYTES_PER_GIB:8.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
