"""Collaborative attention: adjacent blocks fused by max pooling (Section 3.2.2)."""

from __future__ import annotations

import pytest
import torch

from canlib.attention import FUSIONS, CollaborativeAttention, collaborative_attention


def test_hand_made_blocks() -> None:
    # one image, two channels, four blocks f_L0..f_L3
    blocks = torch.tensor([[1.0, 5.0, 2.0, 0.0], [-1.0, -3.0, 4.0, 4.0]]).view(1, 2, 4, 1)
    expected = torch.tensor([[5.0, 5.0, 2.0], [-1.0, 4.0, 4.0]]).view(1, 2, 3, 1)
    torch.testing.assert_close(collaborative_attention(blocks), expected)


@pytest.mark.parametrize("n", [2, 3, 5, 7, 9])
def test_block_k_is_max_of_blocks_k_and_k_plus_1(n: int) -> None:
    blocks = torch.randn(3, 8, n, 1)
    out = collaborative_attention(blocks)
    assert out.shape == (3, 8, n - 1, 1)
    for k in range(n - 1):
        torch.testing.assert_close(out[:, :, k], torch.maximum(blocks[:, :, k], blocks[:, :, k + 1]))


def test_needs_two_blocks() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        collaborative_attention(torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError):
        collaborative_attention(torch.randn(2, 4, 3))


def test_module_wrapper() -> None:
    module = CollaborativeAttention()
    blocks = torch.randn(2, 4, 5, 1)
    torch.testing.assert_close(module(blocks), collaborative_attention(blocks))
    assert list(module.parameters()) == []


def test_gradient_goes_to_the_larger_block() -> None:
    blocks = torch.tensor([1.0, 3.0, 2.0]).view(1, 1, 3, 1).requires_grad_()
    collaborative_attention(blocks).sum().backward()
    # 3.0 wins both pairs, 1.0 and 2.0 win none
    torch.testing.assert_close(blocks.grad.flatten(), torch.tensor([0.0, 2.0, 0.0]))


def test_mean_fusion_averages_the_same_neighbours() -> None:
    blocks = torch.randn(2, 5, 4, 1)
    fused = collaborative_attention(blocks, "mean")
    assert fused.shape == collaborative_attention(blocks).shape == (2, 5, 3, 1)
    assert torch.allclose(fused, (blocks[:, :, :-1] + blocks[:, :, 1:]) / 2)
    assert CollaborativeAttention("mean")(blocks).equal(fused) and FUSIONS == ("max", "mean")


def test_unknown_fusion_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        collaborative_attention(torch.randn(1, 2, 3, 1), "sum")
    with pytest.raises(ValueError, match="unknown fusion"):
        CollaborativeAttention("sum")
