"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), written from the paper's definitions.

Optional and off by default: the CAN paper reports no re-ranked numbers. All Q + G
images (queries included, as unlabeled context) form one set; with ``d`` the original
distance over that set, in the paper's notation:

* N(p, k): the k nearest neighbours of p (p itself, at distance 0, is the first; ties by index);
* R(p, k) = {g in N(p, k) : p in N(g, k)} (k-reciprocal neighbours);
* R*(p, k) = R(p, k) united with R(q, k/2) for every q in R(p, k) such that
  |R(p, k) & R(q, k/2)| >= 2/3 |R(q, k/2)|;
* V_p[g] = exp(-d(p, g)) if g in R*(p, k1), else 0 (Gaussian-kernel encoding);
* local query expansion: V_p <- mean of V_g over g in N(p, k2);
* Jaccard distance d_J(p, g) = 1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j]);
* final distance d* = (1 - lambda) d_J + lambda d.

Memory and time grow as (Q + G)^2: fine for CUHK03 or Market, not for MSMT17.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from canlib.metrics.distance import ArrayLike, to_numpy

EXPANSION_OVERLAP = 2.0 / 3.0
"""Zhong et al.'s condition for adding R(q, k/2) to R*(p, k)."""


class RerankOptions(TypedDict, total=False):
    """The settings of :func:`k_reciprocal_rerank` (any may be left out: its default)."""

    k1: int
    k2: int
    lambda_value: float


def _nearest(dist: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N, N) mask of N(p, k), row p: its k nearest items (stable order)."""
    n = dist.shape[0]
    k = min(k, n)
    top = np.argsort(dist, axis=1, kind="stable")[:, :k]
    mask = np.zeros((n, n), dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def _reciprocal(dist: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N, N) mask of R(p, k)."""
    near = _nearest(dist, k)
    return near & near.T


def k_reciprocal_rerank(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked (Q, G) distances; k1=20, k2=6, lambda=0.3 are Zhong et al.'s Market setting.

    ``lambda_value=1`` returns ``q_g_dist`` unchanged. Returns float64 NumPy.
    """
    qg, qq, gg = (to_numpy(x).astype(np.float64) for x in (q_g_dist, q_q_dist, g_g_dist))
    nq = qg.shape[0]
    if qq.shape != (nq, nq) or gg.shape != (qg.shape[1], qg.shape[1]):
        raise ValueError("expected (Q, G), (Q, Q) and (G, G) distance matrices")
    dist = np.block([[qq, qg], [qg.T, gg]])
    n = dist.shape[0]

    reciprocal = _reciprocal(dist, k1)
    half = _reciprocal(dist, round(k1 / 2))
    # overlap[p, q] = |R(p, k1) & R(q, k1/2)|
    overlap = reciprocal.astype(np.float64) @ half.T.astype(np.float64)
    expand = reciprocal & (overlap >= EXPANSION_OVERLAP * half.sum(1)[None, :])
    r_star = reciprocal | ((expand.astype(np.float64) @ half.astype(np.float64)) > 0)

    v = np.where(r_star, np.exp(-dist), 0.0)
    if k2 > 1:
        v = (_nearest(dist, k2).astype(np.float64) @ v) / min(k2, n)

    vq, vg = v[:nq], v[nq:]
    jaccard = np.empty_like(qg)
    for i in range(nq):
        minimum = np.minimum(vq[i][None, :], vg).sum(1)
        maximum = np.maximum(vq[i][None, :], vg).sum(1)
        jaccard[i] = 1.0 - minimum / np.maximum(maximum, np.finfo(np.float64).tiny)
    return (1.0 - lambda_value) * jaccard + lambda_value * qg
