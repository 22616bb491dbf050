"""canlib.book.probe: row support of pooled features, and CA switched off on a live branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from canlib.attention import CollaborativeAttention
from canlib.book.probe import collaborative_attention, feature_row_support
from canlib.model import CANBranch


def branch(parts: int) -> CANBranch:
    return CANBranch(nn.Identity(), parts=parts, collaborative=True).eval()


def test_row_support_of_three_disjoint_stripes_with_and_without_ca():
    b = branch(3)
    torch.manual_seed(0)
    fmap = torch.randn(1, 64, 6, 2)  # many channels: each stripe of a fused pair wins the max in some
    with collaborative_attention(b, enabled=False):
        without = feature_row_support(b, fmap)
    with_ca = feature_row_support(b, fmap)
    rows = np.arange(6)
    assert without.shape == (4, 6) and without[0].all()  # G sees every row
    for k in range(3):  # stripe k: rows 2k, 2k + 1
        assert np.array_equal(without[1 + k], rows // 2 == k)
    assert with_ca.shape == (3, 6)
    for k in range(2):  # fused feature k: stripes k and k + 1
        assert np.array_equal(with_ca[1 + k], (rows // 2 == k) | (rows // 2 == k + 1))


def test_collaborative_attention_restores_the_branch_even_after_an_error():
    b = branch(4)
    original = b.attention
    with pytest.raises(RuntimeError), collaborative_attention(b, enabled=False):
        assert isinstance(b.attention, nn.Identity)
        raise RuntimeError("inside")
    assert b.attention is original and isinstance(b.attention, CollaborativeAttention)
    with pytest.raises(ValueError, match="no stripes"), collaborative_attention(branch(1), enabled=False):
        pass
