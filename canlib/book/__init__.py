"""Presentation helpers for the book's chapters: numbered tables and figures.

A chapter computes a table or draws a figure in a code cell and *glues* it under a name
(myst-nb's ``glue``); a markdown cell then places it with a caption that the build numbers:

.. code-block:: md

    :::{table} Parameters of each component (millions).
    :name: tbl-backbone-params

    ```{glue:md} tbl-backbone-params
    :format: myst
    ```
    :::

    ```{glue:figure} fig-backbone-rows
    :name: fig-backbone-rows
    :alt: Bar chart of feature-map heights ...

    Caption.
    ```

Tables are glued as Markdown (fixed precision per column, numbers right-aligned), so the
build renders them as numbered HTML tables and nbval compares plain text, with no random
ids in it. myst-nb and IPython are only needed when a chapter runs (the ``book`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from canlib.lab.analysis import CONFIDENCE, DEPENDS, count_verdicts
from canlib.lab.verdicts import final_reading

__all__ = [
    "claim_verdict",
    "claims_table",
    "claims_tally",
    "glue_figure",
    "glue_table",
    "headline_table",
    "markdown_table",
    "readout_table",
    "same_verdicts",
    "seeds_beside_draws",
    "verdict_grid",
]

Format = str | Callable[[Any], str]


def _cell(value: Any, fmt: Format | None) -> str:
    """One table cell as text: ``fmt`` is a format spec (``".2f"``, ``",d"``) or a callable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\N{EN DASH}"
    if callable(fmt):
        text = fmt(value)
    elif fmt is not None and not isinstance(value, (str, bool)):
        text = format(value, fmt)
    elif isinstance(value, float):
        raise ValueError(f"float value {value!r} has no format: give every float column a fixed precision")
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _header(label: Any) -> str:
    if isinstance(label, tuple):
        return " ".join(str(part) for part in label if str(part))
    return "" if label is None else str(label)


