"""One command that checks the GPU path (``make gpu-check``); under 5 minutes on one modern GPU.

On a CUDA machine it measures, in one run:

* training steps of the paper profile's CAN (384x128, batch 8x4, bf16 autocast, channels_last)
  beside a plain ResNet50 with last stride 1, on random tensors, with ``torch.compile`` off and
  on (the trainer's ``train.compile``): images/s, achieved TFLOP/s (training FLOPs = 3 x the
  forward FLOPs counted by :mod:`canlib.book.complexity`), peak GPU memory;
* the trainer end to end on a synthetic set made on the fly by ``make_synthetic`` (a temp dir),
  with the decoded-image cache on the device (``data.cache=device``);
* a Market-sized evaluation on the device: 3,368 x 15,913 random descriptors through
  :func:`canlib.metrics.evaluate_features`, and descriptor extraction images/s;
* the projected time of the paper's 600 Market-1501 epochs (with its evaluations);
* a 2-GPU ``torchrun`` smoke run when two GPUs are present.

It writes ``results/gpu/gpu-check-<time>.json`` and prints a short table. Without CUDA it says
so and runs the same steps tiny on the CPU (seconds; tests/test_gpu_check.py runs it), writing
``gpu-check-dry-run.json``; it exits 0.

    python benchmarks/gpu_check.py                 # everything (compile off and on)
    python benchmarks/gpu_check.py --compile off   # eager only (faster)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import StrideOneResNet, make_step

from canlib.book.complexity import model_complexity
from canlib.config import RunSections, load_config
from canlib.data import make_synthetic
from canlib.engine.build import build_loss, build_model
from canlib.engine.record import library_versions, machine_info
from canlib.engine.trainer import Trainer
from canlib.losses import CANLoss
from canlib.metrics import evaluate_features

REPO = Path(__file__).resolve().parents[1]
#: Market-1501: training ids and images, query and gallery sizes (Zheng et al. 2015).
MARKET = {"train_ids": 751, "train_images": 12936, "query": 3368, "gallery": 15913}


@dataclass
class Plan:
    """What one run measures and how much."""

    config: str
    steps: int  # timed training steps per model
    warmup: int
    trainer_steps: int
    eval_shape: tuple[int, int]  # (queries, gallery)
    synthetic: dict[str, int] = field(default_factory=dict)
    extract_batches: int = 20


GPU_PLAN = Plan(
    "configs/paper-market1501.yaml",
    steps=300,
    warmup=30,
    trainer_steps=200,
    eval_shape=(MARKET["query"], MARKET["gallery"]),
    synthetic={"ids": 100, "images_per_id": 12},
)
DRY_PLAN = Plan(
    "configs/smoke.yaml",
    steps=2,
    warmup=1,
    trainer_steps=2,
    eval_shape=(40, 300),
    synthetic={"ids": 8, "images_per_id": 4},
    extract_batches=1,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / max(n, 1)


def measure_model(
    name: str,
    model: torch.nn.Module,
    loss: CANLoss,
    cfg: dict,
    plan: Plan,
    device: torch.device,
    amp: torch.dtype | None,
    compiled: bool,
    classes: int = MARKET["train_ids"],
) -> dict[str, Any]:
    """Training steps on random tensors: images/s, TFLOP/s, peak memory, compile time."""
    d = cfg["data"]
    batch, h, w = int(d["p"]) * int(d["k"]), int(d["height"]), int(d["width"])
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt)
    loss = loss.to(device)
    flops = 3 * model_complexity(model, (h, w))["flops"]  # per image: forward + backward ~ 3 x forward
    model.train()
    train_step = make_step(model, loss, amp, device, forward=torch.compile(model) if compiled else None)
    x = torch.randn(batch, 3, h, w, device=device).contiguous(memory_format=fmt)
    y = torch.arange(batch, device=device) // int(d["k"]) % classes

    def step() -> None:
        train_step(x, y)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = _timed(step, 1, device)  # includes compilation
    _timed(step, plan.warmup, device)
    seconds = _timed(step, plan.steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "name": name,
        "compile": compiled,
        "img_s": batch / seconds,
        "step_ms": 1e3 * seconds,
        "tflop_s": flops * batch / seconds / 1e12,
        "train_gflop_per_image": flops / 1e9,
        "first_step_s": first,
        "peak_mem_gib": peak,
        "batch": batch,
        "input": [h, w],
    }


def measure_extraction(
    model: torch.nn.Module, cfg: dict, plan: Plan, device: torch.device, amp: torch.dtype | None
) -> float:
    """Eval-mode descriptor extraction, images/s (test batch size of the profile)."""
    d = cfg["data"]
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(int(d["test_batch_size"]), 3, int(d["height"]), int(d["width"]), device=device)
    x = x.contiguous(memory_format=fmt)
    model.eval()

    @torch.no_grad()
    def forward() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model(x)

    forward()
    seconds = _timed(forward, plan.extract_batches, device)
    model.train()
    return len(x) / seconds


def measure_trainer(
    cfg_path: Path, root: Path, out: Path, plan: Plan, device: torch.device, compiled: bool
) -> dict[str, Any]:
    """The trainer end to end (data.cache=device, the profile's model) on the synthetic set."""
    cfg = load_config(
        cfg_path,
        [
            f"data.root={root}",
            "data.dataset=synthetic",
            "model.pretrained=null",
            "data.cache=device",
            "data.epoch=images",
            "train.progress=false",
            f"train.compile={str(compiled).lower()}",
        ],
    )
    trainer = Trainer.from_config(cfg, out, device=str(device))
    start = time.perf_counter()
    trainer.train_loader.build_cache()
    cache_s = time.perf_counter() - start
    trainer.train_one_epoch(1)  # warm-up (and compilation)
    images, seconds, epoch = 0, 0.0, 1
    while images < plan.trainer_steps * int(cfg["data"]["p"]) * int(cfg["data"]["k"]):
        epoch += 1
        stats = trainer.train_one_epoch(epoch)
        images, seconds = images + stats["images"], seconds + stats["seconds"]
    return {
        "compile": compiled,
        "img_s": images / seconds,
        "images": images,
        "cache_build_s": cache_s,
        "cache_on": str(trainer.train_loader.cache.images.device),
    }


def measure_evaluation(shape: tuple[int, int], dim: int, device: torch.device) -> dict[str, Any]:
    """Market-sized ranking on the device: random descriptors, Market-like ids and cameras."""
    rng = np.random.default_rng(0)
    nq, ng = shape
    q_pids, g_pids = rng.integers(1, 751, nq), rng.integers(1, 751, ng)
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    g_pids[:nq] = q_pids  # every query has a true match (probably from another camera)
    qf = torch.randn(nq, dim, device=device)
    gf = torch.randn(ng, dim, device=device)
    _sync(device)
    start = time.perf_counter()
    result = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="cosine")
    _sync(device)
    return {
        "queries": nq,
        "gallery": ng,
        "dim": dim,
        "seconds": time.perf_counter() - start,
        "mAP_random": float(result["mAP"]),
    }


