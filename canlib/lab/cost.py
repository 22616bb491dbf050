"""What a grid will cost before it starts: runs to train, training images, and GPU-hours where a rate is known.

GPU-hours = (the runs' epochs x images per epoch) / images per second, summed over the runs that
are not recorded yet. Images per epoch come from the data set and the configuration: the PK
sampler's batches of one epoch (``data.epoch``: every identity once, or about every image once;
capped by ``train.max_batches_per_epoch``) times ``p x k``. The rate is either the user's or the
one ``make gpu-check`` (``benchmarks/gpu_check.py``) measured on this GPU model: the trainer end to
end on the paper profile's CAN, written to ``results/gpu/gpu-check-<time>.json``. Without a rate
the estimate says so; it never guesses one. Evaluations (``train.eval_every``) are not counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canlib.config import ConfigError, RunSections
from canlib.data import PKSampler
from canlib.engine.build import build_dataset

log = logging.getLogger(__name__)

#: Where ``make gpu-check`` writes its measurements.
GPU_CHECK_DIR = Path("results/gpu")


@dataclass(frozen=True)
class Throughput:
    """Training images per second of one run on one GPU, and where that number comes from."""

    images_per_second: float
    source: str


@dataclass(frozen=True)
class Estimate:
    """A grid's cost: runs to train, their training images (None: not counted, ``note`` says why), the rate."""

    runs: int
    images: int | None
    throughput: Throughput | None
    note: str = ""

    @property
    def gpu_hours(self) -> float | None:
        """images / rate in hours, when both are known."""
        if self.images is None or self.throughput is None:
            return None
        return self.images / self.throughput.images_per_second / 3600

    def line(self) -> str:
        """The sentence ``ablate`` logs."""
        if self.runs == 0:
            return "cost: nothing to train, every run is recorded"
        if self.images is None:
            return f"cost: {self.runs} runs to train; training images not counted ({self.note})"
        head = f"cost: {self.runs} runs to train, {self.images:,} training images{self.note}"
        if self.throughput is None:
            return (
                f"{head}; no measured throughput for this device (run `make gpu-check` on it, or pass "
                "--images-per-second): GPU-hours not estimated"
            )
        t = self.throughput
        hours = self.gpu_hours or 0.0
        return (
            f"{head}; at {t.images_per_second:.1f} images/s ({t.source}) about {hours:.1f} GPU-hours "
            f"of training steps, {hours / self.runs:.2f} h a run "
            "(evaluations not counted; one GPU per run at that rate)"
        )


def images_per_epoch(
    train_pids: Sequence[int], p: int, k: int, epoch: str = "ids", cap: float | None = None, seed: int = 0
) -> int:
    """Training images of one epoch: the PK sampler's batches (at most ``int(cap)``) times ``p * k``."""
    sampler = PKSampler(train_pids, p=p, k=k, seed=seed, epoch=epoch)
    sampler.set_epoch(1)
    batches = len(sampler) if cap is None else min(len(sampler), int(cap))
    return batches * p * k


def estimate(run_images: Sequence[int], throughput: Throughput | None, note: str = "") -> Estimate:
    """The :class:`Estimate` of runs with these training images each."""
    return Estimate(len(run_images), sum(run_images), throughput, note)


def run_images(cfgs: Sequence[dict[str, Any]]) -> list[int]:
    """Each configuration's training images, epochs x :func:`images_per_epoch` (its data set read once)."""
    pids: dict[str, list[int]] = {}
    out = []
    for cfg in cfgs:
        run = RunSections.from_config(cfg)
        d = run.data
        key = json.dumps([d.dataset, d.root, d.options, d.val_ids, d.val_seed], sort_keys=True, default=str)
        if key not in pids:
            pids[key] = [pid for _, pid, _ in build_dataset(d).train]
        per_epoch = images_per_epoch(pids[key], d.p, d.k, d.epoch, run.train.max_batches_per_epoch, run.seed)
        out.append(run.optim.epochs * per_epoch)
    return out


def estimate_grid(cfgs: Sequence[dict[str, Any]], throughput: Throughput | None) -> Estimate:
    """The cost of training ``cfgs``; a data set that cannot be read here leaves the images uncounted."""
    if not cfgs:
        return Estimate(0, 0, throughput)
    try:
        images = run_images(cfgs)
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        return Estimate(len(cfgs), None, throughput, f"the data set could not be read here: {exc}")
    epochs = {RunSections.from_config(cfg).optim.epochs for cfg in cfgs}
    per_run = set(images)
    note = ""
    if len(per_run) == 1 and len(epochs) == 1:
        (n,), (e,) = per_run, epochs
        note = f" (each run {e} epochs x {n // e:,} images)"
    return estimate(images, throughput, note)


def measured_throughput(folder: str | Path = GPU_CHECK_DIR, gpu_name: str | None = None) -> Throughput | None:
    """The newest ``make gpu-check`` measurement in ``folder`` (dry runs ignored), of GPU ``gpu_name``
    when given: the trainer end-to-end rate (the faster of compile off/on). None when there is none."""
    found = []
    for path in sorted(Path(folder).glob("gpu-check-*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("unreadable gpu-check result %s: ignored", path)
            continue
        if result.get("dry_run", True) or not result.get("trainer"):
            continue
        if gpu_name is not None and result.get("device_name") != gpu_name:
            continue
        found.append((str(result.get("created", "")), path, result))
    if not found:
        return None
    created, path, result = max(found, key=lambda item: item[0])
    best = max(result["trainer"], key=lambda r: float(r["img_s"]))
    compiled = "on" if best.get("compile") else "off"
    source = f"make gpu-check on {result.get('device_name')}, {created}, compile {compiled}: {path}"
    return Throughput(float(best["img_s"]), source)
