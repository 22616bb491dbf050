"""Ranked lists as a page to look at: one self-contained HTML file, and a PNG of the evaluator's lists.

One row per query: the query, then its gallery images in rank order with the distance under each.
True matches are framed green and other labelled items red; the Market-1501 protocol's junk (the
query's identity seen by the query's camera, or pid -1) is framed grey and dashed. Images are
embedded as small base64 JPEG thumbnails, so the page opens offline from anywhere and fetches
nothing. :func:`search_page` draws a :class:`canlib.engine.search.SearchResult`;
:func:`evaluation_page` and :func:`evaluation_png` draw :class:`canlib.engine.evaluate.RankedLists`
(the PNG with :func:`canlib.book.visualize.plot_ranked_lists`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from canlib.book.visualize import plot_ranked_lists
from canlib.data.base import ImageReadError, read_image
from canlib.engine.evaluate import RankedLists
from canlib.engine.search import SearchResult

log = logging.getLogger(__name__)

#: Thumbnail height in pixels (the width keeps the image's aspect).
THUMB_HEIGHT = 128
#: A grey 64 x 128 box: the thumbnail of an image that can no longer be read.
_MISSING = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="128"><rect width="64" height="128" fill="#ddd"/>'
        b'<text x="32" y="68" font-size="10" text-anchor="middle" fill="#555">missing</text></svg>'
    ).decode()
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
.row { display: flex; align-items: flex-start; gap: 6px; margin: 10px 0; padding-bottom: 8px;
       border-bottom: 1px solid #eee; }
figure { margin: 0; text-align: center; font-size: 11px; width: 76px; }
figure.query { margin-right: 12px; width: 96px; }
figure img { height: 128px; max-width: 72px; border: 3px solid transparent; display: block; margin: auto; }
figure.query img { border-color: #222; }
figure.match img { border-color: #1a7f37; }
figure.miss img { border-color: #cf222e; }
figure.junk img { border: 3px dashed #8c959f; opacity: 0.6; }
figcaption { overflow-wrap: anywhere; white-space: pre-line; }
.legend span { margin-right: 1.5em; }
"""


@dataclasses.dataclass(frozen=True)
class Tile:
    """One image of a row: its file, the caption under it, and its mark (query, match, miss, junk or none)."""

    path: str
    caption: str
    mark: str = ""
    tooltip: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
    """A query and its ranked gallery images."""

    query: Tile
    ranked: list[Tile]


@functools.lru_cache(maxsize=4096)
def thumbnail(path: str, height: int = THUMB_HEIGHT) -> str:
    """``path`` as a ``data:`` URI of a JPEG ``height`` pixels high; a grey box when it cannot be read."""
    try:
        img = read_image(path)
    except (ImageReadError, OSError) as exc:
        log.warning("page: %s", exc)
        return _MISSING
    width = max(1, round(img.width * height / max(1, img.height)))
    buffer = io.BytesIO()
    img.resize((width, height)).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(tile: Tile) -> str:
    tip = html.escape(tile.tooltip or tile.path)
    return (
        f'<figure class="{tile.mark}"><img src="{thumbnail(str(tile.path))}" alt="{tip}" title="{tip}">'
        f"<figcaption>{html.escape(tile.caption)}</figcaption></figure>"
    )


def render_page(rows: Sequence[Row], title: str, intro: str = "") -> str:
    """The page's HTML: a legend, then one ``div.row`` per query (its ``figure.query`` first)."""
    legend = (
        '<p class="legend"><span style="color:#1a7f37">&#9632; match (same identity, other camera)</span>'
        '<span style="color:#cf222e">&#9632; not a match</span>'
        '<span style="color:#8c959f">&#9633; junk (the protocol leaves it out: same identity and camera, or pid -1)'
        "</span></p>"
    )
    body = "\n".join(
        f'<div class="row">{_figure(row.query)}{"".join(_figure(t) for t in row.ranked)}</div>' for row in rows
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
        f"{legend}\n{body}\n</body></html>\n"
    )


