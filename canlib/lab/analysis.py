"""Statistics over recorded runs: mean ± std per table row, and the paper's claims judged on them.

The grid runner (:mod:`canlib.lab.grid`) produces one record per (row, seed): a dict
with ``table``, ``row``, ``seed`` and the metrics as fractions. This module turns those
records into the tables the book prints and tests the comparisons the paper's text draws
(:func:`canlib.paper.paper_claims`) with a Welch interval over seeds (:data:`VERDICTS`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

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


def welch_interval(
    mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Two-sided Welch interval on ``mean_a - mean_b`` (unequal variances, Welch-Satterthwaite degrees
    of freedom); ``(nan, nan)`` below two seeds on either side. Agrees with
    ``scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)``."""
    if min(n_a, n_b) < 2:
        return math.nan, math.nan
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    diff = mean_a - mean_b
    if va + vb == 0:
        return diff, diff
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(va + vb)
    return diff - half, diff + half


class Interval(NamedTuple):
    """A difference of means with its two-sided interval, standard error and degrees of freedom."""

    diff: float
    low: float
    high: float
    se: float
    dof: float


def seed_draw_interval(a: Any, b: Any, confidence: float = 0.95) -> Interval:
    """The interval on ``mean(a) - mean(b)`` over training seeds *and* test draws.

    ``a`` and ``b``: one row each, mAP per (seed, draw), shape ``(seeds, draws)``; the draws are the
    same test sets for both rows (paired), the seeds are separate trainings (not paired). The model is
    ``y[r, s, d] = mu_r + seed[r, s] + draw[d] + draw x row[r, d] + noise``: the draw's own effect
    cancels in the difference, its interaction with the row does not. The squared standard error is
    ``V_a / n_a + V_b / n_b + W / D``: ``V`` the variance over seeds of the per-seed means over draws
    (Welch's term), ``W`` the variance over draws of the per-draw difference of the rows' means. The
    noise term is counted in both, so the interval is slightly conservative; the degrees of freedom are
    Welch-Satterthwaite's over the three terms. With one draw it is :func:`welch_interval` exactly.
    A hierarchical bootstrap was not chosen: with three seeds it resamples ten distinct sets and its
    percentile interval is known to be too narrow. ``nan`` bounds below two seeds on either side.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 1:
        raise ValueError(
            f"seed_draw_interval: want (seeds, draws) arrays over the same draws, got {a.shape}, {b.shape}"
        )
    (n_a, draws), n_b = a.shape, b.shape[0]
    diff = float(a.mean() - b.mean())
    if min(n_a, n_b) < 2:
        return Interval(diff, math.nan, math.nan, math.nan, math.nan)
    terms = [(a.mean(axis=1).var(ddof=1) / n_a, n_a - 1), (b.mean(axis=1).var(ddof=1) / n_b, n_b - 1)]
    if draws > 1:
        terms.append(((a.mean(axis=0) - b.mean(axis=0)).var(ddof=1) / draws, draws - 1))
    var = sum(v for v, _ in terms)
    if var == 0:
        return Interval(diff, diff, diff, 0.0, math.inf)
    dof = var**2 / sum(v**2 / k for v, k in terms)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(var)
    return Interval(diff, diff - half, diff + half, math.sqrt(var), dof)


#: The two-sided confidence of the interval on each difference of row means that a verdict reads.
CONFIDENCE = 0.95

#: A claim's verdicts, fixed before any claim was judged by them, and why: a difference of two means
#: over a few seeds can be seed noise, and a tie is evidence for neither side, so only a resolved sign
#: counts. Each comparison of a claim gets the :data:`CONFIDENCE` Welch interval on its difference
#: (:func:`welch_interval`: the rows are independent trainings with their own spreads). The claim
#: *holds* when every interval lies wholly on the claimed side of zero, is *contradicted* when at
#: least one lies wholly on the other side, and is *inconclusive* otherwise (an interval that
#: contains zero, or fewer than two seeds on a side); *not run* without records. No correction for
#: several comparisons: it would make "holds" stricter still and "contradicted" more lenient.
VERDICTS = ("holds", "contradicted", "inconclusive", "not run")


def verdict_of(intervals: Sequence[tuple[float, float]]) -> str:
    """The verdict of :data:`VERDICTS` from a claim's intervals, each oriented so that the claim
    asserts a positive difference."""
    if any(hi < 0 for _, hi in intervals):
        return "contradicted"
    if intervals and all(lo > 0 for lo, _ in intervals):
        return "holds"
    return "inconclusive"


#: A claim judged under every level of a factor the validation rule could not decide (the neck):
#: *robust* only when every level reaches the same resolved verdict, interval and all; inconclusive
#: when no level resolves it; otherwise it *depends* on that factor, and the book shows each sign.
DEPENDS = "depends on the neck"


def robust_verdict(verdicts: Sequence[str]) -> str:
    """One claim's verdict over the levels of an undecided factor (each a :data:`VERDICTS` entry):
    the common verdict when every level agrees, else :data:`DEPENDS` (a claim that holds under one
    level and not under another is never reported as holding); "not run" when a level lacks runs."""
    if not verdicts or "not run" in verdicts:
        return "not run"
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return DEPENDS


def _deciding(intervals: list[tuple[float, float]], ts: list[float], verdict: str) -> int:
    """The comparison a table shows for a claim: the most reversed one of a contradicted claim, the
    weakest one of a claim that holds, and otherwise the one with the smallest t."""
    order = range(len(intervals))
    if verdict == "contradicted":
        return min(order, key=lambda i: intervals[i][1])
    if verdict == "holds":
        return min(order, key=lambda i: intervals[i][0])
    return min(order, key=lambda i: math.inf if math.isnan(ts[i]) else ts[i])


def _means_agree(values: Sequence[float], claim: paper.Claim) -> bool:
    if claim.kind == "best":
        return all(values[a] >= values[b] for a, b in claim.comparisons())
    return all(values[a] > values[b] for a, b in claim.comparisons())


def _judge_one(claim: paper.Claim, summary: Summary | None, metric: str) -> dict[str, Any]:
    published = [paper.ABLATION_TABLES[t][r][metric] for t, r in claim.rows]
    row = {"claim": claim.text, "paper agrees?": "yes" if _means_agree(published, claim) else "no"}
    row["paper mAP %"] = _values(published, claim)
    paper_gaps = [published[a] - published[b] for a, b in claim.comparisons()]
    if summary is None or not all(key in summary.mean.index for key in claim.rows):
        nan = math.nan
        empty = {"means agree?": "not run", "proxy mAP %": "-", "Δ %": nan, "CI low": nan, "CI high": nan}
        return {**row, "paper Δ %": min(paper_gaps), **empty, "min t": nan, "min seeds": 0, "verdict": "not run"}
    mean, std = summary.mean[metric].astype(float), summary.std[metric].astype(float)
    counts = summary.seeds.astype(int)
    ours = [mean[key] for key in claim.rows]
    stats_ab = [
        (mean[claim.rows[a]], std[claim.rows[a]], counts[claim.rows[a]], mean[claim.rows[b]], std[claim.rows[b]],
         counts[claim.rows[b]])
        for a, b in claim.comparisons()
    ]  # fmt: skip
    ts = [welch_t(*s) for s in stats_ab]
    intervals = [welch_interval(*s, confidence=CONFIDENCE) for s in stats_ab]
    verdict = verdict_of(intervals) if not any(math.isnan(lo) for lo, _ in intervals) else "inconclusive"
    i = _deciding(intervals, ts, verdict)
    return {
        **row,
        "paper Δ %": paper_gaps[i],
        "means agree?": "yes" if _means_agree(ours, claim) else "no",
        "proxy mAP %": _values(ours, claim),
        "Δ %": stats_ab[i][0] - stats_ab[i][3],
        "CI low": intervals[i][0],
        "CI high": intervals[i][1],
        "min t": round(min(ts), 1) if not any(math.isnan(t) for t in ts) else math.nan,
        "min seeds": min(int(counts[key]) for key in claim.rows),
        "verdict": verdict,
    }


def count_verdicts(judged: pd.DataFrame) -> dict[str, int]:
    """How many claims of a :func:`judge_claims` frame fall in each of :data:`VERDICTS`."""
    verdicts = list(judged["verdict"])
    return {kind: verdicts.count(kind) for kind in VERDICTS}


def judge_claims(
    records: Sequence[dict[str, Any]], claims: Sequence[paper.Claim] | None = None, metric: str = "mAP"
) -> pd.DataFrame:
    """Judge each claim on the recorded runs (:data:`VERDICTS`), beside whether the paper's own
    numbers and the proxy's means go the claimed way.

    Per claim: ``Δ %`` and ``CI low``/``CI high``, the difference of means (points) of the comparison
    that decides (:func:`_deciding`) and its :data:`CONFIDENCE` Welch interval, ``paper Δ %`` the same
    comparison in the paper's table (the smallest one before any run); ``min t``, the smallest
    Welch statistic over the claim's comparisons (negative when one goes the other way); ``verdict``.
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
