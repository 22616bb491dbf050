"""CMC, mAP and mINP under the re-ID evaluation protocols (Section 4.1.4).

The Market-1501 protocol (also used for DukeMTMC-reID, CUHK03-NP and MSMT17):

* gallery items with pid -1 are junk: removed, never counted as hit or miss;
* pid 0 distractors are ordinary negatives;
* for every query, gallery items with the same pid AND the same camera are removed;
* a query with no remaining true match is skipped and excluded from every average;
* ranking is ascending distance; TIES ARE BROKEN BY GALLERY ORDER (of two equal
  distances the lower gallery index ranks first -- the order of a stable sort), so the
  numbers are reproducible, unlike the common libraries' unstable sort;
* CMC(k): fraction of valid queries whose first true match has rank <= k;
* AP, ``ap="step"`` (the common PyTorch libraries): (1/G) sum_i i / r_i over the G true
  matches at 1-based ranks r_1 < ... < r_G; ``ap="trapezoid"`` (the official Market-1501
  kit): (1/G) sum_i ((i-1)/(r_i-1) + i/r_i) / 2, the first term taken as 1 when r_i = 1;
* mINP (Ye et al.'s AGW baseline): G / r_G, averaged.

Every number is a fraction in [0, 1]. Ranks come from :func:`canlib.metrics.ranking.match_ranks`,
which counts instead of sorting.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch

from canlib.metrics.distance import ArrayLike, GalleryDistances, as_tensor, pairwise_distance, to_numpy
from canlib.metrics.ranking import JUNK_PID, GalleryIndex, match_ranks
from canlib.metrics.rerank import RerankOptions, k_reciprocal_rerank

log = logging.getLogger(__name__)

AP_VARIANTS = ("step", "trapezoid")
PROTOCOLS = ("market", "cuhk03_classic")
DEFAULT_BLOCK_ROWS = 256
"""Query rows ranked together: keeps the (rows x G) comparison mask cache-sized."""


def _ids(x: ArrayLike, name: str, length: int) -> np.ndarray:
    a = to_numpy(x).astype(np.int64, copy=False).reshape(-1)
    if a.size != length:
        raise ValueError(f"{name} has {a.size} entries, expected {length}")
    return a


class _Accumulator:
    """Per-query AP, INP and first-match rank, collected block by block."""

    def __init__(self, ap: str) -> None:
        if ap not in AP_VARIANTS:
            raise ValueError(f"unknown AP variant '{ap}'; expected one of {AP_VARIANTS}")
        self.ap = ap
        self.ap_q: list[np.ndarray] = []
        self.inp_q: list[np.ndarray] = []
        self.first_q: list[np.ndarray] = []
        self.num_queries = 0

    def add(self, num_matches: np.ndarray, ranks: np.ndarray) -> None:
        """Record one block: ``num_matches`` (c,) and the ranks from :func:`match_ranks`."""
        c = num_matches.size
        starts = np.cumsum(num_matches) - num_matches
        owner = np.repeat(np.arange(c), num_matches)
        i = (np.arange(ranks.size) - starts[owner] + 1).astype(np.float64)  # 1-based match index
        r = ranks.astype(np.float64)
        precision_at = i / r
        if self.ap == "step":
            terms = precision_at
        else:
            precision_before = np.where(r > 1, (i - 1) / np.maximum(r - 1, 1), 1.0)
            terms = 0.5 * (precision_before + precision_at)
        ap = np.full(c, np.nan)
        inp = np.full(c, np.nan)
        first = np.full(c, -1, dtype=np.int64)
        valid = num_matches > 0
        ap[valid] = np.bincount(owner, weights=terms, minlength=c)[valid] / num_matches[valid]
        inp[valid] = num_matches[valid] / r[starts[valid] + num_matches[valid] - 1]
        first[valid] = ranks[starts[valid]]
        self.ap_q.append(ap)
        self.inp_q.append(inp)
        self.first_q.append(first)
        self.num_queries += c

    def result(self, max_rank: int, return_per_query: bool = False) -> dict[str, Any]:
        ap, inp, first = (np.concatenate(x) for x in (self.ap_q, self.inp_q, self.first_q))
        valid = first > 0
        n = int(valid.sum())
        if n == 0:
            raise ValueError(
                "no query has a true match left in the gallery (after removing junk pid -1 and "
                "same-pid-same-camera items); check the pids and camera ids of query and gallery"
            )
        hist = np.bincount(np.minimum(first[valid], max_rank + 1) - 1, minlength=max_rank + 1)
        out: dict[str, Any] = {
            "mAP": float(ap[valid].mean()),
            "mINP": float(inp[valid].mean()),
            "cmc": np.cumsum(hist[:max_rank]) / n,
            "num_valid_queries": n,
            "num_queries": self.num_queries,
            "ap": self.ap,
        }
        if return_per_query:
            out.update(ap_per_query=ap, inp_per_query=inp, first_match_rank=first)
        return out


class _Labels(NamedTuple):
    """Query and gallery pids and cameras as flat int64 arrays."""

    qp: np.ndarray
    gp: np.ndarray
    qc: np.ndarray
    gc: np.ndarray


def _labels(
    nq: int, ng: int, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike
) -> _Labels:
    """The ids of ``nq`` queries and ``ng`` gallery items; ``ValueError`` naming an array of another length."""
    qp, gp = _ids(q_pids, "q_pids", nq), _ids(g_pids, "g_pids", ng)
    qc, gc = _ids(q_camids, "q_camids", nq), _ids(g_camids, "g_camids", ng)
    return _Labels(qp, gp, qc, gc)


def _result(acc: _Accumulator, max_rank: int, return_per_query: bool, protocol: str) -> dict[str, Any]:
    out = acc.result(max_rank, return_per_query)
    out["protocol"] = protocol
    return out


def _check_common(max_rank: int, protocol: str) -> None:
    if max_rank < 1:
        raise ValueError("max_rank must be at least 1")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; expected one of {PROTOCOLS}")


def _rank_blocks(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    gallery: GalleryIndex,
    acc: _Accumulator,
    block_rows: int,
) -> None:
    step = max(1, min(block_rows, gallery.max_block_rows))
    for s in range(0, dist.shape[0], step):
        block = np.ascontiguousarray(dist[s : s + step])
        acc.add(*match_ranks(block, q_pids[s : s + step], q_camids[s : s + step], gallery))


def evaluate(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    ap: str = "step",
    protocol: str = "market",
    repeats: int = 10,
    seed: int = 0,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    return_per_query: bool = False,
) -> dict[str, Any]:
    """CMC, mAP and mINP of a (Q, G) distance matrix (NumPy or torch).

    Ranking is ascending distance with ties broken by gallery order (stable sort).

    Returns a dict of fractions: ``mAP``, ``mINP``, ``cmc`` (array of length ``max_rank``,
    rank-1 at index 0), ``num_valid_queries``, ``num_queries``, ``ap`` (variant) and
    ``protocol``; with ``return_per_query`` also ``ap_per_query``, ``inp_per_query`` (NaN for
    skipped queries) and ``first_match_rank`` (-1 for skipped queries).

    ``protocol="market"`` (default) is the protocol of the module docstring.
    ``protocol="cuhk03_classic"`` replaces the CMC by the classic CUHK03 single-gallery-shot
    CMC -- after the same removals, one random gallery image per gallery pid (distractors
    form one group), ``repeats`` draws from ``np.random.default_rng(seed)``, averaged --
    while AP and mINP still use the full list. Raises ``ValueError`` if no query is valid.
    """
    _check_common(max_rank, protocol)
    dist = to_numpy(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be (Q, G); got shape {dist.shape}")
    nq, ng = dist.shape
    ids = _labels(nq, ng, q_pids, g_pids, q_camids, g_camids)
    gallery = GalleryIndex(ids.gp, ids.gc)
    acc = _Accumulator(ap)
    _rank_blocks(dist, ids.qp, ids.qc, gallery, acc, block_rows)
    out = _result(acc, max_rank, return_per_query, protocol)
    if protocol == "cuhk03_classic":
        out["cmc"] = _single_shot_cmc(dist, ids.qp, ids.gp, ids.qc, ids.gc, max_rank, repeats, seed)
    return out


def _single_shot_cmc(
    dist: np.ndarray,
    qp: np.ndarray,
    gp: np.ndarray,
    qc: np.ndarray,
    gc: np.ndarray,
    max_rank: int,
    repeats: int,
    seed: int,
) -> np.ndarray:
    """Classic CUHK03 CMC: one random gallery image per pid, ``repeats`` draws, averaged.

    A per-query loop with a stable sort: meant for CUHK03-sized problems only.
    """
    rng = np.random.default_rng(seed)
    hist = np.zeros(max_rank + 1)
    draws = 0
    for i in range(dist.shape[0]):
        keep = (gp != JUNK_PID) & ~((gp == qp[i]) & (gc == qc[i]))
        if qp[i] == JUNK_PID or not np.any(keep & (gp == qp[i])):
            continue
        idx = np.flatnonzero(keep)
        position = np.empty(idx.size, dtype=np.int64)
        position[np.argsort(dist[i, idx], kind="stable")] = np.arange(idx.size)
        pids = gp[idx]
        for _ in range(repeats):
            perm = rng.permutation(idx.size)
            _, first = np.unique(pids[perm], return_index=True)  # one random item per pid
            chosen = perm[first]
            mine = chosen[pids[chosen] == qp[i]][0]
            rank = int(np.count_nonzero(position[chosen] < position[mine])) + 1
            hist[min(rank, max_rank + 1) - 1] += 1
            draws += 1
    if draws == 0:
        raise ValueError("no query has a true match left in the gallery")
    return np.cumsum(hist[:max_rank]) / draws


def evaluate_features(
    qf: ArrayLike,
    gf: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    metric: str = "cosine",
    chunk_size: int = 2048,
    max_rank: int = 50,
    ap: str = "step",
    rerank: bool = False,
    protocol: str = "market",
    block_rows: int = DEFAULT_BLOCK_ROWS,
    return_per_query: bool = False,
    rerank_kwargs: RerankOptions | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` straight from (Q, D) query and (G, D) gallery features.

    The Market protocol runs in blocks of ``chunk_size`` queries -- distances of the block,
    match ranks, discard -- so the (Q, G) matrix is never held (MSMT17's would be 3.8 GB in
    float32); peak memory is about ``chunk_size * G * 5`` bytes. Distances are computed on
    ``qf``'s device and ranked on the CPU.

    ``rerank=True`` applies k-reciprocal re-ranking (:func:`canlib.metrics.rerank.k_reciprocal_rerank`,
    arguments from ``rerank_kwargs``); it needs the full query-query and gallery-gallery
    matrices, so its memory grows as (Q + G)^2. The CAN paper does not re-rank.
    ``protocol="cuhk03_classic"`` also builds the full matrix (CUHK03 is small).
    """
    _check_common(max_rank, protocol)
    q, g = as_tensor(qf), as_tensor(gf)
    if rerank or protocol != "market":
        dist = _full_distances(q, g, metric, chunk_size, rerank, rerank_kwargs)
        out = evaluate(
            dist,
            q_pids,
            g_pids,
            q_camids,
            g_camids,
            max_rank,
            ap,
            protocol,
            block_rows=block_rows,
            return_per_query=return_per_query,
        )
        out["rerank"] = rerank
        return out
    ids = _labels(q.shape[0], g.shape[0], q_pids, g_pids, q_camids, g_camids)
    gallery = GalleryIndex(ids.gp, ids.gc)
    acc = _Accumulator(ap)
    step = max(1, int(chunk_size))
    with torch.no_grad():
        distances = GalleryDistances(g.to(q.device), metric)
        for s in range(0, q.shape[0], step):
            block = distances(q[s : s + step])
            _rank_blocks(to_numpy(block), ids.qp[s : s + step], ids.qc[s : s + step], gallery, acc, block_rows)
            del block
    out = _result(acc, max_rank, return_per_query, protocol)
    out["rerank"] = False
    return out


def _full_distances(
    q: torch.Tensor, g: torch.Tensor, metric: str, chunk_size: int, rerank: bool, rerank_kwargs: RerankOptions | None
) -> ArrayLike:
    """The whole (Q, G) distance matrix, k-reciprocally re-ranked with ``rerank``."""
    dist = pairwise_distance(q, g, metric=metric, chunk_size=chunk_size)
    if not rerank:
        return dist
    log.info("k-reciprocal re-ranking of %d x %d (memory grows as (Q+G)^2)", q.shape[0], g.shape[0])
    return k_reciprocal_rerank(
        dist,
        pairwise_distance(q, q, metric=metric, chunk_size=chunk_size),
        pairwise_distance(g, g.to(q.device), metric=metric, chunk_size=chunk_size),
        **(rerank_kwargs or {}),
    )
