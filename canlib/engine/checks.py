"""What a run checks before its first write (besides its output folder, see
:mod:`canlib.engine.run_folder`): that the input is high enough for the model, and that every
image decodes, so that neither problem stops a run hours in; and, while it trains, that its loss
has not diverged (:class:`LossGuard`)."""

from __future__ import annotations

import logging
import math
import time

from canlib.config import ConfigError
from canlib.data.base import ImageReadError, ReIDDataset
from canlib.model import CAN

log = logging.getLogger(__name__)


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


def verify_images(dataset: ReIDDataset, rank: int = 0, world_size: int = 1) -> None:
    """Decode every image once (process ``rank``'s share of them), so a corrupt file stops the run now."""
    start = time.perf_counter()
    try:
        count = dataset.verify_images(part=(rank, world_size))
    except ImageReadError as exc:
        raise ImageReadError(
            f"{exc}. Found before training; replace or remove the file (data.verify_images=false skips this check)"
        ) from None
    log.info("checked that %d images decode (%.1f s)", count, time.perf_counter() - start)


#: A run stops when its loss grows past this many times its first step's (or past this, if that was below 1).
DIVERGENCE_FACTOR = 1e4


class LossGuard:
    """Says when a step's loss means the run has diverged: not finite, or grown past
    :data:`DIVERGENCE_FACTOR` times the run's first step (a finite divergence: ``optim.lr=1e10``
    trains to a loss of 1e21 without ever reaching NaN)."""

    def __init__(self, factor: float = DIVERGENCE_FACTOR) -> None:
        self.factor = factor
        self.first: float | None = None

    def problem(self, loss: float, epoch: int, step: int) -> str | None:
        """What is wrong with ``loss`` at (``epoch``, ``step``), or None."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss}) at epoch {epoch}, step {step}"
        if self.first is None:
            self.first = loss
        limit = self.factor * max(self.first, 1.0)
        if loss > limit:
            return (
                f"the loss diverged: {loss:.3g} at epoch {epoch}, step {step}, more than {self.factor:g} times "
                f"the first step's ({self.first:.3g})"
            )
        return None
