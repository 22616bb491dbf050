"""The training loop of Section 4.5, with checkpoints that resume exactly.

The loop alone lives here; its collaborators each have a module: the output folder, what a resume
must match and TensorBoard's event files (:mod:`canlib.engine.run_folder`, :mod:`canlib.engine.tensorboard_log`),
checkpoint files and RNG states (:mod:`canlib.engine.checkpoint`), mixed precision (:mod:`canlib.engine.precision`),
DDP (:mod:`canlib.engine.distributed`), the checks before the first write (:mod:`canlib.engine.checks`) and the
ways a run stops (:mod:`canlib.engine.errors`, whose names are importable from here too).

A non-finite loss stops training with :class:`TrainingDiverged`; the checkpoint on disk is
then still the one written at the end of the last good epoch. Each epoch's log line is
written before its checkpoint; a failed final evaluation or Ctrl-C keeps the checkpoint and
the message says how to continue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from canlib.config import RunSections, config_hash
from canlib.data import PKSampler
from canlib.data.cache import CachedTrainLoader
from canlib.engine import distributed
from canlib.engine.build import build_dataset, build_loaders, build_loss, build_model, build_optimizers
from canlib.engine.checkpoint import CHECKPOINT as CHECKPOINT
from canlib.engine.checkpoint import load_checkpoint as read_checkpoint
from canlib.engine.checkpoint import load_state_of, rng_state, seed_everything, set_rng_state, state_of
from canlib.engine.checkpoint import save_checkpoint as write_checkpoint
from canlib.engine.checks import LossGuard, check_input_height, verify_images
from canlib.engine.distributed import GlobalBatchShard
from canlib.engine.errors import EvaluationFailed, TrainingDiverged, TrainingInterrupted, error_line
from canlib.engine.evaluate import evaluate_model, evaluation_options
from canlib.engine.precision import AMP_MODES as AMP_MODES
from canlib.engine.precision import CHANNELS_LAST_MODES as CHANNELS_LAST_MODES
from canlib.engine.precision import amp_dtype, autocast, grad_scaler, use_channels_last
from canlib.engine.run_folder import EpochLine, RunFolder, check_output_dir, hold

log = logging.getLogger(__name__)


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
        self.run, self.folder = run, RunFolder(output_dir)
        self.out = self.folder.path
        # One process, or one of torchrun's: rank 0 alone writes files (``is_main``).
        self.dist, self.device = distributed.init_distributed(device)
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
            verify_images(self.dataset, self.dist.rank, self.dist.world_size)
        if self.dist.enabled and run.train.sync_bn:
            model = distributed.convert_sync_batchnorm(model, self.device)
        self.model = model.to(self.device)
        self.loss = build_loss(run.loss, self.model, num_classes).to(self.device)
        self.optimizer, self.center_optimizer, self.scheduler = build_optimizers(run.optim, self.model, self.loss)

        self.amp_dtype = amp_dtype(self.device, run.train.amp)
        self.scaler = grad_scaler(self.amp_dtype)
        self.channels_last = use_channels_last(self.device, run.train.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model = distributed.training_module(self.model, self.device, self.dist, run.train.compile)
        self.epoch = 0
        self.saved_epoch: int | None = None  # the epoch of the checkpoint this run wrote or resumed from
        self.guard = LossGuard()  # a NaN or a loss grown 1e4-fold stops the run, keeping its last checkpoint

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], output_dir: str | Path, device: str | None = "auto") -> Trainer:
        """The trainer of a resolved configuration dictionary (:func:`canlib.config.load_config`)."""
        return cls(RunSections.from_config(cfg), output_dir, device)

    # ------------------------------------------------------------------ checkpoints
    def _parts(self) -> dict[str, Any]:
        """What a checkpoint holds the state of, in the order it is saved and loaded."""
        names = ("model", "loss", "optimizer", "center_optimizer", "scheduler", "scaler")
        return {name: getattr(self, name) for name in names}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: the parts' states, every RNG's state, the epoch."""
        parts = state_of(self._parts())
        return {"epoch": self.epoch, **parts, "rng": rng_state(), "config_hash": config_hash(self.run.config)}

    def save_checkpoint(self) -> Path:
        return write_checkpoint(self.state_dict(), self.folder.checkpoint)

    def load_checkpoint(self, path: Path) -> None:
        # On the CPU first: the RNG states must stay there; load_state_dict moves the rest.
        state = read_checkpoint(path, map_location="cpu")
        load_state_of(self._parts(), state, path)
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        log.info("resumed from %s at the end of epoch %d", path, self.epoch)

    # ------------------------------------------------------------------ one epoch
    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (at most ``train.max_batches_per_epoch`` batches); its log line's values."""
        self.model.train()
        self.loss.train()
        loader = self._epoch_loader(epoch)
        cap = self.run.train.max_batches_per_epoch
        total_batches = len(loader) if cap is None else min(len(loader), int(cap))
        sums = EpochLine()
        start = time.perf_counter()
        show = self.run.train.progress and self.is_main
        bar = tqdm(total=total_batches, desc=f"epoch {epoch}", leave=False, disable=not show, dynamic_ncols=True)
        for step, (images, pids, _camids) in enumerate(loader):
            if step >= total_batches:
                break
            sums.add(*self.train_step(images, pids, epoch, step))
            bar.update(1)
            bar.set_postfix(sums.postfix())
        bar.close()
        return sums.line(epoch, self.optimizer.param_groups[0]["lr"], time.perf_counter() - start)

    def _epoch_loader(self, epoch: int) -> DataLoader | CachedTrainLoader:
        """The training loader, set to ``epoch``'s batches and worker seeds."""
        loader = self.train_loader
        batches = loader.batch_sampler
        if not isinstance(batches, (PKSampler, GlobalBatchShard)):
            raise TypeError(f"the training loader's batch sampler is a {type(batches).__name__}, not a PK sampler")
        batches.set_epoch(epoch)
        # Worker seeds and any loader randomness depend only on (seed, epoch), so a resumed run sees
        # the same batches as an uninterrupted one; under DDP each rank's workers draw their own.
        loader.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7_919 * self.dist.rank)
        return loader

    def train_step(
        self, images: torch.Tensor, pids: torch.Tensor, epoch: int, step: int
    ) -> tuple[dict[str, float], int]:
        """One optimisation step on a batch; its loss terms and the global batch size (every rank's images)."""
        images = images.to(self.device, non_blocking=True)
        pids = pids.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        total, terms = self.compute_loss(images, pids)
        problem = self.guard.problem(float(total.detach()), epoch, step)
        if problem is not None:
            raise TrainingDiverged(
                f"{problem}: terms { {k: float(v) for k, v in terms.items()} }. Training stopped; "
                f"{self.folder.kept(self.saved_epoch)}. Lower optim.lr or check the input data."
            )
        self._optimizer_step(total)
        return terms, len(pids) * self.dist.world_size  # the global batch: every rank's loss is its loss

    def _optimizer_step(self, total: torch.Tensor) -> None:
        """Backward through the (possibly fp16-scaled) loss; step the network's and the centres' optimisers
        (the centres' gradients without their loss weight and loss scale; skipped when the scaler skips)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.center_optimizer is not None:
            self.center_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        if self.center_optimizer is not None:
            self.loss.rescale_center_grads(grad_scale=self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
            grads = [p.grad for p in self.center_optimizer.param_groups[0]["params"] if p.grad is not None]
            if all(torch.isfinite(g).all() for g in grads):
                self.center_optimizer.step()
        self.scaler.update()

    def compute_loss(self, images: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward this rank's shard, gather every rank's outputs (with gradient) and return the
        loss of the GLOBAL batch: the one-process loss, on every rank (see :mod:`canlib.engine.distributed`)."""
        with autocast(self.device, self.amp_dtype):
            out = self.train_model(images)
        gather = distributed.gather_with_grad
        pre_bn = None if out.pre_bn is None else gather(out.pre_bn.float())
        return self.loss(gather(out.features.float()), gather(out.logits.float()), gather(pids), pre_bn=pre_bn)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the model on the query/gallery split with the ``eval`` section's settings."""
        distributed.broadcast_buffers(self.model, self.dist)  # rank 0's BatchNorm statistics on every rank
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
            gather=distributed.eval_gatherer(self.device) if self.dist.enabled else None,
            per_query=True,
        )

    # ------------------------------------------------------------------ the run
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train to ``optim.epochs``, then evaluate; return the metrics (also in ``metrics.json``).

        ``resume`` continues the run in the folder, ``overwrite`` replaces it (see :class:`RunFolder`);
        nothing is written before every check has passed.
        """
        self.folder.check(resume=resume, overwrite=overwrite)
        epochs = self.run.optim.epochs
        if resume and self.folder.checkpoint.is_file():
            self.folder.check_resumable(self.run.config, self.dataset.statistics(), self.dataset.root)
            self.load_checkpoint(self.folder.checkpoint)
            self.saved_epoch = self.epoch
        elif resume:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
        distributed.barrier(self.dist)  # every rank has read the folder before rank 0 writes to it
        if self.is_main:
            self.folder.start(self.epoch, finished=self.epoch >= epochs, overwrite=overwrite)
            data = {"statistics": self.dataset.statistics()}  # what a resume compares
            self.folder.write_record(self.run.config, self.device, distributed=self.dist.record(), data=data)
        log.info("%s", self.dataset.summary())
        with self.folder.events(self.run.train.tensorboard and self.is_main, self.epoch):  # rank 0's event files
            try:
                while self.epoch < epochs:
                    self._run_epoch(epochs)
            except KeyboardInterrupt as exc:
                raise TrainingInterrupted(
                    f"interrupted after {self.epoch} of {epochs} epochs; {self.folder.kept(self.saved_epoch)}",
                    resumable=self.saved_epoch is not None,
                ) from exc
            metrics = self._final_evaluation()
            if self.is_main:
                self.folder.write_metrics(metrics)
        log.info("final: mAP %.4f  rank-1 %.4f  mINP %.4f", metrics["mAP"], metrics["rank1"], metrics["mINP"])
        return metrics

    def _run_epoch(self, epochs: int) -> None:
        """Train the next epoch; evaluate it (``train.eval_every``), log it, then checkpoint it when due."""
        stats = self.train_one_epoch(self.epoch + 1)
        self.scheduler.step()
        self.epoch += 1
        eval_every = self.run.train.eval_every
        if eval_every and self.epoch % eval_every == 0 and self.epoch < epochs:
            stats["eval"] = {k: v for k, v in self.evaluate().items() if k != "cmc"}
        if self.is_main:  # the line first: a resume drops it if its checkpoint never came
            self.folder.append_log(stats)
        if self.epoch % max(self.run.train.checkpoint_every, 1) == 0 or self.epoch == epochs:
            if self.is_main:
                self.save_checkpoint()
            self.saved_epoch = self.epoch
        losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in stats.items() if k.startswith("loss_"))
        log.info("epoch %d/%d  %s  %.1f img/s", self.epoch, epochs, losses, stats["images_per_s"])

    def _final_evaluation(self) -> dict[str, Any]:
        """Evaluate the trained model; on failure the checkpoint is kept and the error says how to finish."""
        finish = self.folder.how_to_finish(self.epoch)
        try:
            return {"epoch": self.epoch, **self.evaluate()}
        except KeyboardInterrupt as exc:
            raise TrainingInterrupted(f"interrupted during the final evaluation; {finish}", resumable=True) from exc
        except Exception as exc:
            raise EvaluationFailed(
                f"training finished but the final evaluation failed: {error_line(exc)}; {finish}"
            ) from exc


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
        with hold(output_dir, "train"):  # a second command on the folder is refused, naming this one
            metrics = Trainer.from_config(cfg, output_dir, device).fit(resume=resume, overwrite=overwrite)
    except BaseException:
        distributed.shutdown_distributed(wait=False)  # torchrun stops the other processes
        raise
    distributed.shutdown_distributed()
    return metrics
