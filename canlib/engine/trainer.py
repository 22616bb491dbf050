"""The training loop of Section 4.5, with checkpoints that resume exactly.

An output folder holds::

    config.yaml        the resolved configuration
    run.json           seed, git commit, code fingerprint, library versions, machine
    log.jsonl          one line per epoch: lr, mean loss terms, images/s (and metrics when evaluated)
    checkpoints/last.pt  model, optimisers, scheduler, centres, RNG states and epoch
    metrics.json       the final evaluation (mAP, rank-k, mINP, the AP variant used)

A non-finite loss stops training with :class:`TrainingDiverged`; the checkpoint on disk
is then still the one written at the end of the last good epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from canlib.config import config_hash, dump_config
from canlib.engine.build import (
    build_dataset,
    build_loaders,
    build_loss,
    build_model,
    build_optimizers,
    resolve_device,
)
from canlib.engine.evaluate import evaluate_model
from canlib.engine.record import run_record

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.pt"
#: Configuration keys a resumed run may change (extending a run is allowed).
RESUMABLE_CHANGES = ("optim.epochs", "train.progress", "train.eval_every", "data.num_workers")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename, so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _amp_dtype(device: torch.device, setting: Any) -> torch.dtype | None:
    """bf16 autocast on CUDA when supported ("auto"), fp16 when asked; never on CPU by default."""
    if setting in (False, None, "off", "none"):
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _changed_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += _changed_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.append(f"{prefix}{key}")
    return keys


class Trainer:
    """Holds the objects of one run; :func:`train` is the usual entry point."""

    def __init__(self, cfg: dict[str, Any], output_dir: str | Path, device: str | None = "auto") -> None:
        self.cfg = cfg
        self.out = Path(output_dir)
        self.device = resolve_device(device)
        self.seed = int(cfg["seed"])
        train_cfg = cfg["train"]
        seed_everything(self.seed, deterministic=bool(train_cfg["deterministic"]))

        self.dataset = build_dataset(cfg)
        num_classes = int(self.dataset.num_train_pids)
        self.train_loader, self.query_loader, self.gallery_loader = build_loaders(cfg, self.dataset, self.seed)
        self.model = build_model(cfg, num_classes).to(self.device)
        self.loss = build_loss(cfg, self.model, num_classes).to(self.device)
        self.optimizer, self.center_optimizer, self.scheduler = build_optimizers(cfg, self.model, self.loss)

        self.amp_dtype = _amp_dtype(self.device, train_cfg["amp"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        cl = train_cfg["channels_last"]
        self.channels_last = (self.device.type == "cuda") if cl == "auto" else bool(cl)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.epoch = 0

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "center_optimizer": None if self.center_optimizer is None else self.center_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "config_hash": config_hash(self.cfg),
        }

    def save_checkpoint(self) -> Path:
        path = self.out / CHECKPOINT
        _atomic_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.center_optimizer is not None and state["center_optimizer"] is not None:
            self.center_optimizer.load_state_dict(state["center_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        log.info("resumed from %s at the end of epoch %d", path, self.epoch)

    # ------------------------------------------------------------------ one epoch
    def _loader_generator(self, epoch: int) -> torch.Generator:
        # Worker seeds and any loader randomness depend only on (seed, epoch), so a resumed
        # run sees the same batches as an uninterrupted one.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        self.loss.train()
        loader = self.train_loader
        loader.batch_sampler.set_epoch(epoch)
        loader.generator = self._loader_generator(epoch)
        cap = self.cfg["train"]["max_batches_per_epoch"]
        total_batches = len(loader) if cap is None else min(len(loader), int(cap))
        sums: dict[str, float] = {}
        seen = 0
        start = time.perf_counter()
        bar = tqdm(
            total=total_batches, desc=f"epoch {epoch}", leave=False,
            disable=not self.cfg["train"]["progress"], dynamic_ncols=True,
        )
        for step, (images, pids, _camids) in enumerate(loader):
            if step >= total_batches:
                break
            images = images.to(self.device, non_blocking=True)
            pids = pids.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.model(images)
            total, terms = self.loss(out.features.float(), out.logits.float(), pids)
            if not torch.isfinite(total):
                raise TrainingDiverged(
                    f"non-finite loss ({float(total.detach())}) at epoch {epoch}, step {step}: terms "
                    f"{ {k: float(v) for k, v in terms.items()} }. Training stopped; the last good "
                    f"checkpoint (end of epoch {self.epoch}) is kept at {self.out / CHECKPOINT}. "
                    "Lower optim.lr or check the input data."
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self.center_optimizer is not None:
                self.center_optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            if self.center_optimizer is not None:
                # Under fp16 loss scaling the centres' gradients are still scaled; a step the
                # scaler skipped (inf/NaN gradients) is skipped for the centres as well.
                scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
                self.loss.rescale_center_grads(grad_scale=scale)
                grads = [p.grad for p in self.center_optimizer.param_groups[0]["params"] if p.grad is not None]
                if all(torch.isfinite(g).all() for g in grads):
                    self.center_optimizer.step()
            self.scaler.update()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(pids)
            seen += len(pids)
            bar.update(1)
            bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()})
        bar.close()
        elapsed = time.perf_counter() - start
        return {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"loss_{k}": v / max(seen, 1) for k, v in sums.items()},
            "images": seen,
            "seconds": elapsed,
            "images_per_s": seen / elapsed if elapsed > 0 else math.nan,
        }

    def evaluate(self) -> dict[str, Any]:
        e = self.cfg["eval"]
        for loader in (self.query_loader, self.gallery_loader):
            loader.generator = torch.Generator().manual_seed(self.seed)
        return evaluate_model(
            self.model, self.query_loader, self.gallery_loader, self.device,
            metric=e["metric"], ap=e["ap"], max_rank=int(e["max_rank"]), flip_tta=bool(e["flip_tta"]),
            rerank=bool(e["rerank"]), chunk_size=int(e["chunk_size"]),
            amp_dtype=self.amp_dtype, channels_last=self.channels_last,
        )

    # ------------------------------------------------------------------ the run
    def fit(self, resume: bool = False) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self.out / CHECKPOINT
        log_path = self.out / "log.jsonl"
        if resume and ckpt.is_file():
            saved = yaml.safe_load((self.out / "config.yaml").read_text())
            changed = [k for k in _changed_keys(saved, self.cfg) if k not in RESUMABLE_CHANGES]
            if changed:
                raise ValueError(f"cannot resume {self.out}: the configuration differs in {changed}")
            self.load_checkpoint(ckpt)
            if log_path.is_file():  # drop lines written after the checkpoint we resume from
                lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
                kept = [ln for ln in lines if json.loads(ln)["epoch"] <= self.epoch]
                log_path.write_text("".join(ln + "\n" for ln in kept))
        elif resume:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
        if self.epoch == 0:
            log_path.write_text("")
        dump_config(self.cfg, self.out / "config.yaml")
        (self.out / "run.json").write_text(json.dumps(run_record(self.cfg, self.device), indent=2) + "\n")
        log.info("%s", self.dataset.summary())

        epochs = int(self.cfg["optim"]["epochs"])
        eval_every = int(self.cfg["train"]["eval_every"] or 0)
        every = max(int(self.cfg["train"]["checkpoint_every"]), 1)
        while self.epoch < epochs:
            stats = self.train_one_epoch(self.epoch + 1)
            self.scheduler.step()
            self.epoch += 1
            if self.epoch % every == 0 or self.epoch == epochs:
                self.save_checkpoint()
            if eval_every and self.epoch % eval_every == 0 and self.epoch < epochs:
                stats["eval"] = {k: v for k, v in self.evaluate().items() if k != "cmc"}
            with log_path.open("a") as fh:
                fh.write(json.dumps(stats) + "\n")
            log.info(
                "epoch %d/%d  %s  %.1f img/s", self.epoch, epochs,
                " ".join(f"{k[5:]}={v:.4f}" for k, v in stats.items() if k.startswith("loss_")),
                stats["images_per_s"],
            )
        metrics = {"epoch": self.epoch, **self.evaluate()}
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("final: mAP %.4f  rank-1 %.4f  mINP %.4f", metrics["mAP"], metrics["rank1"], metrics["mINP"])
        return metrics


def train(
    cfg: dict[str, Any], output_dir: str | Path, device: str | None = "auto", resume: bool = False
) -> dict[str, Any]:
    """Train with a resolved configuration; return the final metrics (also in ``metrics.json``)."""
    return Trainer(cfg, output_dir, device).fit(resume=resume)
