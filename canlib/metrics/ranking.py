"""Ranks of the true matches without sorting the gallery (the fast path of the evaluator).

CMC, AP and mINP depend on a query's ranked list only through the ranks of its true
matches. Under the Market-1501 protocol (see :mod:`canlib.metrics.reid`) the 1-based
rank of the j-th true match (0-based, in ranked order) is

    R_j = j + 1 + #{valid negatives n : (d_n, n) < (d_j, g_j)},

where ``(d, index)`` pairs compare lexicographically: ascending distance, ties broken
by gallery order (the lower gallery index ranks first; this is exactly the order a
stable sort gives). So per query it is enough to

1. find the true matches from a pid-sorted gallery index (no full pass),
2. keep only the negatives at a distance <= the farthest true match (one comparison
   pass over the row; for any usable model this removes most of the gallery),
3. place every kept negative among the query's sorted matches with one
   ``np.searchsorted`` over packed integer keys ``(row, distance key, gallery index)``
   -- the key makes equal distances fall back to gallery order exactly, so ties need
   no special case -- and count them per match (``bincount`` + ``cumsum``).

Work is done in blocks of query rows, so memory is bounded by the block. The cost grows
with the number of negatives closer than each query's farthest match: a small fraction
of the matrix for any usable model, approaching one full sort only at chance level.
"""

from __future__ import annotations

import numpy as np

JUNK_PID = -1
"""Gallery pid of junk images (Market-1501): never counted, neither as hit nor as miss."""

_KEY_BITS = 63
"""Bits available in a non-negative int64 packed key."""
_VALUE_BITS = 32
"""Bits of the order-preserving distance key (float32 bit pattern or a dense rank)."""


class GalleryIndex:
    """Gallery pids and cameras, grouped by pid once so a query's matches are found in O(#matches).

    Parameters
    ----------
    g_pids, g_camids:
        1-D integer arrays of length G.
    """

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray) -> None:
        self.pids = np.ascontiguousarray(g_pids, dtype=np.int64)
        self.camids = np.ascontiguousarray(g_camids, dtype=np.int64)
        self.size = int(self.pids.size)
        self.order = np.argsort(self.pids, kind="stable")
        self.sorted_pids = self.pids[self.order]
        self.junk = self.pids == JUNK_PID
        self.has_junk = bool(self.junk.any())
        self.index_bits = max(1, int(self.size - 1).bit_length())
        # rows of one block must fit beside the distance key and the gallery index
        self.max_block_rows = 1 << (_KEY_BITS - _VALUE_BITS - self.index_bits)

    def true_matches(self, q_pids: np.ndarray, q_camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, gallery index) of every true match: same pid, other camera, not junk.

        Rows come out ascending. Same-pid-same-camera gallery items are the protocol's
        removed items; a junk query (pid -1) has no true match.
        """
        lo = np.searchsorted(self.sorted_pids, q_pids, side="left")
        hi = np.searchsorted(self.sorted_pids, q_pids, side="right")
        hi = np.where(q_pids == JUNK_PID, lo, hi)
        count = hi - lo
        rows = np.repeat(np.arange(q_pids.size), count)
        first = np.cumsum(count) - count
        pos = np.arange(rows.size) - np.repeat(first - lo, count)
        cols = self.order[pos]
        keep = self.camids[cols] != q_camids[rows]
        return rows[keep], cols[keep]


def _float_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values (-0.0 and +0.0 get the same key)."""
    bits = (values.astype(np.float32, copy=False) + np.float32(0.0)).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


