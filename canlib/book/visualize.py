"""Looking at a trained model: activation maps (the paper's Figure 4) and ranked lists.

* :func:`activation_maps` -- where each branch's layer-4 map is strong, upsampled to the image
* :func:`ranked_lists` -- each query's top-k gallery images under the Market-1501 protocol
* :func:`highlight_regions` -- how many separate pieces a map's highlight has, and how tall it is
* :func:`overlay`, :func:`to_image` -- heat map over an image; a normalised tensor back to RGB
* :func:`plot_ranked_lists` -- a grid of queries and their top-k, matches framed green

The activation map follows the attention-transfer definition (Zagoruyko and Komodakis, 2017),
also used by Torchreid's ``visualize_actmap``: the mean over channels of the squared
activations, normalised per image to ``[0, 1]``. The paper does not say how its Figure 4 was
drawn; this is the usual choice for "feature maps before the last pooling".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from canlib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from canlib.metrics.search import protocol_topk
from canlib.model import CAN


def activation_map(fmap: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Feature maps ``(B, C, h, w)`` -> activation maps ``(B, H, W)`` in ``[0, 1]``.

    Mean of squared activations over channels, bilinearly upsampled to ``size`` (default:
    the map's own size), then min-max normalised per image (a constant map gives zeros).
    """
    if fmap.dim() != 4:
        raise ValueError(f"expected feature maps (B, C, h, w), got shape {tuple(fmap.shape)}")
    amap = fmap.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None:
        amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
    amap = amap.flatten(1)
    low, high = amap.min(dim=1, keepdim=True).values, amap.max(dim=1, keepdim=True).values
    amap = (amap - low) / (high - low).clamp_min(1e-12)
    return amap.view(fmap.shape[0], *(size or fmap.shape[-2:]))


@torch.no_grad()
def activation_maps(model: CAN, images: Tensor, combine: bool = True, upsample: bool = True) -> dict[str, Tensor]:
    """Each branch's activation map, keyed like ``model.feature_maps``.

    With ``upsample`` the maps have the input's resolution, otherwise the layer-4 map's.

    With ``combine``, ``"all"`` is the map of every branch's layer-4 channels together (the
    mean of squares over all of them), i.e. what the whole model attends to.
    """
    was_training = model.training
    model.eval()
    try:
        maps = model.feature_maps(images)
    finally:
        model.train(was_training)
    height, width = images.shape[-2:]
    size = (height, width) if upsample else None
    out = {name: activation_map(fmap, size) for name, fmap in maps.items()}
    if combine:
        out["all"] = activation_map(torch.cat(list(maps.values()), dim=1), size)
    return out


def highlight_regions(amap: np.ndarray | Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Describe the highlight of one activation map ``(h, w)`` in ``[0, 1]``: cells ``>= threshold``.

    Returns ``components`` (4-connected pieces of the highlight), ``rows`` (fraction of the
    map's rows that hold a highlighted cell: its vertical extent) and ``area`` (fraction of
    cells highlighted). The paper's Figure 4 argues in these terms: without CA "the highlight
    ... breaks into disconnected pieces"; with it the maps cover "the whole human bodies".
    """
    a = amap.detach().cpu().numpy() if isinstance(amap, Tensor) else np.asarray(amap)
    if a.ndim != 2:
        raise ValueError(f"expected one map (h, w), got shape {a.shape}")
    mask = a >= threshold
    seen = np.zeros_like(mask)
    components = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        components += 1
        stack = [start]
        seen[start] = True
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < a.shape[0] and 0 <= cc < a.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
    return {"components": float(components), "rows": float(mask.any(axis=1).mean()), "area": float(mask.mean())}


def to_image(tensor: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalised image tensor ``(3, H, W)`` -> RGB array ``(H, W, 3)`` in ``[0, 1]``."""
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {tuple(tensor.shape)}")
    m = torch.as_tensor(mean, dtype=tensor.dtype).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=tensor.dtype).view(3, 1, 1)
    return (tensor.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay(image: np.ndarray, amap: np.ndarray | Tensor, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (``(H, W)`` in ``[0, 1]``) over an RGB image (``(H, W, 3)`` in ``[0, 1]``)."""
    from matplotlib import colormaps

    amap = amap.detach().cpu().numpy() if isinstance(amap, Tensor) else np.asarray(amap)
    if amap.shape != image.shape[:2]:
        raise ValueError(f"map shape {amap.shape} does not match image shape {image.shape[:2]}")
    heat = colormaps[cmap](np.clip(amap, 0, 1))[..., :3]
    return (1 - alpha) * image + alpha * heat


def ranked_lists(
    distmat: np.ndarray | Tensor,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    topk: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``topk`` gallery indices, nearest first, and whether each is a true match.

    Market-1501 protocol, as :mod:`canlib.metrics` applies it: gallery images of the query's
    identity taken by the query's camera, and junk images (pid :data:`~canlib.metrics.JUNK_PID`),
    are not ranked. Ties are broken by gallery index (a stable sort).
    """
    return protocol_topk(distmat, q_pids, q_camids, g_pids, g_camids, topk)


def plot_ranked_lists(
    query_images: Sequence[np.ndarray],
    gallery_images: Sequence[Sequence[np.ndarray]],
    matches: np.ndarray,
    titles: Sequence[str] | None = None,
    distances: np.ndarray | None = None,
    figsize_per_image: tuple[float, float] = (0.9, 2.2),
    distance_format: str = "{:.3f}",
) -> Any:
    """A figure with one row per query: the query (framed black) and its ranked gallery images.

    True matches are framed green, false ones red; each gallery image is titled with its rank
    (and its distance, when ``distances`` are given). Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    matches = np.asarray(matches, dtype=bool)
    rows, k = matches.shape
    if len(query_images) != rows or any(len(g) != k for g in gallery_images):
        raise ValueError("need one query image and topk gallery images per row of matches")
    fig, axes = plt.subplots(
        rows, k + 1, figsize=((k + 1) * figsize_per_image[0], rows * figsize_per_image[1]), squeeze=False
    )
    for r in range(rows):
        panels = [(query_images[r], "black", titles[r] if titles is not None else "query")]
        for j in range(k):
            label = f"{j + 1}" if distances is None else f"{j + 1}: " + distance_format.format(distances[r, j])
            panels.append((gallery_images[r][j], "tab:green" if matches[r, j] else "tab:red", label))
        for ax, (img, colour, label) in zip(axes[r], panels, strict=True):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(label, fontsize=7)
    return fig
