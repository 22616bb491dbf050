"""Probes of a built CAN: what a pooled feature depends on, and a branch with CA switched off.

Used by the book to check structural claims on the network itself rather than on a drawing:
:func:`feature_row_support` asks autograd which rows of a branch's layer-4 map each pooled
feature depends on, and :func:`collaborative_attention` runs a branch with collaborative
attention on or off *with the same weights*, so the two can be compared directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from canlib.attention import CollaborativeAttention
from canlib.model import CANBranch

__all__ = ["collaborative_attention", "feature_row_support"]


@contextmanager
def collaborative_attention(branch: CANBranch, enabled: bool) -> Iterator[CANBranch]:
    """Temporarily switch a part branch's collaborative attention on or off; restored on exit.

    Only the fusion changes: pooling, layer 4 and every weight stay the same, so ``branch.pool``
    gives ``n`` part features without CA and ``n - 1`` with it. The branch's feature names and
    the model's classifiers are not touched: use the branch's ``pool`` inside the block, not the
    whole model.
    """
    if branch.parts < 2:
        raise ValueError(f"a branch with {branch.parts} part has no stripes to fuse")
    saved = branch.attention
    branch.attention = CollaborativeAttention() if enabled else nn.Identity()
    try:
        yield branch
    finally:
        branch.attention = saved


def feature_row_support(branch: CANBranch, fmap: torch.Tensor) -> np.ndarray:
    """``(features, rows)`` booleans: does pooled feature ``j`` of ``branch`` depend on map row ``r``?

    A row counts when the feature has a non-zero gradient with respect to any value of that row
    of ``fmap`` (the branch's layer-4 map, ``(B, C, H, W)``). Feature 0 is the global block G.
    """
    fmap = fmap.detach().clone().requires_grad_()
    pooled = branch.pool(fmap)
    support = []
    for j in range(pooled.shape[2]):
        (grad,) = torch.autograd.grad(pooled[:, :, j].sum(), fmap, retain_graph=True)
        support.append((grad.abs().sum(dim=(0, 1, 3)) > 0).numpy())
    return np.stack(support)