def write_page(rows: Sequence[Row], dest: str | os.PathLike[str], title: str, intro: str = "") -> Path:
    """Write :func:`render_page` to ``dest`` (its folder is made)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(render_page(rows, title, intro), encoding="utf-8")
    return dest


def _ap_caption(ap: float) -> str:
    return f"AP {ap:.3f}" if np.isfinite(ap) else "AP -"


def search_rows(result: SearchResult) -> list[Row]:
    """A :class:`~canlib.engine.search.SearchResult` as rows: every item marked where its query is labelled."""
    rows = []
    gallery = result.gallery
    for i, name in enumerate(result.query.paths):
        caption = f"{name}\n" + (_ap_caption(result.ap[i]) if result.labelled[i] else "query")
        ranked = []
        for r, (j, d) in enumerate(zip(result.indices[i], result.distances[i], strict=True)):
            mark = "match" if result.match[i, r] else "junk" if result.junk[i, r] else ""
            mark = mark or ("miss" if result.labelled[i] else "")
            ranked.append(Tile(str(gallery.root / gallery.paths[j]), f"{r + 1}: {d:.3f}", mark, gallery.paths[j]))
        rows.append(Row(Tile(str(result.query.root / name), caption, "query", name), ranked))
    return rows


def search_page(result: SearchResult, dest: str | os.PathLike[str], max_rows: int | None = None) -> Path:
    """Write the ranked lists of a search to ``dest`` (HTML): the first ``max_rows`` queries (all: None)."""
    model = result.gallery.meta.get("model", {})
    rows = search_rows(result)
    shown = len(rows) if max_rows is None else min(max_rows, len(rows))
    intro = (
        f"{len(rows)} queries against {len(result.gallery.paths)} gallery images "
        f"({result.gallery.root}); cosine distance; model {model.get('source')} "
        f"(configuration {model.get('config_hash')})."
    )
    if shown < len(rows):
        intro += f" The first {shown} queries are shown."
        log.info("the page shows the first %d of %d queries (--page-queries)", shown, len(rows))
    return write_page(rows[:shown], dest, "canlib search", intro)


def evaluation_rows(ranked: RankedLists) -> list[Row]:
    """An evaluation's :class:`~canlib.engine.evaluate.RankedLists` as rows (junk is not ranked there)."""
    rows = []
    for i, query in enumerate(ranked.queries):
        items = zip(ranked.gallery[i], ranked.distances[i], ranked.matches[i], strict=True)
        tiles = [Tile(path, f"{r + 1}: {d:.3f}", "match" if m else "miss") for r, (path, d, m) in enumerate(items)]
        rows.append(Row(Tile(query, f"{Path(query).name}\n{_ap_caption(ranked.ap[i])}", "query"), tiles))
    return rows


def evaluation_page(ranked: RankedLists, dest: str | os.PathLike[str], title: str) -> Path:
    """Write an evaluation's ranked lists to ``dest`` (HTML)."""
    intro = (
        f"{len(ranked.queries)} queries, {ranked.order} AP first; {ranked.metric} distance; "
        "ranked as the evaluator ranks (the protocol's junk is left out)."
    )
    return write_page(evaluation_rows(ranked), dest, title, intro)


def _array(path: str, size: tuple[int, int]) -> np.ndarray:
    try:
        return np.asarray(read_image(path).resize(size)) / 255.0
    except ImageReadError:
        return np.full((size[1], size[0], 3), 0.85)


def evaluation_png(ranked: RankedLists, dest: str | os.PathLike[str], size: tuple[int, int] = (64, 128)) -> Path:
    """Write an evaluation's ranked lists as a PNG (:func:`~canlib.book.visualize.plot_ranked_lists`)."""
    import matplotlib.pyplot as plt

    queries = [_array(q, size) for q in ranked.queries]
    gallery = [[_array(g, size) for g in row] for row in ranked.gallery]
    titles = [f"AP {ap:.3f}" for ap in ranked.ap]
    fig = plot_ranked_lists(queries, gallery, ranked.matches, titles=titles, distances=ranked.distances)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return dest
