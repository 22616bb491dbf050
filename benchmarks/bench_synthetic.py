"""Speed of the synthetic data generator: images per second, drawing only and end to end.

Run: ``python benchmarks/bench_synthetic.py [--ids 200] [--workers 1] [--level realistic]``.
Writes to a temporary folder that is removed afterwards. ``--ids`` 0: the level's own number.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from canlib.data.synthetic import (
    LEVELS,
    Renderer,
    SyntheticConfig,
    make_cameras,
    make_identities,
    make_synthetic,
    plan_images,
    split_ids,
)


def bench_render(cfg: SyntheticConfig, n: int) -> float:
    """Images per second for drawing alone (no JPEG, no disk), one core."""
    identities, groups = make_identities(
        list(range(1, cfg.ids + 1)),
        cfg.seed,
        cfg.hard_negative_fraction,
        cfg.group_size,
        global_share=cfg.global_lookalike_share,
    )
    specs = plan_images(cfg, *split_ids(cfg, groups))[:n]
    cameras = make_cameras(cfg.cameras, cfg.seed, cfg.camera_strength, cfg.noise, cfg.blur)
    renderer = Renderer(cfg, {i.pid: i for i in identities}, cameras)
    start = time.perf_counter()
    for spec in specs:
        renderer.render(spec)
    return len(specs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--level", choices=list(LEVELS), default="0")
    args = parser.parse_args()
    knobs = {"height": args.height, "width": args.width, "level": args.level, **({"ids": args.ids} if args.ids else {})}
    cfg = SyntheticConfig(**knobs)
    print(
        f"level {args.level}, drawing only ({args.height}x{args.width}, 1 core): {bench_render(cfg, 1000):.0f} images/s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        stats = make_synthetic(Path(tmp) / "s", workers=args.workers, **knobs)
        size = sum(p.stat().st_size for p in (Path(tmp) / "s").rglob("*") if p.is_file())
    print(
        f"make_synthetic --ids {cfg.ids} --level {args.level} --workers {args.workers}: {stats['files_total']} images "
        f"({stats['train_images']} train, {stats['query_images']} query, "
        f"{stats['gallery_images'] + stats['gallery_junk']} gallery incl. junk), {size / 2**20:.1f} MiB, "
        f"{stats['seconds']:.1f} s, {stats['images_per_second']:.0f} images/s"
    )


if __name__ == "__main__":
    main()
