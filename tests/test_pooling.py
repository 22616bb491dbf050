"""Equation (1), its windows against PyTorch's, and ConcatPool (Section 3.2.2, Table 1)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from canlib.pooling import ConcatPool, adaptive_windows, paper_pool_params, paper_windows

# Hand computation for IS = 24 (the 24-row map of a 384x128 input):
# stride = floor(24 / OS), kernel = 24 - (OS - 1) * stride.
EXPECTED_24 = {
    1: (24, 24),  # 24 // 1 = 24, 24 - 0 * 24 = 24
    2: (12, 12),  # 24 // 2 = 12, 24 - 1 * 12 = 12
    3: (8, 8),  # 24 // 3 = 8, 24 - 2 * 8 = 8
    4: (6, 6),  # 24 // 4 = 6, 24 - 3 * 6 = 6
    5: (8, 4),  # 24 // 5 = 4, 24 - 4 * 4 = 8
    7: (6, 3),  # 24 // 7 = 3, 24 - 6 * 3 = 6
    9: (8, 2),  # 24 // 9 = 2, 24 - 8 * 2 = 8
}


@pytest.mark.parametrize("out_size", sorted(EXPECTED_24))
def test_equation_1_for_a_24_row_map(out_size: int) -> None:
    assert paper_pool_params(24, out_size) == (*EXPECTED_24[out_size], 0)


@pytest.mark.parametrize("out_size", sorted(EXPECTED_24))
def test_paper_windows_cover_the_map(out_size: int) -> None:
    windows = paper_windows(24, out_size)
    kernel, stride = EXPECTED_24[out_size]
    assert len(windows) == out_size
    assert windows[0] == (0, kernel)
    assert windows[-1][1] == 24
    assert all(b[0] - a[0] == stride for a, b in itertools.pairwise(windows))


@pytest.mark.parametrize("out_size", [1, 2, 3, 4])
def test_windows_agree_with_pytorch_when_os_divides_is(out_size: int) -> None:
    assert paper_windows(24, out_size) == adaptive_windows(24, out_size)


@pytest.mark.parametrize("out_size", [5, 7, 9])
def test_windows_differ_from_pytorch_otherwise(out_size: int) -> None:
    paper = paper_windows(24, out_size)
    assert paper != adaptive_windows(24, out_size)
    # equation (1) makes neighbouring windows overlap here
    assert any(b[0] < a[1] for a, b in itertools.pairwise(paper))


def test_explicit_windows_for_five_parts() -> None:
    assert paper_windows(24, 5) == [(0, 8), (4, 12), (8, 16), (12, 20), (16, 24)]
    assert adaptive_windows(24, 5) == [(0, 5), (4, 10), (9, 15), (14, 20), (19, 24)]


@pytest.mark.parametrize("in_size,out_size", [(24, 5), (24, 7), (24, 9), (23, 4), (10, 3), (24, 24)])
def test_adaptive_windows_match_pytorch(in_size: int, out_size: int) -> None:
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size)
    ends = F.adaptive_max_pool1d(ramp, out_size).flatten().long() + 1
    starts = -F.adaptive_max_pool1d(-ramp, out_size).flatten().long()
    assert adaptive_windows(in_size, out_size) == list(zip(starts.tolist(), ends.tolist(), strict=True))


@pytest.mark.parametrize("in_size,out_size", [(3, 5), (8, 9), (0, 1), (5, 0), (-1, 1)])
def test_equation_1_rejects_too_small_maps(in_size: int, out_size: int) -> None:
    with pytest.raises(ValueError):
        paper_pool_params(in_size, out_size)


def test_too_small_message_is_clear() -> None:
    with pytest.raises(ValueError, match=r"too small.*3 rows.*5 parts"):
        paper_pool_params(3, 5)


@pytest.mark.parametrize("mode", ["paper", "adaptive"])
@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_table_1_shapes(mode: str, n: int) -> None:
    fmap = torch.randn(1, 2048, 24, 8)
    assert ConcatPool(n, mode)(fmap).shape == (1, 4096, n, 1)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 9])
def test_paper_mode_is_max_then_mean_over_eq1_windows(n: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 24, 8)
    out = ConcatPool(n, "paper")(x)
    for i, (start, end) in enumerate(paper_windows(24, n)):
        stripe = x[:, :, start:end, :]
        torch.testing.assert_close(out[:, :4, i, 0], stripe.amax(dim=(2, 3)))
        torch.testing.assert_close(out[:, 4:, i, 0], stripe.mean(dim=(2, 3)))


def test_adaptive_mode_is_pytorch_adaptive_pooling() -> None:
    x = torch.randn(2, 3, 24, 8)
    expected = torch.cat([F.adaptive_max_pool2d(x, (7, 1)), F.adaptive_avg_pool2d(x, (7, 1))], dim=1)
    torch.testing.assert_close(ConcatPool(7, "adaptive")(x), expected)


def test_global_block_is_the_same_in_both_modes() -> None:
    x = torch.randn(2, 3, 24, 8)
    torch.testing.assert_close(ConcatPool(1, "paper")(x), ConcatPool(1, "adaptive")(x))


def test_windows_follow_the_actual_input_height() -> None:
    pool = ConcatPool(5)
    for height in (5, 12, 23, 24, 31):
        x = torch.randn(1, 2, height, 3)
        out = pool(x)
        start, end = paper_windows(height, 5)[-1]
        torch.testing.assert_close(out[:, :2, -1, 0], x[:, :, start:end].amax(dim=(2, 3)))


@pytest.mark.parametrize("mode", ["paper", "adaptive"])
def test_concat_pool_rejects_short_maps(mode: str) -> None:
    with pytest.raises(ValueError, match="too small"):
        ConcatPool(7, mode)(torch.randn(1, 2, 4, 3))


def test_channels_last_input() -> None:
    x = torch.randn(2, 6, 24, 8)
    out = ConcatPool(5)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ConcatPool(5)(x))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ConcatPool(0)
    with pytest.raises(ValueError):
        ConcatPool(3, mode="median")