def markdown_table(df: pd.DataFrame, formats: Mapping[Any, Format] | Format | None = None, index: bool = True) -> str:
    """``df`` as a Markdown pipe table with fixed precision.

    Args:
        df: the table; a (Multi)Index becomes leading columns when ``index`` is true.
        formats: one format for every numeric value column (not the index), or ``{column: format}``
            (index levels included, by name); a format is a
            spec for :func:`format` (``".2f"``, ``",d"``, ``".1%"``) or a callable returning text.
            Float columns without a format are refused, so no table prints noise digits.
        index: include the index (its names become the headers).
    """
    table = df.reset_index() if index else df.reset_index(drop=True)
    if index and not any(n is not None for n in df.index.names):
        table = table.rename(columns={"index": ""})
    index_columns = set(table.columns[: df.index.nlevels]) if index else set()
    per_column = formats if isinstance(formats, Mapping) else {}
    default = None if isinstance(formats, Mapping) else formats
    headers = [_header(c) for c in table.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]) for c in table.columns
    ]
    # the default format is for the values; index columns (labels) only get a format by name
    fmts = [
        per_column.get(c, default if num and c not in index_columns else None)
        for c, num in zip(table.columns, numeric, strict=True)
    ]
    rows = [
        [_cell(v, fmt) for v, fmt in zip(row, fmts, strict=True)] for row in table.itertuples(index=False, name=None)
    ]
    lines = [
        "| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
        "|" + "|".join("---:" if num else ":---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def glue_table(
    name: str, df: pd.DataFrame, formats: Mapping[Any, Format] | Format | None = None, index: bool = True
) -> None:
    """Glue ``df`` as a Markdown table under ``name``; the cell shows nothing, its ``{table}`` shows it."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(name, Markdown(markdown_table(df, formats, index)), display=False)


def glue_figure(name: str, fig: Any) -> None:
    """Glue a matplotlib figure under ``name`` and close it, so it appears once: in its ``{glue:figure}``."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)


#: Colours of a claim's verdict (:data:`canlib.lab.analysis.VERDICTS`; GitHub's palette, readable on a
#: white page): green and red for a sign the interval resolves, grey for a tie and for no runs.
VERDICT_COLOURS = {
    "holds": "#1a7f37",
    "contradicted": "#cf222e",
    "inconclusive": "#57606a",
    "not run": "#8c959f",
    DEPENDS: "#9a6700",
}

#: The words of each verdict, for one claim and for a count.
VERDICT_WORDS = {
    "holds": ("holds", "hold"),
    "contradicted": ("contradicted", "contradicted"),
    "inconclusive": ("inconclusive", "inconclusive"),
    "not run": ("not run yet", "not run yet"),
    DEPENDS: (DEPENDS, DEPENDS),
}


def _coloured(kind: str, text: str) -> str:
    return f'<span style="color:{VERDICT_COLOURS[kind]}">{text}</span>'


def claim_verdict(verdict: str) -> str:
    """A claim's verdict (:data:`canlib.lab.analysis.VERDICTS`) as coloured inline HTML."""
    return _coloured(verdict, VERDICT_WORDS[verdict][0])


def claims_tally(judged: pd.DataFrame, html: bool = True) -> str:
    """The count of a :func:`canlib.lab.analysis.judge_claims` frame's verdicts, in words (and colour
    if ``html``): e.g. "of 8 claims run (...): 3 hold; 1 contradicted; 4 inconclusive", or "not run
    yet" when no claim was run."""
    counts = count_verdicts(judged)
    run = len(judged) - counts["not run"]
    if run == 0:
        return "not run yet"
    parts = []
    for kind, n in counts.items():
        if n and kind != "not run":
            words = VERDICT_WORDS[kind][1]
            text = f"{n} " + ("holds" if (n, words) == (1, "hold") else words)
            parts.append(_coloured(kind, text) if html else text)
    head = f"of {run} claims run ({100 * CONFIDENCE:.0f} % Welch interval on each difference)"
    return f"{head}: " + "; ".join(parts)


def _difference(d: float, lo: float, hi: float) -> str:
    if math.isnan(d):
        return "-"
    return f"{d:+.1f} (one seed)" if math.isnan(lo) else f"{d:+.1f} ({lo:+.1f}, {hi:+.1f})"


def claims_table(claims: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The verdicts of :func:`canlib.lab.analysis.judge_claims`, ready for :func:`glue_table`.

    ``claims``: one ``judge_claims`` frame, or ``{grid label: frame}`` for several grids judged
    on the same claims (e.g. ``{"before": ..., "now": ...}``). Returns one row per claim (index
    ``claim``) with the paper's mAP, then per grid its mAP, the deciding difference with its interval
    (``Δ (95 % CI)``, points), seeds and verdict (:func:`claim_verdict`). Format the seeds with
    ``{"seeds": "d"}`` (prefixed by the grid's label for several grids).
    """
    grids = {"": claims} if isinstance(claims, pd.DataFrame) else dict(claims)
    first = next(iter(grids.values()))
    out = pd.DataFrame({"paper mAP %": first["paper mAP %"].to_numpy()}, index=pd.Index(first["claim"], name="claim"))
    ci = f"Δ ({100 * CONFIDENCE:.0f} % CI)"
    for label, frame in grids.items():
        if list(frame["claim"]) != list(first["claim"]):
            raise ValueError(f"claims_table: grid {label!r} judges other claims than the first grid")
        prefix = f"{label}: " if label else ""
        out[f"{prefix}mAP %"] = frame["proxy mAP %"].to_numpy()
        out[f"{prefix}{ci}"] = [
            _difference(d, lo, hi) for d, lo, hi in zip(frame["Δ %"], frame["CI low"], frame["CI high"], strict=True)
        ]
        out[f"{prefix}seeds"] = frame["min seeds"].to_numpy(dtype=int)
        out[f"{prefix}verdict"] = [claim_verdict(v) for v in frame["verdict"]]
    return out


def headline_table(
    judged: Mapping[str, pd.DataFrame], current: str, robust: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per claim for a first screen: the paper's difference, the ``current`` grid's with its
    interval and verdict, and whether each earlier grid of ``judged`` (``{label: judge_claims frame}``)
    reached the same verdict. With ``robust`` (:func:`canlib.lab.verdicts.robustness`), per level of
    difficulty the verdict over both necks of each claim the sub-grid judges ("-" for the others)."""
    now = judged[current]
    out = pd.DataFrame(index=pd.Index(now["claim"], name="claim of the paper"))
    out["paper Δ"] = [f"{d:+.1f}" for d in now["paper Δ %"]]
    ci = f"proxy Δ ({100 * CONFIDENCE:.0f} % CI)"
    out[ci] = [_difference(d, lo, hi) for d, lo, hi in zip(now["Δ %"], now["CI low"], now["CI high"], strict=True)]
    out["verdict"] = [claim_verdict(v) for v in now["verdict"]]
    earlier = [label for label in judged if label != current]
    if earlier:
        out[f"same verdict on {', '.join(earlier)}?"] = same_verdicts(now, [judged[g] for g in earlier])
    if robust is not None:
        for level in robust.columns:
            out[f"over both necks, {level}"] = [
                claim_verdict(robust.loc[c, level]) if c in robust.index else "-" for c in out.index
            ]
    return out


#: Short names of the neck factor's levels (:data:`canlib.lab.decide.NECK_FACTOR`) for column heads.
NECK_SHORT = {
    "post-BN, shared BN, squared": "post-BN, squared",
    "post-BN, shared BN, plain": "post-BN, plain",
    "BNNeck, shared BN, plain": "BNNeck, plain",
}


def verdict_grid(judged: pd.DataFrame, robust: pd.DataFrame) -> pd.DataFrame:
    """The claims' verdicts per cell of :func:`canlib.lab.verdicts.judge_cells` and over the neck.

    One row per claim; per cell (level, neck) its coloured verdict and Δ with its interval, over seeds
    and draws where the runs were read out on draws (marked "s+d"), else over seeds ("s"); then per
    level the verdict over both necks (``robust``, :func:`canlib.lab.verdicts.robustness`)."""
    out = pd.DataFrame(index=pd.Index(list(dict.fromkeys(judged["claim"])), name="claim"))
    for (level, neck), cell in judged.groupby(["level", "neck"], sort=False):
        texts = []
        for _, row in cell.iterrows():
            got = final_reading(row)
            interval = f"{_difference(got.diff, got.low, got.high)} {'s+d' if got.draws else 's'}"
            texts.append(claim_verdict(got.verdict) + ("" if got.verdict == "not run" else f" {interval}"))
        out[_cell_label(level, neck)] = texts
    for level in robust.columns:
        out[f"{level}: over both necks"] = [claim_verdict(v) for v in robust.loc[out.index, level]]
    return out


def seeds_beside_draws(judged: pd.DataFrame) -> pd.DataFrame:
    """Per claim and cell of :func:`canlib.lab.verdicts.judge_cells` whose runs were read out on the test
    draws: the verdict and Δ with Welch's interval over seeds (the reporting test set alone), beside
    the same over seeds and draws (:func:`~canlib.lab.verdicts.final_reading`), and how many times
    wider the second interval is."""
    out = []
    for _, row in judged.iterrows():
        got = final_reading(row)
        if not got.draws:
            continue
        lo, hi = row["seeds CI"]
        out.append(
            {
                "claim": row["claim"],
                "cell": _cell_label(row["level"], row["neck"]),
                "over seeds": f"{claim_verdict(row['verdict (seeds)'])} {_difference(row['Δ'], lo, hi)}",
                "over seeds and draws": f"{claim_verdict(got.verdict)} {_difference(got.diff, got.low, got.high)}",
                "width ratio": (got.high - got.low) / (hi - lo),
            }
        )
    return pd.DataFrame(out, columns=["claim", "cell", "over seeds", "over seeds and draws", "width ratio"])


def _cell_label(level: str, neck: str) -> str:
    """A cell of the sub-grid as the book's tables name it: its level and its neck's short name."""
    return f"{level}, {NECK_SHORT.get(neck, neck)}"


def same_verdicts(now: pd.DataFrame, earlier: Sequence[pd.DataFrame]) -> list[str]:
    """Per claim of ``now`` (a :func:`canlib.lab.analysis.judge_claims` frame), whether each frame of
    ``earlier`` reached the same verdict: "yes", or its own verdict, comma-separated in order."""
    return [
        ", ".join("yes" if frame["verdict"].iloc[i] == v else frame["verdict"].iloc[i] for frame in earlier)
        for i, v in enumerate(now["verdict"])
    ]


def readout_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (table, row) of a grid's records (:func:`canlib.lab.records.load_records` with slices): the seeds,
    the whole descriptor's mean mAP (%) and its standard deviation, the global and the local slices'
    mean mAP (%) and the mean final training CE. Empty when the records carry no slice read-out."""
    if not len(records) or "mAP_global" not in records:
        return pd.DataFrame()
    g = records.groupby(["table", "row"], sort=False)
    return pd.DataFrame(
        {
            "seeds": g.size(),
            "mAP %": 100 * g["mAP"].mean(),
            "± (whole)": 100 * g["mAP"].std(),
            "global slices %": 100 * g["mAP_global"].mean(),
            "local slices %": 100 * g["mAP_local"].mean(),
            "final CE": g["final_ce"].mean(),
        }
    )
