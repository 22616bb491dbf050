"""Feature extraction and evaluation on a query/gallery split (Section 4.1.4, 4.5)."""

from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from canlib.metrics import evaluate_features

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    flip_tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``loader``; return (descriptors, pids, camids).

    With ``flip_tta`` the descriptor is the mean of the image's and its mirror's (an
    option beyond the paper, off by default).
    """
    model.eval()
    feats, pids, camids = [], [], []
    for images, pid, camid in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            f = model(images).float()
            if flip_tta:
                f = 0.5 * (f + model(torch.flip(images, dims=[3])).float())
        feats.append(f.cpu())
        pids.append(np.asarray(pid))
        camids.append(np.asarray(camid))
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def evaluate_model(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    device: torch.device,
    metric: str = "cosine",
    ap: str = "step",
    max_rank: int = 50,
    flip_tta: bool = False,
    rerank: bool = False,
    chunk_size: int = 2048,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Extract query and gallery descriptors and compute CMC, mAP and mINP.

    Returns a JSON-ready dict: ``mAP``, ``mINP``, ``rank1``, ``rank3``, ``rank5``,
    ``rank10`` (fractions), the full ``cmc`` list, the AP variant and the metric used.
    """
    qf, q_pids, q_camids = extract_features(model, query_loader, device, flip_tta, amp_dtype, channels_last)
    gf, g_pids, g_camids = extract_features(model, gallery_loader, device, flip_tta, amp_dtype, channels_last)
    result = evaluate_features(
        qf, gf, q_pids, g_pids, q_camids, g_camids,
        metric=metric, chunk_size=chunk_size, max_rank=max_rank, ap=ap, rerank=rerank,
    )
    cmc = np.asarray(result["cmc"], dtype=float)
    out: dict[str, Any] = {
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
        **{f"rank{k}": float(cmc[k - 1]) for k in (1, 3, 5, 10) if k <= len(cmc)},
        "cmc": [float(x) for x in cmc],
        "ap_variant": ap,
        "metric": metric,
        "flip_tta": flip_tta,
        "rerank": rerank,
        "num_query": int(len(q_pids)),
        "num_gallery": int(len(g_pids)),
        "num_valid_queries": int(result.get("num_valid_queries", len(q_pids))),
        "descriptor_dim": int(qf.shape[1]),
    }
    return out
