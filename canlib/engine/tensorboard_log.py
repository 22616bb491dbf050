"""TensorBoard event files beside ``log.jsonl``: the tool re-ID researchers watch runs in.

FastReID and Torchreid both write TensorBoard's event files; a canlib run writes them too, in
``<run>/tensorboard/``, through PyTorch's own writer (``torch.utils.tensorboard.SummaryWriter``).
The run folder (:class:`canlib.engine.run_folder.RunFolder`) hands this module every line it
appends to ``log.jsonl`` and the final metrics it writes to ``metrics.json``, so the two hold the
same numbers; one scalar per value, its step the epoch:

* ``loss/<term>``: the epoch's mean of each loss term (``ce``, ``triplet``, ``center``, ``total``);
* ``train/lr`` and ``train/images_per_s``: the learning rate and the throughput;
* ``eval/<metric>``: ``mAP``, ``rank1``, ... ``mINP`` of every evaluation (``train.eval_every``) and
  of the final one.

Only rank 0 writes (the run folder's rule), and ``train.tensorboard: false`` writes nothing. The
writer is flushed after every epoch, so an interrupted run's events reach its last epoch, and a
resumed run opens its writer with ``purge_step`` = the checkpoint's epoch + 1: TensorBoard then
drops the steps an interrupted session logged past its checkpoint, as the resume drops their lines
from ``log.jsonl``, instead of showing them twice. View with ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The folder of a run's event files.
TENSORBOARD = "tensorboard"
#: The log line's values written under ``train/``.
TRAIN_KEYS = ("lr", "images_per_s")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eval_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``eval/<metric>`` for every number of an evaluation's metrics (not its epoch, CMC curve or options)."""
    return {f"eval/{k}": float(v) for k, v in metrics.items() if k != "epoch" and _number(v)}


def line_scalars(line: Mapping[str, Any]) -> dict[str, float]:
    """The tags and values of one ``log.jsonl`` line: its loss terms, learning rate, throughput and,
    when the epoch was evaluated, its metrics."""
    out = {f"loss/{k.removeprefix('loss_')}": float(v) for k, v in line.items() if k.startswith("loss_") and _number(v)}
    out |= {f"train/{k}": float(line[k]) for k in TRAIN_KEYS if _number(line.get(k))}
    evaluation = line.get("eval")
    return out | (eval_scalars(evaluation) if isinstance(evaluation, Mapping) else {})


class TensorBoardLog:
    """The event files of one run from ``start_epoch`` on (0: a new run; more: a resumed one)."""

    def __init__(self, run_dir: str | Path, start_epoch: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # a declared dependency: a broken install
            raise RuntimeError(
                f"train.tensorboard: cannot import TensorBoard's writer ({exc}); "
                "install it (pip install tensorboard) or set train.tensorboard=false"
            ) from exc
        self.path = Path(run_dir) / TENSORBOARD
        purge_step = start_epoch + 1 if start_epoch > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.path), purge_step=purge_step)
        log.debug("TensorBoard event files in %s (from epoch %d)", self.path, start_epoch + 1)

    def write_line(self, line: Mapping[str, Any]) -> None:
        """One ``log.jsonl`` line at its epoch; flushed, so the events on disk keep up with the log."""
        self._write(line_scalars(line), int(line["epoch"]))

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """The final evaluation, at the epoch it evaluated."""
        self._write(eval_scalars(metrics), int(metrics["epoch"]))

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
