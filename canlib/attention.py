"""Collaborative attention (Section 3.2.2, Figure 3).

A part branch cuts its layer-4 map into ``n`` blocks ``f_L0 ... f_L(n-1)`` of size
1x1. Collaborative attention concatenates each pair of neighbours
``[f_Lk, f_L(k+1)]`` into a 2x1 map and max-pools it back to 1x1, giving
``n - 1`` fused part features ``f_LPk``. Block ``k`` of the output is therefore
the elementwise maximum of input blocks ``k`` and ``k + 1``, which is one
``max_pool2d`` with kernel ``(2, 1)`` and stride 1 over the stacked blocks.

``fusion="mean"`` averages the two neighbours instead of taking their maximum: the same
slots, the same neighbours and the same descriptor size, with a fixed linear combination in
place of the per-channel selection. It is not the paper's CA but its control at equal
capacity: without CA a branch of ``n`` stripes has ``n`` local features, with CA ``n - 1``,
so "CA helps" against Table 2 mixes the max with having fewer, fused slots.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FUSIONS", "CollaborativeAttention", "collaborative_attention"]

#: How two neighbouring blocks are fused: ``max`` (Section 3.2.2) or ``mean`` (the equal-capacity control).
FUSIONS = ("max", "mean")


def collaborative_attention(blocks: Tensor, fusion: str = "max") -> Tensor:
    """Fuse adjacent part blocks by max pooling (Section 3.2.2).

    Args:
        blocks: ``(B, C, n, 1)``, the ``n`` part blocks of one branch stacked along
            the height (the output of :class:`canlib.pooling.ConcatPool`).
        fusion: ``"max"`` (the paper) or ``"mean"`` (:data:`FUSIONS`).

    Returns:
        ``(B, C, n - 1, 1)`` where output block ``k`` is
        ``max(blocks[:, :, k], blocks[:, :, k + 1])`` elementwise (their mean for ``"mean"``).

    Raises:
        ValueError: if ``blocks`` is not 4-D, has fewer than two blocks, or ``fusion`` is unknown.
    """
    if blocks.dim() != 4:
        raise ValueError(f"collaborative_attention expects (B, C, n, 1) blocks, got shape {tuple(blocks.shape)}")
    n = blocks.shape[2]
    if n < 2:
        raise ValueError(f"collaborative attention fuses pairs of adjacent blocks and needs n >= 2 blocks, got n={n}")
    if fusion == "max":
        return F.max_pool2d(blocks, kernel_size=(2, 1), stride=(1, 1))
    if fusion == "mean":
        return F.avg_pool2d(blocks, kernel_size=(2, 1), stride=(1, 1))
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")


class CollaborativeAttention(nn.Module):
    """Module wrapper around :func:`collaborative_attention`; it has no parameters."""

    def __init__(self, fusion: str = "max") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
        self.fusion = fusion

    def forward(self, blocks: Tensor) -> Tensor:
        """``(B, C, n, 1) -> (B, C, n - 1, 1)``."""
        return collaborative_attention(blocks, self.fusion)

    def extra_repr(self) -> str:
        return f"fusion={self.fusion!r}"
