"""Training-data throughput: the file loader against the decoded-image cache, in one run.

Both deliver the paper's PK batches (8 ids x 4 images) at 384x128 as normalised float
tensors on the training device; the file loader decodes and resizes JPEGs every epoch (with
``--workers`` processes), the cache (``data.cache``) decodes once and then indexes. Printed:
images/s of each, the cache's one-off build time, and whether the first batches are
identical for the same seed (they must be: tests/test_cache.py checks it exactly). Examples::

    python benchmarks/bench_loader.py                          # data/synthetic, or a temporary set
    python benchmarks/bench_loader.py --data-root /data/reid --dataset market1501 --device cuda
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from canlib.data import PKSampler, build_train_loader, load_dataset, make_synthetic
from canlib.data.cache import BatchAugment, CachedTrainLoader
from canlib.engine.build import resolve_device


def rate(loader: Iterable, batches: int, device: torch.device) -> float:
    """Images/s over ``batches`` batches moved to ``device`` (after one warm-up batch), cycling epochs."""
    seen, epoch, start = 0, 0, None
    while True:
        epoch += 1
        loader.batch_sampler.set_epoch(epoch)
        for batch, _, _ in loader:
            images = batch.to(device, non_blocking=True)
            if start is None:  # the first batch pays for worker start-up
                start, done = time.perf_counter(), 0
                continue
            seen += len(images)
            done += 1
            if done == batches:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return seen / (time.perf_counter() - start)


def loaders(dataset, args, device: torch.device, mode: str, workers: int):
    augment = {"flip": args.augment, "random_erasing": 0.5 if args.augment else 0.0}
    files = build_train_loader(
        dataset,
        args.height,
        args.width,
        p=8,
        k=4,
        seed=0,
        num_workers=workers,
        epoch="images",
        pin_memory=device.type == "cuda",
        **augment,
    )
    batches = PKSampler([pid for _, pid, _ in dataset.train], p=8, k=4, seed=0, epoch="images")
    cached = CachedTrainLoader(
        dataset.train, batches, BatchAugment(args.height, args.width, **augment), mode, device, num_workers=workers
    )
    return files, cached


def identical_first_batch(dataset, args, device: torch.device) -> bool:
    """The file loader (no workers) and the cache, same seed: the same first batch?"""
    files, cached = loaders(dataset, args, torch.device("cpu"), "memory", 0)
    out = []
    for loader in (files, cached):
        loader.batch_sampler.set_epoch(1)
        torch.manual_seed(0)
        out.append(next(iter(loader))[0].as_subclass(torch.Tensor))
    return torch.equal(out[0], out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per loader")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="file-loader processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--augment", action="store_true", help="flip + random erasing (default: the paper's none)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_root)
        if args.dataset == "synthetic" and not (root / "meta.json").is_file():
            root = Path(tmp) / "synthetic"
            make_synthetic(root, ids=60, seed=0)
        dataset = load_dataset(args.dataset, root)
        print(
            f"{len(dataset.train)} training images at {args.height}x{args.width}, batches of 32 (8x4), "
            f"device {device}, {args.workers} file-loader workers, augmentation {'on' if args.augment else 'off'}"
        )
        files, _ = loaders(dataset, args, device, "memory", args.workers)
        results = {"file loader": rate(files, args.batches, device)}
        for mode in ("memory", "device") if device.type == "cuda" else ("memory",):
            _, cached = loaders(dataset, args, device, mode, args.workers)
            start = time.perf_counter()
            cached.build_cache()
            build = time.perf_counter() - start
            results[f"cache ({mode})"] = rate(cached, args.batches, device)
            print(f"cache ({mode}) built in {build:.1f} s ({len(dataset.train) / build:.0f} images/s, once)")
        for name, value in results.items():
            print(f"{name:<16} {value:10.1f} images/s  ({value / results['file loader']:.2f} x file loader)")
        print(
            f"identical first batch (file loader, no workers, vs cache; same seed): "
            f"{identical_first_batch(dataset, args, device)}"
        )


if __name__ == "__main__":
    main()
