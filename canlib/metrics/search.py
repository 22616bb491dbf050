"""Exact nearest-neighbour search by cosine distance, and the protocol's marks on a ranked list.

* :func:`exact_topk` -- each query's ``k`` nearest gallery descriptors, exactly: the gallery is
  scanned in chunks (one ``(queries, chunk)`` product and ``torch.topk`` each), and every chunk's
  best are merged with the best so far, so the ``(Q, G)`` distance matrix is never held.
* :func:`protocol_marks` -- which ranked gallery items are true matches and which are the
  Market-1501 protocol's junk (the query's identity seen by the query's camera, or pid -1).
* :func:`query_average_precision` -- each query's AP under the protocol, from
  :func:`canlib.metrics.evaluate_features` (NaN where the protocol skips the query).

Distances are cosine distances, ``1 - <q, g>`` of L2-normalised descriptors, as
:class:`canlib.metrics.distance.GalleryDistances` computes them for the evaluator.
"""

from __future__ import annotations

import numpy as np
import torch

from canlib.metrics.distance import ArrayLike, as_tensor, to_numpy
from canlib.metrics.ranking import JUNK_PID
from canlib.metrics.reid import evaluate_features

#: Gallery rows compared per matrix product: 32,768 x 256 queries of float32 is a 32 MB block.
GALLERY_CHUNK = 32768
#: Queries per block: bounds the ``(queries, chunk)`` product.
QUERY_CHUNK = 256


def _merge(
    best_d: torch.Tensor, best_i: torch.Tensor, d: torch.Tensor, i: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest of two candidate sets, ordered by distance, then by gallery index."""
    dist, idx = torch.cat([best_d, d], dim=1), torch.cat([best_i, i], dim=1)
    by_index = torch.argsort(idx, dim=1, stable=True)
    dist, idx = dist.gather(1, by_index), idx.gather(1, by_index)
    by_distance = torch.argsort(dist, dim=1, stable=True)[:, :k]
    return dist.gather(1, by_distance), idx.gather(1, by_distance)


@torch.no_grad()
def exact_topk(
    queries: ArrayLike,
    gallery: ArrayLike,
    k: int,
    gallery_chunk: int = GALLERY_CHUNK,
    query_chunk: int = QUERY_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest gallery items by cosine distance: ``(distances, indices)``, both ``(Q, k)``.

    Exact: every gallery row is compared. The nearest come first; equal distances are ordered by
    gallery index. The descriptors must be L2-normalised already (as :mod:`canlib.engine.embed`
    writes them): normalising a 100,000-row gallery here would copy it at every call. ``k`` larger
    than the gallery returns the whole gallery, ranked.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    q, g = as_tensor(queries).float(), as_tensor(gallery).float()
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be (N, D) of the same D")
    k = min(k, g.shape[0])
    out_d, out_i = [], []
    for s in range(0, q.shape[0], query_chunk):
        block = q[s : s + query_chunk]
        best_d = torch.empty(block.shape[0], 0)
        best_i = torch.empty(block.shape[0], 0, dtype=torch.long)
        for start in range(0, g.shape[0], gallery_chunk):
            dist = torch.mm(block, g[start : start + gallery_chunk].T).neg_().add_(1.0)
            d, i = torch.topk(dist, min(k, dist.shape[1]), dim=1, largest=False, sorted=False)
            best_d, best_i = _merge(best_d, best_i, d, i + start, k)
        out_d.append(best_d)
        out_i.append(best_i)
    return torch.cat(out_d).numpy(), torch.cat(out_i).numpy()


def protocol_marks(q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(match, junk)`` of gallery items ``(g_pids, g_cams)`` for one query, Market-1501's protocol:
    junk is pid -1 or the query's identity seen by the query's camera; a match is the query's
    identity seen by another camera (a junk query has no match)."""
    g_pids, g_cams = np.asarray(g_pids), np.asarray(g_cams)
    same = g_pids == q_pid
    junk = (g_pids == JUNK_PID) | (same & (g_cams == q_cam))
    match = same & ~junk & (q_pid != JUNK_PID)
    return match, junk


def query_average_precision(
    qf: ArrayLike,
    gf: ArrayLike,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    ap: str = "step",
    chunk_size: int = 256,
) -> np.ndarray:
    """Each query's AP under the Market-1501 protocol (cosine distance); NaN for a query with no
    match in another camera, which the protocol skips. Computed in blocks of ``chunk_size`` queries."""
    q_pids, q_cams = np.asarray(q_pids), np.asarray(q_cams)
    g_pids, g_cams = np.asarray(g_pids), np.asarray(g_cams)
    out = np.full(len(q_pids), np.nan)
    valid = np.array([protocol_marks(p, c, g_pids, g_cams)[0].any() for p, c in zip(q_pids, q_cams, strict=True)])
    rows = np.flatnonzero(valid) if len(q_pids) else np.empty(0, dtype=np.int64)
    if rows.size:
        result = evaluate_features(
            as_tensor(qf)[torch.from_numpy(rows)],
            gf,
            q_pids[rows],
            g_pids,
            q_cams[rows],
            g_cams,
            metric="cosine",
            chunk_size=chunk_size,
            max_rank=1,
            ap=ap,
            return_per_query=True,
        )
        out[rows] = result["ap_per_query"]
    return out


def protocol_topk(
    distmat: ArrayLike,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    topk: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``topk`` gallery indices, nearest first, as the evaluator ranks them, and whether each
    is a true match: the protocol's junk (:func:`protocol_marks`) is not ranked; ties by gallery index."""
    dist = to_numpy(distmat)
    q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    if dist.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distance matrix {dist.shape} does not match {len(q_pids)} queries x {len(g_pids)} gallery")
    indices = np.empty((len(q_pids), topk), dtype=np.int64)
    matches = np.empty((len(q_pids), topk), dtype=bool)
    for i in range(len(q_pids)):
        match, junk = protocol_marks(q_pids[i], q_camids[i], g_pids, g_camids)
        candidates = np.flatnonzero(~junk)
        if len(candidates) < topk:
            raise ValueError(f"query {i} has only {len(candidates)} rankable gallery images, fewer than topk={topk}")
        order = candidates[np.argsort(dist[i, candidates], kind="stable")[:topk]]
        indices[i], matches[i] = order, match[order]
    return indices, matches
