"""The CPU proxy's geometry: layer-4 map height, equation-(1) windows and the cost of one training step.

The paper's 384x128 input gives ResNet50 (stride-1 layer 4) a 24x8 layer-4 map, so equation (1)
cuts it into Part-3 windows of 8 rows (stride 8), Part-5 of 8 (stride 4), Part-7 of 6 (stride 3)
and Part-9 of 8 (stride 2). The first CPU proxy (144x48, output stride 16) had a 9-row map:
Part-5 windows of 5 rows at stride 1, Part-9 windows of one row. This benchmark measures, in one
run and on one thread (as one job of the two-job grid), candidate proxies that restore the
24-row map, beside that first proxy, and writes ``results/decisions/geometry.json``. The FLOP
counts are exact; the step times depend on what else the machine runs (run it on an idle
machine), and the choice rests on the FLOPs against the grid's budget::

    python benchmarks/bench_proxy_geometry.py [--steps 3] [--out results/decisions/geometry.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from canlib.book.complexity import count_parameters, forward_flops
from canlib.losses import CANLoss
from canlib.model import CAN
from canlib.paper import LOSS_ROWS
from canlib.pooling import paper_pool_params

SLIM = {"channels": [16, 32, 64, 128]}
#: name -> (input height, width, layer3_stride, backbone_kwargs)
CANDIDATES = {
    "v1: 144x48, OS 16, 16-128 (before)": (144, 48, 2, SLIM),
    "192x64, OS 8, 16-128": (192, 64, 1, SLIM),
    "192x64, OS 8, 16-32-48-64 (chosen)": (192, 64, 1, {"channels": [16, 32, 48, 64]}),
    "384x128, OS 16, 16-128": (384, 128, 2, SLIM),
    "384x128, OS 16, 8-64": (384, 128, 2, {"channels": [8, 16, 32, 64]}),
}


def windows(map_height: int) -> str:
    """Equation (1)'s (kernel, stride) per part count for a map of ``map_height`` rows."""
    out = []
    for n in (3, 5, 7, 9):
        if map_height >= n:
            k, s = paper_pool_params(map_height, n)[:2]
            out.append(f"P{n}: {k}/{s}")
    return ", ".join(out)


def step_seconds(model: CAN, height: int, width: int, steps: int) -> float:
    """Median seconds of one training step (forward, CE + triplet, backward, Adam) at batch 32."""
    loss = CANLoss(
        10, model.embed_dim, model.num_features, model.global_indices, model.local_indices, **LOSS_ROWS["CE + triplet"]
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(32, 3, height, width)
    y = torch.arange(8).repeat_interleave(4)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(x)
        total, _ = loss(out.features, out.logits, y, pre_bn=out.pre_bn)
        opt.zero_grad()
        total.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="results/decisions/geometry.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, (h, w, l3, kwargs) in CANDIDATES.items():
        for parts in ((1, 3, 5, 7), (1, 3, 5, 7, 9)):
            model = CAN(10, parts=parts, backbone="timm:resnet18", backbone_kwargs=kwargs, layer3_stride=l3).train()
            map_h = model.feature_maps(torch.zeros(1, 3, h, w))["part1"].shape[-2]
            flops, _ = forward_flops(model.eval(), torch.zeros(1, 3, h, w))
            sec = step_seconds(model.train(), h, w, args.steps)
            rows.append(
                {
                    "candidate": name,
                    "parts": list(parts),
                    "input": [h, w],
                    "layer3_stride": l3,
                    "channels": kwargs["channels"],
                    "map_rows": map_h,
                    "windows": windows(map_h),
                    "params_M": round(count_parameters(model) / 1e6, 3),
                    "gflops_per_image": round(flops / 1e9, 3),
                    "step_s_batch32_1thread": round(sec, 3),
                }
            )
            print(
                f"{name:38s} parts {parts!s:16s} map rows {map_h:2d}  {rows[-1]['windows']:38s} "
                f"{rows[-1]['gflops_per_image']:6.3f} GFLOP/img  {sec:6.3f} s/step"
            )
    base = {r["parts"][-1]: r["step_s_batch32_1thread"] for r in rows if r["candidate"].startswith("v1")}
    for r in rows:
        r["step_ratio_vs_v1"] = round(r["step_s_batch32_1thread"] / base[r["parts"][-1]], 2)
        print(f"ratio to v1  {r['candidate']:38s} parts {tuple(r['parts'])!s:16s} {r['step_ratio_vs_v1']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": torch.__config__.parallel_info().splitlines()[0], "threads": 1, "rows": rows}, indent=1)
        + "\n"
    )


if __name__ == "__main__":
    main()
