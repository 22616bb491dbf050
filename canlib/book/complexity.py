"""Parameter and FLOP counts for the configurations of Tables 2 and 3.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts a multiply-add as **2 FLOPs** and only counts matrix products and
convolutions (pooling, batch norm, activations and normalisation are not
counted). The count is for one forward pass in eval mode, i.e. up to the test
descriptor: the classifiers are not run at test time, but their parameters are
in ``params``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from canlib.model import CAN
from canlib.paper import PART_PATTERNS

__all__ = ["complexity_table", "count_parameters", "forward_flops", "model_complexity"]

log = logging.getLogger(__name__)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def forward_flops(module: nn.Module, *inputs: Any) -> tuple[int, Any]:
    """FLOPs of one no-grad call ``module(*inputs)`` (multiply-add = 2 FLOPs) and its output.

    Counts what :class:`~torch.utils.flop_counter.FlopCounterMode` counts: matrix products
    and convolutions. The module's train/eval mode is left as it is.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = module(*inputs)
    return int(counter.get_total_flops()), out


def model_complexity(model: nn.Module, input_size: tuple[int, int] = (384, 128), batch_size: int = 1) -> dict[str, Any]:
    """Count parameters and forward FLOPs of ``model`` for ``(batch_size, C, *input_size)`` inputs.

    Returns:
        ``params`` (all), ``params_trainable``, ``flops`` (eval-mode forward,
        multiply-add = 2 FLOPs), ``input_size``, ``batch_size`` and, when the model
        has one, ``descriptor_dim``.
    """
    first: torch.Tensor | None = next(model.parameters(), None)
    if first is None:
        first = torch.empty(0)  # a parameter-free module: run it on the CPU in float32
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_chans = first_conv.in_channels if first_conv is not None else 3
    x = torch.zeros(batch_size, in_chans, *input_size, device=first.device, dtype=first.dtype)
    was_training = model.training
    model.eval()
    try:
        flops, _ = forward_flops(model, x)
    finally:
        model.train(was_training)
    result: dict[str, Any] = {
        "params": count_parameters(model),
        "params_trainable": count_parameters(model, trainable_only=True),
        "flops": flops,
        "input_size": tuple(input_size),
        "batch_size": batch_size,
    }
    descriptor_dim = getattr(model, "descriptor_dim", None)  # a plain int attribute (CAN), not a submodule
    if descriptor_dim is not None:
        result["descriptor_dim"] = int(descriptor_dim)
    return result


def complexity_table(
    patterns: Mapping[str, Sequence[int]] | Iterable[Sequence[int]] = PART_PATTERNS,
    collaborative_options: Sequence[bool] = (False, True),
    backbone: str = "resnet50",
    input_size: tuple[int, int] = (384, 128),
    num_classes: int = 751,
    **model_kwargs: Any,
) -> list[dict[str, Any]]:
    """One row per (pattern, CA on/off): features, descriptor size, params and FLOPs.

    Args:
        patterns: ``{"Part-1,3,5,7": (1, 3, 5, 7), ...}`` or plain part tuples.
        collaborative_options: which of Table 2 (``False``) / Table 3 (``True``) to count.
        backbone: backbone name for :class:`~canlib.model.CAN`.
        input_size: ``(height, width)``.
        num_classes: classifier size (751 = Market-1501); changes ``params`` only.
        **model_kwargs: further :class:`~canlib.model.CAN` arguments.
    """
    if not isinstance(patterns, Mapping):
        patterns = {"Part-" + ",".join(map(str, p)): tuple(p) for p in patterns}
    rows = []
    for name, parts in patterns.items():
        for collaborative in collaborative_options:
            model = CAN(num_classes, parts=parts, collaborative=collaborative, backbone=backbone, **model_kwargs)
            stats = model_complexity(model, input_size=input_size)
            rows.append(
                {
                    "pattern": name,
                    "parts": tuple(parts),
                    "collaborative": bool(collaborative),
                    "num_features": model.num_features,
                    **stats,
                }
            )
            log.info(
                "%s CA=%s: %.1fM params, %.2f GFLOPs", name, collaborative, stats["params"] / 1e6, stats["flops"] / 1e9
            )
            del model
    return rows