def project_market(train_img_s: float, extract_img_s: float, eval_s: float, cfg: dict) -> dict[str, Any]:
    """The paper's 600 epochs on Market-1501 (epoch = every id once: 751 // 8 batches of 32)."""
    d, epochs = cfg["data"], int(cfg["optim"]["epochs"])
    per_epoch = MARKET["train_ids"] // int(d["p"]) * int(d["p"]) * int(d["k"])
    every = int(cfg["train"]["eval_every"] or 0)
    evaluations = (epochs // every if every else 0) + (0 if every and epochs % every == 0 else 1)
    one_eval = (MARKET["query"] + MARKET["gallery"]) / extract_img_s + eval_s
    train_h = epochs * per_epoch / train_img_s / 3600
    return {
        "epochs": epochs,
        "images_per_epoch": per_epoch,
        "training_hours": train_h,
        "evaluations": evaluations,
        "evaluation_hours": evaluations * one_eval / 3600,
        "total_hours": train_h + evaluations * one_eval / 3600,
    }


def ddp_smoke(root: Path, out: Path) -> dict[str, Any]:
    """``torchrun --nproc_per_node=2 -m canlib train`` with the smoke profile on two GPUs."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        "canlib",
        "train",
        "--config",
        str(REPO / "configs" / "smoke.yaml"),
        "--data-root",
        str(root),
        "--output",
        str(out),
        "--device",
        "cuda",
        "train.progress=false",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    result: dict[str, Any] = {"returncode": proc.returncode, "seconds": time.perf_counter() - start}
    if proc.returncode == 0:
        result["metrics"] = json.loads(proc.stdout)
        result["run"] = json.loads((out / "run.json").read_text()).get("distributed")
    else:
        result["stderr_tail"] = proc.stderr[-2000:]
    return result


def models(cfg: dict, classes: int) -> list[tuple[str, Callable[[], tuple[torch.nn.Module, CANLoss]]]]:
    """Builders of the profile's CAN with its loss, and of the stride-1 baseline of the same trunk
    (one global feature, CE + triplet + centres); built one at a time to keep memory peaks apart."""
    m = cfg["model"]

    def can() -> tuple[torch.nn.Module, CANLoss]:
        run = RunSections.from_config(cfg)
        model = build_model(run.model, classes)
        return model, build_loss(run.loss, model, classes)

    def baseline() -> tuple[torch.nn.Module, CANLoss]:
        model = StrideOneResNet(classes, m["backbone"], **dict(m.get("backbone_kwargs") or {}))
        return model, CANLoss(
            num_classes=classes, feat_dim=model.embed_dim, num_features=1, global_indices=[0], local_indices=[]
        )

    return [(f"CAN parts {','.join(map(str, m['parts']))}", can), (f"{m['backbone']} last stride 1", baseline)]


def _release(device: torch.device) -> None:
    """Forget compiled graphs and cached GPU blocks between measurements."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_checks(plan: Plan, device: torch.device, compile_modes: list[bool], tmp: Path, ddp: bool) -> dict:
    """Every measurement of one run (see the module docstring)."""
    cfg = load_config(REPO / plan.config, ["model.pretrained=null"])
    amp = torch.bfloat16 if device.type == "cuda" else None
    out: dict[str, Any] = {"models": [], "trainer": []}
    for compiled in compile_modes:
        torch.manual_seed(0)
        for name, build in models(cfg, MARKET["train_ids"]):
            out["models"].append(measure_model(name, *build(), cfg, plan, device, amp, compiled))
            print(_row(out["models"][-1]), flush=True)
            _release(device)
    can = build_model(RunSections.from_config(cfg).model, MARKET["train_ids"]).to(device)
    out["extract_img_s"] = measure_extraction(can, cfg, plan, device, amp)
    root = tmp / "synthetic"
    make_synthetic(root, seed=0, workers=4 if device.type == "cuda" else 1, **plan.synthetic)
    for compiled in compile_modes:
        out["trainer"].append(
            measure_trainer(REPO / plan.config, root, tmp / f"trainer-{compiled}", plan, device, compiled)
        )
        _release(device)
    out["evaluation"] = measure_evaluation(plan.eval_shape, can.descriptor_dim, device)
    best = max(out["trainer"], key=lambda r: r["img_s"])
    out["projection"] = project_market(best["img_s"], out["extract_img_s"], out["evaluation"]["seconds"], cfg)
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    out["ddp_smoke"] = (
        ddp_smoke(root, tmp / "ddp")
        if ddp and n_gpus >= 2
        else {"skipped": f"{n_gpus} GPU(s) visible; the 2-process smoke run needs 2"}
    )
    return out


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['name']:<28} compile {'on ' if r['compile'] else 'off'} {r['img_s']:9.1f} img/s "
        f"{r['tflop_s']:7.2f} TFLOP/s  {r['step_ms']:8.1f} ms/step  peak {r['peak_mem_gib']:6.2f} GiB  "
        f"first step {r['first_step_s']:.1f} s"
    )


