"""Re-ID evaluation: distances, CMC / mAP / mINP and optional re-ranking (Section 4.1.4).

* :mod:`canlib.metrics.distance` -- query-gallery distances (cosine by default, as the paper)
* :mod:`canlib.metrics.reid`     -- the Market-1501 and classic CUHK03 protocols
* :mod:`canlib.metrics.ranking`  -- ranks of the true matches by counting, not sorting
* :mod:`canlib.metrics.rerank`   -- k-reciprocal re-ranking (optional; the paper does not use it)
"""

from canlib.metrics.distance import METRICS, pairwise_distance
from canlib.metrics.ranking import JUNK_PID
from canlib.metrics.reid import AP_VARIANTS, PROTOCOLS, evaluate, evaluate_features
from canlib.metrics.rerank import k_reciprocal_rerank

__all__ = [
    "AP_VARIANTS",
    "JUNK_PID",
    "METRICS",
    "PROTOCOLS",
    "evaluate",
    "evaluate_features",
    "k_reciprocal_rerank",
    "pairwise_distance",
]
