"""Query images against a gallery: a folder or an embeddings file of :mod:`canlib.engine.embed`.

:func:`search` embeds the queries (one image or a folder) with a trained model, embeds the gallery
folder or reads its embeddings file (refused when another model made it: another configuration
hash, unless ``force``), and ranks the gallery exactly for each query
(:func:`canlib.metrics.search.exact_topk`). Where the file names follow the Market-1501 pattern
(:func:`canlib.data.datasets.parse_market_name`) the ranked items are marked as true matches or as
the protocol's junk, and each query's AP is computed over the whole gallery.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from canlib.data.base import IMAGE_EXTENSIONS
from canlib.data.datasets import parse_market_name
from canlib.engine.embed import (
    Embedder,
    Embeddings,
    EmbedError,
    embed_images,
    list_images,
    load_embedder,
    load_embeddings,
)
from canlib.metrics.search import exact_topk, protocol_marks, query_average_precision

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SearchResult:
    """Each query's ``top`` nearest gallery items: ``indices`` into ``gallery`` and cosine ``distances``
    (``(Q, top)``). ``match`` and ``junk`` (``(Q, top)``) mark the items by the protocol where both names
    parse (False elsewhere), ``labelled`` which queries could be judged; ``ap`` is NaN where undefined."""

    query: Embeddings
    gallery: Embeddings
    distances: np.ndarray
    indices: np.ndarray
    match: np.ndarray
    junk: np.ndarray
    labelled: np.ndarray
    ap: np.ndarray


def labels(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pids, camids, parsed)`` from the file names of ``paths`` (Market-1501's pattern; 0 where it fails)."""
    parsed = [parse_market_name(Path(p).name) for p in paths]
    ok = np.array([x is not None for x in parsed], dtype=bool)
    pids = np.array([x[0] if x else 0 for x in parsed], dtype=np.int64)
    cams = np.array([x[1] if x else 0 for x in parsed], dtype=np.int64)
    return pids, cams, ok


def check_same_model(embedder: Embedder, gallery: Embeddings, source: str | os.PathLike[str], force: bool) -> None:
    """Refuse a gallery embedded by another model than ``embedder`` (another configuration hash)."""
    theirs = gallery.meta.get("model", {})
    mine = embedder.info
    if theirs.get("config_hash") is None or mine.config_hash is None:
        same = theirs.get("file_sha256") == mine.file_sha256
    else:
        same = theirs.get("config_hash") == mine.config_hash
    if same:
        return
    message = (
        f"{source} was embedded by another model (configuration {theirs.get('config_hash')}, "
        f"{theirs.get('source')}) than {mine.source} (configuration {mine.config_hash}): its distances would "
        "compare descriptors of two models"
    )
    if not force:
        raise EmbedError(f"{message}; embed the gallery again with this model, or pass --force")
    log.warning("%s; compared anyway (--force)", message)


def _is_embeddings(path: Path) -> bool:
    """A file that is not an image: an embeddings file of ``canlib embed`` (or nothing canlib reads)."""
    return path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS


def _marks(query: Embeddings, gallery: Embeddings, indices: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(match, junk, labelled)`` of the ranked items; a query is judged when its name and every gallery name parse."""
    q_pids, q_cams, q_ok = labels(query.paths)
    g_pids, g_cams, g_ok = labels(gallery.paths)
    labelled = q_ok & bool(g_ok.all())
    match = np.zeros(indices.shape, dtype=bool)
    junk = np.zeros(indices.shape, dtype=bool)
    for i in np.flatnonzero(labelled):
        m, j = protocol_marks(q_pids[i], q_cams[i], g_pids[indices[i]], g_cams[indices[i]])
        match[i], junk[i] = m, j
    return match, junk, labelled


def search(
    model: str | os.PathLike[str],
    query: str | os.PathLike[str],
    gallery: str | os.PathLike[str],
    top: int = 10,
    force: bool = False,
    device: str | None = "auto",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    ap: str = "step",
) -> SearchResult:
    """Rank ``gallery`` (a folder of images or an ``.npz`` of ``canlib embed``) for every image of ``query``.

    Refused before any embedding: ``top`` below 1, a query or gallery folder without images, a query
    file that is not an image; after: a query folder with no readable image, a gallery embedded by
    another model (unless ``force``).
    """
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    gallery = Path(gallery)
    list_images(query)
    stored = load_embeddings(gallery) if _is_embeddings(gallery) else None
    if stored is None:
        list_images(gallery)
    embedder = load_embedder(model, device, force)
    options: dict[str, Any] = {"batch_size": batch_size, "workers": workers, "progress": progress}
    if stored is not None:
        check_same_model(embedder, stored, gallery, force)
    g = stored if stored is not None else embed_images(embedder, gallery, **options)
    q = embed_images(embedder, query, **options)
    if q.descriptors.shape[1] != g.descriptors.shape[1]:
        raise EmbedError(f"queries have {q.descriptors.shape[1]}-d descriptors, the gallery {g.descriptors.shape[1]}-d")
    distances, indices = exact_topk(q.descriptors, g.descriptors, top)
    match, junk, labelled = _marks(q, g, indices)
    aps = np.full(len(q.paths), np.nan)
    if labelled.any():
        q_pids, q_cams, _ = labels(q.paths)
        g_pids, g_cams, _ = labels(g.paths)
        rows = np.flatnonzero(labelled)
        aps[rows] = query_average_precision(
            q.descriptors[rows], g.descriptors, q_pids[rows], g_pids, q_cams[rows], g_cams, ap=ap
        )
    return SearchResult(q, g, distances, indices, match, junk, labelled, aps)


def report_lines(result: SearchResult) -> list[str]:
    """The ranked lists as text: one line per query, then one per ranked item (rank, distance, path, mark)."""
    lines = []
    for i, name in enumerate(result.query.paths):
        ap = result.ap[i]
        lines.append(f"{name}" + (f"  AP {ap:.4f}" if np.isfinite(ap) else ""))
        for r, (j, d) in enumerate(zip(result.indices[i], result.distances[i], strict=True)):
            mark = "match" if result.match[i, r] else "junk" if result.junk[i, r] else ""
            lines.append(f"  {r + 1:>3}  {d:.4f}  {result.gallery.paths[j]}  {mark}".rstrip())
    return lines
