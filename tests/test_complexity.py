"""canlib.book.complexity's counting helpers against hand arithmetic."""

from __future__ import annotations

import torch
from torch import nn

from canlib.book.complexity import count_parameters, forward_flops


def test_forward_flops_counts_a_multiply_add_as_two_and_returns_the_output():
    layer = nn.Linear(4, 3)
    x = torch.ones(2, 4)
    flops, out = forward_flops(layer, x)
    assert flops == 2 * 2 * 4 * 3  # batch 2, 4 inputs, 3 outputs
    assert out.shape == (2, 3) and not out.requires_grad  # run without autograd
    conv = nn.Conv2d(3, 8, kernel_size=1, bias=False)
    assert forward_flops(conv, torch.zeros(1, 3, 5, 7))[0] == 2 * 3 * 8 * 5 * 7
    assert forward_flops(nn.ReLU(), x)[0] == 0  # activations are not counted


def test_count_parameters_all_or_trainable():
    layer = nn.Linear(4, 3)
    assert count_parameters(layer) == 4 * 3 + 3
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 15 and count_parameters(layer, trainable_only=True) == 12
