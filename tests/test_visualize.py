"""Activation maps and ranked lists (canlib.book.visualize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canlib.book.visualize import (
    activation_map,
    activation_maps,
    highlight_regions,
    overlay,
    plot_ranked_lists,
    ranked_lists,
    to_image,
)
from canlib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from canlib.model import CAN

SLIM = {"backbone": "timm:resnet18", "backbone_kwargs": {"channels": (16, 32, 64, 128)}, "embed_dim": 32}


def test_activation_map_is_mean_square_normalised():
    fmap = torch.zeros(1, 2, 3, 2)
    fmap[0, 0, 1, 1] = 2.0  # mean of squares: 2 at (1, 1), 0 elsewhere
    fmap[0, 1, 0, 0] = 1.0  # 0.5 at (0, 0)
    amap = activation_map(fmap)
    assert amap.shape == (1, 3, 2)
    assert amap[0, 1, 1] == 1.0 and amap[0, 0, 0] == pytest.approx(0.25) and amap.min() == 0.0


def test_activation_map_upsamples_and_handles_constant_maps():
    amap = activation_map(torch.ones(2, 4, 3, 2), size=(12, 8))
    assert amap.shape == (2, 12, 8) and torch.all(amap == 0)
    with pytest.raises(ValueError, match="feature maps"):
        activation_map(torch.ones(4, 3, 2))


def test_activation_maps_per_branch_and_combined():
    torch.manual_seed(0)
    model = CAN(5, parts=(1, 3), **SLIM).train()
    maps = activation_maps(model, torch.randn(2, 3, 96, 32))
    assert set(maps) == {"part1", "part3", "all"}
    for amap in maps.values():
        assert amap.shape == (2, 96, 32) and float(amap.min()) >= 0.0 and float(amap.max()) == pytest.approx(1.0)
    assert model.training  # the model's mode is restored


def test_to_image_inverts_normalisation_and_overlay_blends():
    rgb = torch.rand(3, 4, 2)
    normalised = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = to_image(normalised)
    assert img.shape == (4, 2, 3) and np.allclose(img, rgb.permute(1, 2, 0).numpy(), atol=1e-6)
    blended = overlay(img, np.zeros((4, 2)), alpha=0.0)
    assert np.allclose(blended, img)
    with pytest.raises(ValueError, match="does not match"):
        overlay(img, np.zeros((3, 2)))


def test_ranked_lists_skip_same_camera_matches_and_agree_with_argsort():
    rng = np.random.default_rng(0)
    dist = rng.random((3, 12))
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 0, 1])
    g_pids = np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    g_cams = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1])
    idx, match = ranked_lists(dist, q_pids, q_cams, g_pids, g_cams, topk=5)
    for i in range(3):
        junk = (g_pids == q_pids[i]) & (g_cams == q_cams[i])
        assert not junk[idx[i]].any()
        d = np.where(junk, np.inf, dist[i])
        assert idx[i].tolist() == np.argsort(d, kind="stable")[:5].tolist()
        assert match[i].tolist() == (g_pids[idx[i]] == q_pids[i]).tolist()
    # junk gallery images (pid -1) are never ranked, as in the evaluator
    junk_pids = g_pids.copy()
    junk_pids[np.argmin(dist[0])] = -1
    idx_j, _ = ranked_lists(dist, q_pids, q_cams, junk_pids, g_cams, topk=5)
    assert not (junk_pids[idx_j] == -1).any()
    with pytest.raises(ValueError, match="does not match"):
        ranked_lists(dist[:, :5], q_pids, q_cams, g_pids, g_cams)
    with pytest.raises(ValueError, match="fewer than topk"):
        ranked_lists(dist, q_pids, q_cams, g_pids, g_cams, topk=12)


def test_plot_ranked_lists_frames_matches():
    import matplotlib

    matplotlib.use("Agg")
    img = np.zeros((8, 4, 3))
    fig = plot_ranked_lists([img], [[img, img]], np.array([[True, False]]), titles=["q"])
    axes = fig.axes
    assert len(axes) == 3 and axes[0].get_title() == "q"
    assert axes[1].spines["top"].get_edgecolor() != axes[2].spines["top"].get_edgecolor()


def test_highlight_regions_counts_pieces_rows_and_area():
    amap = np.zeros((6, 3))
    amap[0, 0] = amap[1, 0] = 1.0  # one piece of two cells
    amap[3, 2] = 0.8  # a second piece
    amap[5, 1] = 0.4  # below the threshold
    stats = highlight_regions(amap, threshold=0.5)
    assert stats == {"components": 2.0, "rows": 0.5, "area": 3 / 18}
    assert highlight_regions(np.ones((4, 2)))["components"] == 1.0
    assert highlight_regions(np.zeros((4, 2))) == {"components": 0.0, "rows": 0.0, "area": 0.0}
    diagonal = np.eye(3)  # diagonal cells are not 4-connected
    assert highlight_regions(diagonal)["components"] == 3.0
    with pytest.raises(ValueError, match="one map"):
        highlight_regions(np.zeros((1, 4, 2)))


def test_activation_maps_at_layer4_resolution():
    torch.manual_seed(0)
    model = CAN(5, parts=(1, 3), **SLIM).eval()
    maps = activation_maps(model, torch.randn(1, 3, 96, 32), upsample=False)
    assert maps["part3"].shape == (1, 6, 2)  # output stride 16 with the stride-1 layer 4
