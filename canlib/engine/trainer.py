"""The training loop of Section 4.5, with checkpoints that resume exactly.

An output folder holds::

    config.yaml        the resolved configuration
    run.json           seed, git commit, code fingerprint, library versions, machine
    log.jsonl          one line per epoch: lr, mean loss terms, images/s (and metrics when evaluated)
    checkpoints/last.pt  model, optimisers, scheduler, centres, RNG states and epoch
    metrics.json       the final evaluation (mAP, rank-k, mINP, the AP variant used)

A non-finite loss stops training with :class:`TrainingDiverged`; the checkpoint on disk
is then still the one written at the end of the last good epoch.

Nothing is lost to a failure: a folder holding a run is refused without ``--resume`` or
``--overwrite``; the input size, the output folder and every image are checked before the
first write; each epoch's log line is written before its checkpoint (a resume drops lines
past the checkpoint's epoch); a failed final evaluation or Ctrl-C keeps the checkpoint and
the message says how to continue.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from canlib.config import DEFAULTS, ConfigError, RunSections, config_hash, dump_config
from canlib.data import PKSampler
from canlib.data.base import ImageReadError
from canlib.data.cache import CachedTrainLoader
from canlib.engine.build import (
    build_dataset,
    build_loaders,
    build_loss,
    build_model,
    build_optimizers,
)
from canlib.engine.checkpoint import CHECKPOINT, checkpoint_path, load_model_state
from canlib.engine.checkpoint import load_checkpoint as read_checkpoint
from canlib.engine.checkpoint import save_checkpoint as write_checkpoint
from canlib.engine.distributed import (
    GlobalBatchShard,
    barrier,
    convert_sync_batchnorm,
    eval_gatherer,
    gather_with_grad,
    init_distributed,
    shutdown_distributed,
)
from canlib.engine.evaluate import evaluate_model, evaluation_options
from canlib.engine.record import run_record
from canlib.model import CAN

log = logging.getLogger(__name__)

#: Configuration keys a resumed run may change (extending a run is allowed).
RESUMABLE_CHANGES = (
    "optim.epochs",
    "train.progress",
    "train.eval_every",
    "data.num_workers",
    "data.cache",
    "train.compile",
    "data.root",
    "data.verify_images",
)
#: Files that make a folder a run: ``train`` refuses to start over them without --resume or --overwrite.
RUN_FILES = (CHECKPOINT, "metrics.json")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run; the message says which checkpoint is kept."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable  # a checkpoint exists to continue from


class EvaluationFailed(RuntimeError):
    """Training finished and its checkpoint is kept, but the final evaluation failed."""


class RunFolderError(ValueError):
    """The output folder holds another run, or cannot be written."""


def error_line(exc: BaseException) -> str:
    """One line for an error; a DataLoader worker's wrapped error becomes the original's message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    if len(lines) > 1 and any(ln.startswith("Original Traceback") for ln in lines):
        return lines[-1].split(": ", 1)[-1]  # "canlib.data.base.ImageReadError: cannot read image ..."
    return " ".join(lines)


