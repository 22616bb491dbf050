"""Equation (1) and the concatenated max/average pooling of Section 3.2.2.

The paper derives the pooling window of its "Adaptive Pooling Layer" from the
input size ``IS`` and the wanted output size ``OS`` (equation (1))::

    padding     = 0
    stride      = floor(IS / OS)
    kernel_size = IS - (OS - 1) * stride

This is *not* what :func:`torch.nn.functional.adaptive_max_pool2d` does. PyTorch
uses the windows ``[floor(i * IS / OS), ceil((i + 1) * IS / OS))``. The two agree
only when ``IS mod OS`` is 0 or 1 (every window then has the same length under both
rules); in particular they differ for most ``OS`` that do not divide ``IS``. For the 24-row map of a 384x128 input,
equation (1) gives overlapping windows for ``OS`` = 5 (kernel 8, stride 4),
7 (kernel 6, stride 3) and 9 (kernel 8, stride 2). :class:`ConcatPool` offers
both rules, and the paper's is the default.

The max- and average-pooled maps are concatenated along the channels, **max
first, then average** (the order of Figure 3's "Adaptive Concatenation Pooling"),
so a 2048-channel map becomes 4096 channels (Table 1). ``ops`` keeps one of the two instead
(``"avg"``: the global average pooling of the strong baseline, Luo et al. 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "POOLING_MODES",
    "POOL_OPS",
    "ConcatPool",
    "adaptive_windows",
    "paper_pool_params",
    "paper_windows",
    "pool_channels",
]

#: The pooling rules :class:`ConcatPool` understands.
POOLING_MODES = ("paper", "adaptive")

#: What :class:`ConcatPool` keeps of a window: max and average concatenated (the paper), or one of them.
POOL_OPS = ("max+avg", "avg", "max")


def pool_channels(channels: int, ops: str = "max+avg") -> int:
    """The channels :class:`ConcatPool` with ``ops`` makes of a ``channels``-channel map."""
    if ops not in POOL_OPS:
        raise ValueError(f"unknown pool ops {ops!r}; choose one of {POOL_OPS}")
    return 2 * channels if ops == "max+avg" else channels


def _check_sizes(in_size: int, out_size: int) -> None:
    """Raise a ``ValueError`` unless ``1 <= out_size <= in_size``."""
    if out_size < 1 or in_size < 1:
        raise ValueError(f"pooling sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if in_size < out_size:
        raise ValueError(
            f"feature map too small: a map with {in_size} rows cannot be cut into {out_size} parts "
            f"(equation (1) needs IS >= OS, otherwise stride = floor({in_size}/{out_size}) = 0); "
            "use a taller input image or fewer parts"
        )


def paper_pool_params(in_size: int, out_size: int) -> tuple[int, int, int]:
    """Pooling window from equation (1) of the paper.

    Args:
        in_size: ``IS``, the length of the input along the pooled axis.
        out_size: ``OS``, the wanted number of output cells.

    Returns:
        ``(kernel, stride, padding)`` with ``padding = 0``,
        ``stride = floor(IS / OS)`` and ``kernel = IS - (OS - 1) * stride``.

    Raises:
        ValueError: if ``in_size < out_size`` or either is smaller than 1.
    """
    _check_sizes(in_size, out_size)
    stride = in_size // out_size
    kernel = in_size - (out_size - 1) * stride
    return kernel, stride, 0


def paper_windows(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` windows implied by equation (1)."""
    kernel, stride, _ = paper_pool_params(in_size, out_size)
    return [(i * stride, i * stride + kernel) for i in range(out_size)]


def adaptive_windows(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` windows of PyTorch's adaptive pooling.

    ``start = floor(i * IS / OS)`` and ``end = ceil((i + 1) * IS / OS)``, the rule
    of ``torch.nn.AdaptiveMaxPool2d``/``AdaptiveAvgPool2d``.
    """
    _check_sizes(in_size, out_size)
    return [((i * in_size) // out_size, math.ceil((i + 1) * in_size / out_size)) for i in range(out_size)]


class ConcatPool(nn.Module):
    """Max pooling and average pooling, concatenated (Section 3.2.2, Table 1).

    Maps ``(B, C, H, W)`` to ``(B, 2C, out_size, 1)``: the rows are cut into
    ``out_size`` horizontal stripes and the whole width is pooled. Channels
    ``[0, C)`` hold the max-pooled stripes, channels ``[C, 2C)`` the average.
    With ``ops="avg"`` or ``"max"`` only that half is computed: ``(B, C, out_size, 1)``.

    Args:
        out_size: number of horizontal stripes (``OS``); 1 gives the global block G.
        mode: ``"paper"`` (default) uses equation (1) along the height with the
            kernel spanning the full width; ``"adaptive"`` uses PyTorch's adaptive
            pooling to ``(out_size, 1)``.
        ops: ``"max+avg"`` (default, the paper's), ``"avg"`` or ``"max"`` (:data:`POOL_OPS`).

    The windows are computed from the actual input height at every call, so any
    input resolution works as long as ``H >= out_size``.
    """

    def __init__(self, out_size: int, mode: str = "paper", ops: str = "max+avg") -> None:
        super().__init__()
        if int(out_size) != out_size or out_size < 1:
            raise ValueError(f"out_size must be a positive integer, got {out_size!r}")
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {mode!r}; choose one of {POOLING_MODES}")
        pool_channels(1, ops)  # checks ops
        self.out_size = int(out_size)
        self.mode = mode
        self.ops = ops

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` of shape ``(B, C, H, W)`` to ``(B, 2C, out_size, 1)`` (``(B, C, ...)`` for one op)."""
        if x.dim() != 4:
            raise ValueError(f"ConcatPool expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        pools: list[Tensor] = []
        if self.mode == "paper":
            kernel, stride, padding = paper_pool_params(height, self.out_size)
            size, step = (kernel, width), (stride, width)
            if self.ops != "avg":
                pools.append(F.max_pool2d(x, size, step, padding))
            if self.ops != "max":
                pools.append(F.avg_pool2d(x, size, step, padding))
        else:
            _check_sizes(height, self.out_size)
            if self.ops != "avg":
                pools.append(F.adaptive_max_pool2d(x, (self.out_size, 1)))
            if self.ops != "max":
                pools.append(F.adaptive_avg_pool2d(x, (self.out_size, 1)))
        return torch.cat(pools, dim=1) if len(pools) > 1 else pools[0]

    def extra_repr(self) -> str:
        ops = f", ops={self.ops!r}" if self.ops != "max+avg" else ""
        return f"out_size={self.out_size}, mode={self.mode!r}{ops}"
