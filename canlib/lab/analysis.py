"""Statistics over recorded runs: mean ± std per table row, and the paper's claims judged on them.

The grid runner (:mod:`canlib.lab.grid`) produces one record per (row, seed): a dict
with ``table``, ``row``, ``seed`` and the metrics as fractions. This module turns those
records into the tables the book prints and tests the comparisons the paper's text draws
(:func:`canlib.paper.paper_claims`) with a Welch statistic over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from canlib import paper

#: The metrics a record may hold, in the order tables print them.
METRIC_KEYS = ("mAP", "rank1", "rank3", "rank5", "rank10", "mINP")


class Summary(NamedTuple):
    """Per (table, row) statistics over seeds, in percent.

    Attributes:
        table: ``"mean ± std"`` strings (the mean alone for one seed), ``seeds``, and the
            paper's mAP and rank-1 beside them.
        mean: numeric means.
        std: sample standard deviations (NaN for one seed).
        seeds: the number of seeds per row.
    """

    table: pd.DataFrame
    mean: pd.DataFrame
    std: pd.DataFrame
    seeds: pd.Series


def _format(mean: float, std: float, seeds: int) -> str:
    """``mean ± std`` in percent with one decimal (just the mean for a single seed)."""
    return f"{mean:.1f}" if seeds < 2 else f"{mean:.1f} ± {std:.1f}"


def summarize(records: Sequence[dict[str, Any]]) -> Summary:
    """Mean and sample standard deviation over seeds per (table, row), in percent."""
    df = pd.DataFrame(records)
    keys = [k for k in METRIC_KEYS if k in df]
    stats = df.groupby(["table", "row"], sort=False)[keys]
    mean, std, n = stats.mean() * 100, stats.std(ddof=1) * 100, stats.size()
    table = pd.DataFrame(
        {k: [_format(m, s, c) for m, s, c in zip(mean[k], std[k], n, strict=True)] for k in keys}, index=mean.index
    )
    table["seeds"] = n
    published = [paper.ABLATION_TABLES.get(t, {}).get(r, {}) for t, r in table.index]
    table["paper mAP"] = [row.get("mAP") for row in published]
    table["paper rank1"] = [row.get("rank1") for row in published]
    return Summary(table, mean, std, n)


def welch_t(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> float:
    """``(mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b)``; NaN below two seeds on either side."""
    if min(n_a, n_b) < 2:
        return math.nan
    se = math.sqrt(std_a**2 / n_a + std_b**2 / n_b)
    return (mean_a - mean_b) / se if se > 0 else math.nan


def _holds(values: Sequence[float], claim: paper.Claim) -> bool:
    if claim.kind == "best":
        return all(values[a] >= values[b] for a, b in claim.comparisons())
    return all(values[a] > values[b] for a, b in claim.comparisons())


def _judge_one(claim: paper.Claim, summary: Summary | None, metric: str) -> dict[str, Any]:
    published = [paper.ABLATION_TABLES[t][r][metric] for t, r in claim.rows]
    have = False  # every row of the claim recorded
    ours: list[float] = []
    seeds: list[int] = [0]
    ts: list[float] = []
    if summary is not None and all(key in summary.mean.index for key in claim.rows):
        have = True
        means = summary.mean[metric].astype(float).to_dict()  # {(table, row): value}
        stds = summary.std[metric].astype(float).to_dict()
        counts = summary.seeds.astype(int).to_dict()
        ours = [means[key] for key in claim.rows]
        seeds = [counts[key] for key in claim.rows]
        ts = [
            welch_t(ours[a], stds[claim.rows[a]], seeds[a], ours[b], stds[claim.rows[b]], seeds[b])
            for a, b in claim.comparisons()
        ]
    return {
        "claim": claim.text,
        "paper holds?": "yes" if _holds(published, claim) else "no",
        "paper mAP %": _values(published, claim),
        "proxy holds?": ("yes" if _holds(ours, claim) else "no") if have else "not run",
        "proxy mAP %": _values(ours, claim) if have else "-",
        "min t": round(min(ts), 1) if ts and not any(math.isnan(t) for t in ts) else math.nan,
        "min seeds": min(seeds),
    }


#: |Welch t| at or above which a claim's ordering counts as clear of seed noise (three seeds per row:
#: the one-sided 95 % threshold lies between 2.1 and 2.9).
CLEAR_T = 3.0

#: The strength of a verdict, weakest to strongest on each side; ``count_verdicts`` counts these.
VERDICT_KINDS = ("clear for", "for", "against", "clear against", "not run")


def verdict_kind(holds: str, t: float, clear: float = CLEAR_T) -> str:
    """One of :data:`VERDICT_KINDS`: which way a claim went on the means (``holds``) and whether ``|t| >= clear``.

    ``"for"`` and ``"against"`` are orderings of the means *within* seed noise (or with noise not measured,
    ``t`` NaN); only the ``"clear ..."`` kinds are clear of it.
    """
    if holds == "not run":
        return "not run"
    strong = not math.isnan(t) and abs(t) >= clear
    return ("clear " if strong else "") + ("for" if holds == "yes" else "against")


def count_verdicts(judged: pd.DataFrame, clear: float = CLEAR_T) -> dict[str, int]:
    """How many claims of a :func:`judge_claims` frame fall in each of :data:`VERDICT_KINDS`."""
    kinds = [verdict_kind(h, float(t), clear) for h, t in zip(judged["proxy holds?"], judged["min t"], strict=True)]
    return {kind: kinds.count(kind) for kind in VERDICT_KINDS}


def judge_claims(
    records: Sequence[dict[str, Any]], claims: Sequence[paper.Claim] | None = None, metric: str = "mAP"
) -> pd.DataFrame:
    """Evaluate each claim on the paper's numbers and on the recorded runs' means.

    Besides the verdicts, ``min t`` is the smallest Welch statistic over the claim's
    comparisons (:func:`welch_t`): negative when a comparison goes the other way, large when
    the ordering is clear of seed noise (with three seeds per row, about 3 for a one-sided
    95 % test). It is NaN below two seeds per row.
    """
    summary = summarize(records) if len(records) else None
    return pd.DataFrame([_judge_one(c, summary, metric) for c in (claims or paper.paper_claims())])


def _values(values: Sequence[float], claim: paper.Claim) -> str:
    if claim.kind == "pairwise":  # with / without, pattern by pattern
        half = len(values) // 2
        return ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(values[:half], values[half:], strict=True))
    if len(values) == 2:
        return f"{values[0]:.1f} vs {values[1]:.1f}"
    return ", ".join(f"{v:.1f}" for v in values)


def read_log(run_dir: str | Path) -> pd.DataFrame:
    """A run's ``log.jsonl`` as a frame, one row per epoch (evaluations flattened as ``eval_<metric>``)."""
    rows = []
    for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            row.update({f"eval_{k}": v for k, v in (row.pop("eval", None) or {}).items()})
            rows.append(row)
    return pd.DataFrame(rows)