def check_output_dir(out: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Before any work: refuse a folder holding a run (unless resuming or overwriting) and one
    that cannot be written. Writes nothing but a temporary probe file, removed at once."""
    if resume and overwrite:
        raise RunFolderError(
            "--resume continues the run in the output folder and --overwrite replaces it: pass one of them"
        )
    found = [name for name in RUN_FILES if (out / name).is_file()]
    if found and not (resume or overwrite):
        raise RunFolderError(
            f"the output folder {out} already holds a run ({', '.join(found)}): pass --resume to "
            "continue it, --overwrite to replace it, or choose another --output"
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"cannot create the output folder {out}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise RunFolderError(f"cannot write to the output folder {out}: {exc.strerror or exc} ({existing})") from None


def _fill_defaults(defaults: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with the keys it lacks taken from ``defaults`` (a run written before they existed)."""
    out = {**copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(cfg))}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), Mapping) and key not in ("options", "backbone_kwargs"):
            out[key] = _fill_defaults(value, cfg[key])
    return out


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
    """Every generator's state as tensors and plain values (what ``weights_only`` loading accepts)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`_rng_state` stored, exactly."""
    py, npy = state["python"], state["numpy"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"]))
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename, so a crash never leaves half a checkpoint."""
    write_checkpoint(obj, path)


#: The values ``train.amp`` accepts (false/null/"none" mean "off").
AMP_MODES: tuple[Any, ...] = ("auto", "off", "fp16", "bf16", "none", False, None)
#: The values ``train.channels_last`` accepts ("auto": on for CUDA).
CHANNELS_LAST_MODES: tuple[Any, ...] = ("auto", True, False)


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


def _channels_last(device: torch.device, setting: Any) -> bool:
    """The channels-last memory format: on for CUDA ("auto"), or as set."""
    return (device.type == "cuda") if setting == "auto" else bool(setting)


def check_input_height(height: int, model: CAN) -> None:
    """Refuse, before training, an input too short for the model's largest part branch."""
    need = model.min_input_height()
    if height < need:
        largest = max(model.parts)
        raise ConfigError(
            f"data.height={height} is too small for model.parts={list(model.parts)}: part{largest} cuts the "
            f"layer-4 map (height/{model.output_stride}) into {largest} stripes, so the input must be at least "
            f"{need} pixels high; raise data.height or drop the largest parts"
        )


def _changed_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += _changed_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.append(f"{prefix}{key}")
    return keys


class _EpochSums:
    """An epoch's loss terms summed over its images: each batch weighs its global size."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.seen = 0

    def add(self, terms: Mapping[str, float], batch: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * batch
        self.seen += batch

    def postfix(self) -> dict[str, str]:
        """The running means, for the progress bar."""
        return {k: f"{v / self.seen:.3f}" for k, v in self.sums.items()}

    def means(self) -> dict[str, float]:
        """``loss_<term>``: the epoch's mean of each term."""
        return {f"loss_{k}": v / max(self.seen, 1) for k, v in self.sums.items()}


class Trainer:
    """Holds the objects of one run; :func:`train` is the usual entry point.

    ``run`` holds the typed sections of the resolved configuration (:class:`canlib.config.RunSections`);
    :meth:`from_config` reads them from a configuration dictionary.
    """

    def __init__(self, run: RunSections, output_dir: str | Path, device: str | None = "auto") -> None:
        if not isinstance(run, RunSections):
            kind = type(run).__name__
            raise TypeError(
                f"Trainer takes RunSections, got {kind}; for a configuration dictionary use Trainer.from_config"
            )
        self.run = run
        self.out = Path(output_dir)
        # One process, or one of torchrun's: rank 0 alone writes files (``is_main``).
        self.dist, self.device = init_distributed(device)
        self.is_main = self.dist.is_main
        self.seed = run.seed
        seed_everything(self.seed, deterministic=run.train.deterministic)

        self.dataset = build_dataset(run.data)
        num_classes = int(self.dataset.num_train_pids)
        self.train_loader, self.query_loader, self.gallery_loader = build_loaders(
            run.data, self.dataset, self.seed, self.dist.rank, self.dist.world_size, self.device
        )
        model = build_model(run.model, num_classes)
        check_input_height(run.data.height, model)  # before any image is decoded or file written
        if run.data.verify_images:
            self._verify_images()
        if self.dist.enabled and run.train.sync_bn:
            model = convert_sync_batchnorm(model, self.device)
        self.model = model.to(self.device)
        self.loss = build_loss(run.loss, self.model, num_classes).to(self.device)
        self.optimizer, self.center_optimizer, self.scheduler = build_optimizers(run.optim, self.model, self.loss)

        self.amp_dtype = _amp_dtype(self.device, run.train.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.channels_last = _channels_last(self.device, run.train.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model = self._training_module(run.train.compile)
        self.epoch = 0
        self.saved_epoch: int | None = None  # the epoch of the checkpoint this run wrote or resumed from

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], output_dir: str | Path, device: str | None = "auto") -> Trainer:
        """The trainer of a resolved configuration dictionary (:func:`canlib.config.load_config`)."""
        return cls(RunSections.from_config(cfg), output_dir, device)

    def _verify_images(self) -> None:
        """Decode every image once (this process's share of them), so a corrupt file stops the run now."""
        start = time.perf_counter()
        try:
            count = self.dataset.verify_images(part=(self.dist.rank, self.dist.world_size))
        except ImageReadError as exc:
            raise ImageReadError(
                f"{exc}. Found before training; replace or remove the file (data.verify_images=false skips this check)"
            ) from None
        log.info("checked that %d images decode (%.1f s)", count, time.perf_counter() - start)

    def _training_module(self, compile_model: bool) -> Callable[..., Any]:
        """What a training step calls: ``self.model`` in DDP (several processes), compiled if asked.

        ``self.model`` stays the plain module: checkpoints and evaluation use it.
        """
        module: Callable[..., Any] = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if compile_model:
            module = torch.compile(module)
        return module

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
            "config_hash": config_hash(self.run.config),
        }

    def save_checkpoint(self) -> Path:
        path = checkpoint_path(self.out)
        _atomic_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        # On the CPU first: the RNG states must stay there; load_state_dict moves the rest.
        state = read_checkpoint(path, map_location="cpu")
        load_model_state(self.model, state["model"], path)
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
        # Under DDP each rank's workers draw their own augmentations (rank 0's = one process's).
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7_919 * self.dist.rank)

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (at most ``train.max_batches_per_epoch`` batches); its log line's values."""
        self.model.train()
        self.loss.train()
        loader = self._epoch_loader(epoch)
        total_batches = self._batches_per_epoch(len(loader))
        sums = _EpochSums()
        start = time.perf_counter()
        bar = tqdm(
            total=total_batches,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not (self.run.train.progress and self.is_main),
            dynamic_ncols=True,
        )
        for step, (images, pids, _camids) in enumerate(loader):
            if step >= total_batches:
                break
            sums.add(*self.train_step(images, pids, epoch, step))
            bar.update(1)
            bar.set_postfix(sums.postfix())
        bar.close()
        return self._epoch_stats(epoch, sums, time.perf_counter() - start)

    def _epoch_loader(self, epoch: int) -> DataLoader | CachedTrainLoader:
        """The training loader, set to ``epoch``'s batches and worker seeds."""
        loader = self.train_loader
        batches = loader.batch_sampler
        if not isinstance(batches, (PKSampler, GlobalBatchShard)):
            raise TypeError(f"the training loader's batch sampler is a {type(batches).__name__}, not a PK sampler")
        batches.set_epoch(epoch)
        loader.generator = self._loader_generator(epoch)
        return loader

    def _batches_per_epoch(self, num_batches: int) -> int:
        """The loader's batches, capped by ``train.max_batches_per_epoch``."""
        cap = self.run.train.max_batches_per_epoch
        return num_batches if cap is None else min(num_batches, int(cap))

    def train_step(
        self, images: torch.Tensor, pids: torch.Tensor, epoch: int, step: int
    ) -> tuple[dict[str, float], int]:
        """One optimisation step on a batch; its loss terms and the global batch size (every rank's images)."""
        images = images.to(self.device, non_blocking=True)
        pids = pids.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        total, terms = self.compute_loss(images, pids)
        if not torch.isfinite(total):
            raise TrainingDiverged(
                f"non-finite loss ({float(total.detach())}) at epoch {epoch}, step {step}: terms "
                f"{ {k: float(v) for k, v in terms.items()} }. Training stopped; {self._kept_checkpoint()}. "
                "Lower optim.lr or check the input data."
            )
        self._optimizer_step(total)
        return terms, len(pids) * self.dist.world_size  # the global batch: every rank's loss is its loss

    def _optimizer_step(self, total: torch.Tensor) -> None:
        """Backward through the (possibly fp16-scaled) loss; step the network's and the centres' optimisers."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.center_optimizer is not None:
            self.center_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        if self.center_optimizer is not None:
            self._center_step(self.center_optimizer)
        self.scaler.update()

    def _center_step(self, center_optimizer: torch.optim.Optimizer) -> None:
        """Step the centres with their loss weight (and any fp16 loss scale) divided out of their gradients.

        Under fp16 loss scaling the centres' gradients are still scaled; a step the scaler skipped
        (inf/NaN gradients) is skipped for the centres as well.
        """
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.loss.rescale_center_grads(grad_scale=scale)
        grads = [p.grad for p in center_optimizer.param_groups[0]["params"] if p.grad is not None]
        if all(torch.isfinite(g).all() for g in grads):
            center_optimizer.step()

    def _epoch_stats(self, epoch: int, sums: _EpochSums, elapsed: float) -> dict[str, Any]:
        """The epoch's log line: learning rate, mean loss terms, images and speed."""
        return {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            **sums.means(),
            "images": sums.seen,
            "seconds": elapsed,
            "images_per_s": sums.seen / elapsed if elapsed > 0 else math.nan,
        }

    def compute_loss(self, images: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward this rank's shard, gather every rank's outputs (with gradient) and return the
        loss of the GLOBAL batch: the one-process loss, on every rank (see :mod:`canlib.engine.distributed`)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.train_model(images)
        pre_bn = None if out.pre_bn is None else gather_with_grad(out.pre_bn.float())
        return self.loss(
            gather_with_grad(out.features.float()),
            gather_with_grad(out.logits.float()),
            gather_with_grad(pids),
            pre_bn=pre_bn,
        )

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the model on the query/gallery split with the ``eval`` section's settings."""
        if self.dist.enabled:  # rank 0's BatchNorm statistics on every rank: one model evaluated
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, src=0)
        for loader in (self.query_loader, self.gallery_loader):
            loader.generator = torch.Generator().manual_seed(self.seed)
        return evaluate_model(
            self.model,
            self.query_loader,
            self.gallery_loader,
            self.device,
            **evaluation_options(self.run.eval),
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            gather=eval_gatherer(self.device) if self.dist.enabled else None,
        )

    # ------------------------------------------------------------------ the run
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train to ``optim.epochs``, then evaluate; return the metrics (also in ``metrics.json``).

        A folder that holds a run is refused unless ``resume`` (continue it) or ``overwrite``
        (replace it), and nothing is written before every check has passed. Each epoch's log line
        is appended BEFORE its checkpoint and resuming drops the lines past the checkpoint's
        epoch, so ``log.jsonl`` matches the checkpoint whenever the process dies.
        """
        check_output_dir(self.out, resume=resume, overwrite=overwrite)
        ckpt = checkpoint_path(self.out)
        log_path = self.out / "log.jsonl"
        if resume and ckpt.is_file():
            self._check_resumable()
            self.load_checkpoint(ckpt)
            self.saved_epoch = self.epoch
        elif resume:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
        barrier(self.dist)  # every rank has read the folder before rank 0 writes to it
        if self.is_main:
            self._start_files(log_path, overwrite)
        log.info("%s", self.dataset.summary())

        epochs = self.run.optim.epochs
        try:
            while self.epoch < epochs:
                self._run_epoch(epochs, log_path)
        except KeyboardInterrupt as exc:
            raise TrainingInterrupted(
                f"interrupted after {self.epoch} of {epochs} epochs; {self._kept_checkpoint()}",
                resumable=self.saved_epoch is not None,
            ) from exc
        metrics = self._final_evaluation()
        if self.is_main:
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("final: mAP %.4f  rank-1 %.4f  mINP %.4f", metrics["mAP"], metrics["rank1"], metrics["mINP"])
        return metrics

    def _run_epoch(self, epochs: int, log_path: Path) -> None:
        """Train the next epoch; evaluate it (``train.eval_every``), log it, then checkpoint it when due."""
        stats = self.train_one_epoch(self.epoch + 1)
        self.scheduler.step()
        self.epoch += 1
        eval_every = self.run.train.eval_every
        if eval_every and self.epoch % eval_every == 0 and self.epoch < epochs:
            stats["eval"] = {k: v for k, v in self.evaluate().items() if k != "cmc"}
        if self.is_main:  # the line first: a resume drops it if its checkpoint never came
            _append_line(log_path, stats)
        if self.epoch % max(self.run.train.checkpoint_every, 1) == 0 or self.epoch == epochs:
            if self.is_main:
                self.save_checkpoint()
            self.saved_epoch = self.epoch
        log.info(
            "epoch %d/%d  %s  %.1f img/s",
            self.epoch,
            epochs,
            " ".join(f"{k[5:]}={v:.4f}" for k, v in stats.items() if k.startswith("loss_")),
            stats["images_per_s"],
        )

    def _kept_checkpoint(self) -> str:
        """Which checkpoint a stopped run leaves behind (for the error messages)."""
        if self.saved_epoch is None:
            return "no checkpoint was written yet, so there is nothing to resume"
        return f"the last good checkpoint (end of epoch {self.saved_epoch}) is kept at {checkpoint_path(self.out)}"

    def _check_resumable(self) -> None:
        """The run in the folder has this configuration (up to RESUMABLE_CHANGES) and this data."""
        try:
            saved = yaml.safe_load((self.out / "config.yaml").read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RunFolderError(
                f"cannot resume {self.out}: its config.yaml cannot be read ({error_line(exc)})"
            ) from None
        changed = [
            k
            for k in _changed_keys(_fill_defaults(DEFAULTS, saved or {}), self.run.config)
            if k not in RESUMABLE_CHANGES
        ]
        if changed:
            raise ValueError(
                f"cannot resume {self.out}: the configuration differs in {changed} "
                f"(a resumed run may change only {', '.join(RESUMABLE_CHANGES)})"
            )
        try:
            recorded = json.loads((self.out / "run.json").read_text()).get("data", {}).get("statistics") or {}
        except (OSError, ValueError):
            recorded = {}  # a run recorded before the data statistics were
        found = self.dataset.statistics()
        diffs = [
            f"{key} {found.get(key)} (the run's {value})" for key, value in recorded.items() if found.get(key) != value
        ]
        if diffs:
            raise ValueError(
                f"cannot resume {self.out}: the data set at {self.dataset.root} is not the one it was "
                f"trained on: {'; '.join(diffs)}"
            )

    def _start_files(self, log_path: Path, overwrite: bool) -> None:
        """The first writes of a run: clear a replaced run, trim or start the log, record config and run."""
        self.out.mkdir(parents=True, exist_ok=True)
        if overwrite or self.epoch < self.run.optim.epochs:  # metrics.json will be rewritten
            (self.out / "metrics.json").unlink(missing_ok=True)
        if self.epoch == 0:
            checkpoint_path(self.out).unlink(missing_ok=True)  # a replaced run's, if any
            log_path.write_text("")
        elif log_path.is_file():
            _trim_log(log_path, self.epoch)
        dump_config(self.run.config, self.out / "config.yaml")
        record = {
            **run_record(dict(self.run.config), self.device),
            "distributed": self.dist.record(),
            "data": {"statistics": self.dataset.statistics()},
        }  # what a resume compares
        (self.out / "run.json").write_text(json.dumps(record, indent=2) + "\n")

    def _final_evaluation(self) -> dict[str, Any]:
        """Evaluate the trained model; on failure the checkpoint is kept and the error says how to finish."""
        finish = (
            f"the checkpoint of epoch {self.epoch} is kept at {checkpoint_path(self.out)}: once the cause is "
            f"fixed, rerun the same train command with --resume (it only evaluates) or run "
            f"`python -m canlib evaluate --run {self.out}`"
        )
        try:
            return {"epoch": self.epoch, **self.evaluate()}
        except KeyboardInterrupt as exc:
            raise TrainingInterrupted(f"interrupted during the final evaluation; {finish}", resumable=True) from exc
        except Exception as exc:
            raise EvaluationFailed(
                f"training finished but the final evaluation failed: {error_line(exc)}; {finish}"
            ) from exc


def _append_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line in one write, flushed to disk."""
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _trim_log(path: Path, epoch: int) -> None:
    """Keep the log lines up to ``epoch`` (a resumed checkpoint's); drop later and torn lines."""
    kept, torn = [], 0
    for line in path.read_text().splitlines():
        try:
            if line.strip() and int(json.loads(line)["epoch"]) <= epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            torn += 1
    if torn:
        log.warning("%s: dropped %d unreadable line(s) (a write cut short)", path, torn)
    if not any(json.loads(line)["epoch"] == epoch for line in kept):
        log.warning("%s has no line for epoch %d, the checkpoint's (a run written by an older canlib)", path, epoch)
    path.write_text("".join(line + "\n" for line in kept))


def train(
    cfg: dict[str, Any],
    output_dir: str | Path,
    device: str | None = "auto",
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train with a resolved configuration; return the final metrics (also in ``metrics.json``).

    The output folder is checked first (see :func:`check_output_dir`), before the data set and
    model are built. Under torchrun every process calls this; they leave the process group when done.
    """
    check_output_dir(Path(output_dir), resume=resume, overwrite=overwrite)
    try:
        metrics = Trainer.from_config(cfg, output_dir, device).fit(resume=resume, overwrite=overwrite)
    except BaseException:
        shutdown_distributed(wait=False)  # torchrun stops the other processes
        raise
    shutdown_distributed()
    return metrics