def print_table(result: dict[str, Any]) -> None:
    """The short summary printed at the end."""
    print(f"\n== gpu-check: {result['device_name']} ({'DRY RUN, tiny, CPU' if result['dry_run'] else 'full'})")
    for r in result["models"]:
        print(_row(r))
    for r in result["trainer"]:
        print(
            f"trainer end to end (cache on {r['cache_on']}) compile {'on ' if r['compile'] else 'off'} "
            f"{r['img_s']:9.1f} img/s   cache built in {r['cache_build_s']:.1f} s"
        )
    e, p = result["evaluation"], result["projection"]
    print(
        f"evaluation {e['queries']} x {e['gallery']} (dim {e['dim']}) on the device: {e['seconds']:.2f} s; "
        f"extraction {result['extract_img_s']:.0f} img/s"
    )
    print(
        f"projected Market-1501, {p['epochs']} epochs: {p['training_hours']:.2f} h training + "
        f"{p['evaluations']} evaluations {p['evaluation_hours']:.2f} h = {p['total_hours']:.2f} h"
    )
    print(f"2-GPU torchrun smoke: {result['ddp_smoke']}")
    print(f"written: {result['path']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "results" / "gpu"), help="folder for the JSON")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both", help="torch.compile settings")
    parser.add_argument("--dry-run", action="store_true", help="the tiny CPU run even when CUDA is present")
    parser.add_argument("--no-ddp", action="store_true", help="skip the 2-GPU torchrun smoke run")
    args = parser.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    if dry:
        print("no CUDA device: a tiny dry run on the CPU follows (it checks the code path; it measures no GPU)")
    device = torch.device("cpu" if dry else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    modes = [False] if dry else {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    start, threads = time.perf_counter(), torch.get_num_threads()
    if dry:  # it checks code, not speed: one thread does not fight whatever else runs on the CPU
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_checks(DRY_PLAN if dry else GPU_PLAN, device, modes, Path(tmp), not args.no_ddp)
    finally:
        torch.set_num_threads(threads)
    stamp = dt.datetime.now(dt.timezone.utc)
    name = "gpu-check-dry-run.json" if dry else f"gpu-check-{stamp:%Y%m%d-%H%M%S}.json"
    path = Path(args.out) / name
    result.update(
        created=stamp.isoformat(timespec="seconds"),
        dry_run=dry,
        seconds=time.perf_counter() - start,
        plan=asdict(DRY_PLAN if dry else GPU_PLAN),
        machine=machine_info(device),
        versions=library_versions(),
        path=str(path),
        device_name=torch.cuda.get_device_name(0) if not dry else "CPU",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