def _value_keys(match_values: np.ndarray, cand_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint32 keys that order the values exactly as the distances compare.

    float32 (and narrower floats, widened exactly) use their bit pattern; any other
    dtype (float64, integers) is replaced by its dense rank among the block's values.
    """
    if match_values.dtype.kind == "f" and match_values.dtype.itemsize <= 4:
        return _float_keys(match_values), _float_keys(cand_values)
    both = np.concatenate([match_values, cand_values])
    if both.dtype.kind == "f":
        both = both + both.dtype.type(0.0)  # -0.0 == +0.0
    _, inverse = np.unique(both, return_inverse=True)
    keys = inverse.astype(np.uint32).ravel()
    return keys[: match_values.size], keys[match_values.size :]


def match_ranks(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    gallery: GalleryIndex,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the true matches for one block of query rows.

    Parameters
    ----------
    dist:
        (c, G) C-contiguous distances of c queries to the gallery; ``c`` at most
        ``gallery.max_block_rows``.
    q_pids, q_camids:
        (c,) int64 query pids and cameras.
    gallery:
        the :class:`GalleryIndex` of the G gallery items.

    Returns
    -------
    num_matches:
        (c,) number of true matches per query (0: the query is skipped by the protocol).
    ranks:
        (sum(num_matches),) 1-based ranks among the query's valid gallery items (junk and
        same-pid-same-camera items removed), grouped by query in row order and ascending
        within a query.
    """
    c, g = dist.shape
    if c > gallery.max_block_rows:
        raise ValueError(f"block of {c} rows exceeds {gallery.max_block_rows} for a gallery of {g}")
    rows, cols = gallery.true_matches(q_pids, q_camids)
    num_matches = np.bincount(rows, minlength=c)
    if rows.size == 0:
        return num_matches, np.zeros(0, dtype=np.int64)
    match_values = dist[rows, cols]
    if np.isnan(match_values).any():
        raise ValueError("the distance matrix holds NaN at a true-match entry; ranks are undefined")
    starts = np.cumsum(num_matches) - num_matches
    cand_rows, cand_cols, cand_values = _negatives_within_reach(
        dist, q_pids, gallery, match_values, num_matches, starts
    )
    negatives_before = _negatives_before(
        (rows, cols, match_values), (cand_rows, cand_cols, cand_values), starts, gallery.index_bits
    )
    within = np.arange(rows.size) - starts[rows]
    return num_matches, within + 1 + negatives_before


def _negatives_within_reach(
    dist: np.ndarray,
    q_pids: np.ndarray,
    gallery: GalleryIndex,
    match_values: np.ndarray,
    num_matches: np.ndarray,
    starts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, gallery index, distance) of every valid negative at a distance <= its query's farthest
    true match: the only negatives that can rank before a match (one comparison pass over the block)."""
    c, g = dist.shape
    has = num_matches > 0
    threshold_dtype = dist.dtype if dist.dtype.kind == "f" else np.float64
    threshold = np.full(c, np.nan, dtype=threshold_dtype)  # NaN compares False: no candidate
    threshold[has] = np.maximum.reduceat(match_values, starts[has])
    within_reach = dist <= threshold[:, None]
    flat = np.flatnonzero(within_reach)
    cand_rows = np.repeat(np.arange(c), np.count_nonzero(within_reach, axis=1))  # cheaper than flat // g
    cand_cols = flat - cand_rows * g
    negative = gallery.pids[cand_cols] != q_pids[cand_rows]  # drops matches and removed items
    if gallery.has_junk:
        negative &= ~gallery.junk[cand_cols]
    return cand_rows[negative], cand_cols[negative], dist.reshape(-1)[flat[negative]]


def _negatives_before(
    matches: tuple[np.ndarray, np.ndarray, np.ndarray],
    candidates: tuple[np.ndarray, np.ndarray, np.ndarray],
    starts: np.ndarray,
    index_bits: int,
) -> np.ndarray:
    """For every true match (row, gallery index, distance), the number of candidate negatives that
    rank before it: one ``searchsorted`` of packed keys ``(row, distance key, gallery index)``."""
    rows, cols, match_values = matches
    cand_rows, cand_cols, cand_values = candidates
    c = starts.size
    # packed keys (row, distance key, gallery index): lexicographic = the ranking order
    match_keys, cand_keys = _value_keys(match_values, cand_values)
    shift_value = np.int64(index_bits)
    shift_row = np.int64(index_bits + _VALUE_BITS)

    def pack(r: np.ndarray, k: np.ndarray, col: np.ndarray) -> np.ndarray:
        return (r.astype(np.int64) << shift_row) | (k.astype(np.int64) << shift_value) | col.astype(np.int64)

    sorted_matches = np.sort(pack(rows, match_keys, cols))
    position = np.searchsorted(sorted_matches, pack(cand_rows, cand_keys, cand_cols))
    # query r owns bins [starts[r] + r, starts[r] + r + num_matches[r]]; bin starts[r] + r + j
    # counts the negatives that rank after exactly j of its matches
    counts = np.bincount(position + cand_rows, minlength=rows.size + c)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    return cumulative[np.arange(rows.size) + rows + 1] - cumulative[starts[rows] + rows]
