"""Query-gallery distances (Section 4.5: cosine distance at test time)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor

METRICS = ("cosine", "euclidean", "sqeuclidean")
NORMALIZE_EPS = 1e-12
"""Norm floor of the L2 normalisation: an all-zero feature stays zero (cosine distance 1)."""


def as_tensor(x: ArrayLike) -> torch.Tensor:
    """A torch view of a NumPy array (no copy) or the tensor itself."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A NumPy view of a CPU tensor (copied from other devices) or the array itself."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()  # exact widening; NumPy has no bfloat16
        return x.numpy()
    return np.asarray(x)


class GalleryDistances:
    """Distances from blocks of queries to a fixed gallery; gallery-side terms computed once.

    ``cosine``: 1 - <q, g> after L2 normalisation (the paper's test-time metric);
    ``sqeuclidean``: ||q||^2 + ||g||^2 - 2<q, g>, clamped at 0;
    ``euclidean``: its square root. Each block is one (n, G) buffer, updated in place.
    """

    def __init__(self, gf: torch.Tensor, metric: str = "cosine") -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}'; expected one of {METRICS}")
        self.metric = metric
        if metric == "cosine":
            self.g = F.normalize(gf, dim=1, eps=NORMALIZE_EPS)
        else:
            self.g = gf
            self.g_sq = (gf * gf).sum(1)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        q = q.to(self.g.device)
        if self.metric == "cosine":
            d = torch.mm(F.normalize(q, dim=1, eps=NORMALIZE_EPS), self.g.T)
            return d.neg_().add_(1.0)
        d = torch.mm(q, self.g.T).mul_(-2.0)
        d.add_((q * q).sum(1, keepdim=True)).add_(self.g_sq[None, :]).clamp_(min=0.0)
        return d.sqrt_() if self.metric == "euclidean" else d


def pairwise_distance(
    qf: ArrayLike,
    gf: ArrayLike,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> ArrayLike:
    """The full (Q, G) distance matrix between query and gallery features.

    Parameters
    ----------
    qf, gf:
        (Q, D) and (G, D) features, NumPy arrays or tensors (any device).
    metric:
        ``"cosine"`` (default, as the paper), ``"euclidean"`` or ``"sqeuclidean"``.
    chunk_size:
        queries per block (bounds the temporaries); ``None``: all at once.

    Returns a NumPy array for NumPy input, a tensor on ``qf``'s device otherwise.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; expected one of {METRICS}")
    q, g = as_tensor(qf), as_tensor(gf)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D); got {tuple(q.shape)} and {tuple(g.shape)}")
    step = q.shape[0] if not chunk_size else int(chunk_size)
    with torch.no_grad():
        distances = GalleryDistances(g.to(q.device), metric)
        blocks = [distances(q[s : s + step]) for s in range(0, q.shape[0], max(step, 1))]
        out = torch.cat(blocks) if blocks else q.new_zeros((0, g.shape[0]))
    return out if isinstance(qf, torch.Tensor) else out.numpy()
