"""Collaborative attention (Section 3.2.2, Figure 3).

A part branch cuts its layer-4 map into ``n`` blocks ``f_L0 ... f_L(n-1)`` of size
1x1. Collaborative attention concatenates each pair of neighbours
``[f_Lk, f_L(k+1)]`` into a 2x1 map and max-pools it back to 1x1, giving
``n - 1`` fused part features ``f_LPk``. Block ``k`` of the output is therefore
the elementwise maximum of input blocks ``k`` and ``k + 1``, which is one
``max_pool2d`` with kernel ``(2, 1)`` and stride 1 over the stacked blocks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CollaborativeAttention", "collaborative_attention"]


def collaborative_attention(blocks: Tensor) -> Tensor:
    """Fuse adjacent part blocks by max pooling (Section 3.2.2).

    Args:
        blocks: ``(B, C, n, 1)``, the ``n`` part blocks of one branch stacked along
            the height (the output of :class:`canlib.pooling.ConcatPool`).

    Returns:
        ``(B, C, n - 1, 1)`` where output block ``k`` is
        ``max(blocks[:, :, k], blocks[:, :, k + 1])`` elementwise.

    Raises:
        ValueError: if ``blocks`` is not 4-D or has fewer than two blocks.
    """
    if blocks.dim() != 4:
        raise ValueError(f"collaborative_attention expects (B, C, n, 1) blocks, got shape {tuple(blocks.shape)}")
    n = blocks.shape[2]
    if n < 2:
        raise ValueError(f"collaborative attention fuses pairs of adjacent blocks and needs n >= 2 blocks, got n={n}")
    return F.max_pool2d(blocks, kernel_size=(2, 1), stride=(1, 1))


class CollaborativeAttention(nn.Module):
    """Module wrapper around :func:`collaborative_attention`; it has no parameters."""

    def forward(self, blocks: Tensor) -> Tensor:
        """``(B, C, n, 1) -> (B, C, n - 1, 1)``."""
        return collaborative_attention(blocks)
