"""The claims' verdicts at each difficulty and under each level of the undecided neck, over seeds and test draws.

The claims' sub-grid (:data:`canlib.lab.rows.CLAIM_ROWS`, ``results/ablations/claims-subgrid.md``)
is trained at two difficulty levels of the synthetic set and under the two levels of the neck
factor (:data:`canlib.lab.decide.NECK_FACTOR` at level 0, :data:`REALISTIC_NECKS` at the realistic
level): four :class:`Cell` s. Each claim of
:func:`subgrid_claims` (the paper's claims the sub-grid can judge, and the controls of CA at equal
capacity) is judged in every cell twice: by Welch's interval over seeds on the reporting test set,
and, where the runs were read out on test draws (:mod:`canlib.lab.draws`), by
:func:`canlib.lab.analysis.seed_draw_interval` over seeds and draws. The verdict classes are
:data:`canlib.lab.analysis.VERDICTS`; over the neck's levels a verdict is robust only when both
agree (:func:`canlib.lab.analysis.robust_verdict`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from canlib import paper
from canlib.lab import decide
from canlib.lab.analysis import robust_verdict, seed_draw_interval, verdict_of, welch_interval
from canlib.lab.draws import DRAW_SEEDS, read_draws
from canlib.lab.records import load_records
from canlib.lab.rows import CONTROLS, EQUAL_CAPACITY, Row, claim_rows

#: The two difficulty levels, as the book names them.
LEVELS = ("level 0", "realistic")


@dataclass(frozen=True)
class Cell:
    """One level of difficulty under one neck level: where its records are, and its runs' overrides."""

    level: str
    neck: str
    results: Path
    data_root: str
    decisions: Path | None = None  # the level's decisions (chosen overrides applied before the neck's)

    def overrides(self) -> tuple[str, ...]:
        """What ``ablate`` appended to every row of this cell (``--decisions``, then ``--neck``)."""
        chosen = decide.chosen_overrides(self.decisions) if self.decisions else []
        return (*chosen, *decide.neck_overrides(self.neck))

    def ready(self) -> bool:
        """Whether the cell's design can be resolved (its decisions exist where it has any)."""
        return self.decisions is None or self.decisions.is_file()


def cells(results: str | Path = "results", data: str | Path = "data") -> list[Cell]:
    """The four cells of the design (``results/ablations/claims-subgrid.md``), level 0's first."""
    r, d = Path(results), Path(data)
    default, bnneck = decide.NECK_FACTOR
    chosen = REALISTIC_NECKS[0]
    realistic = r / "decisions" / "cpu-realistic" / "decisions.json"
    return [
        Cell(LEVELS[0], default, r / "ablations" / "cpu-synthetic", str(d / "synthetic")),
        Cell(LEVELS[0], bnneck, r / "ablations-v3", str(d / "synthetic")),
        Cell(LEVELS[1], chosen, r / "ablations" / "cpu-realistic-neck-post-bn-plain", str(d / "realistic"), realistic),
        Cell(LEVELS[1], bnneck, r / "ablations" / "cpu-realistic-neck-bnneck", str(d / "realistic"), realistic),
    ]


#: The realistic level's two necks (``results/ablations/claims-subgrid.md``, amended on its decisions
#: before any realistic grid run): the neck the realistic level's own decisions chose, and BNNeck with
#: plain distances, level 0's second neck and the runner-up on the realistic validation folds.
REALISTIC_NECKS: tuple[str, ...] = ("post-BN, shared BN, plain", "BNNeck, shared BN, plain")


def subgrid_claims() -> list[paper.Claim]:
    """The claims the sub-grid judges: the paper's on CA (for each of its two patterns) and on the
    losses (Table 4), then the controls: CA against the mean of the same slots at equal capacity,
    and the part branches against the global one alone."""
    ca = [
        paper.Claim(f"CA improves {p} (Table 3 vs Table 2)", "greater", (("Table 3", p), ("Table 2", p)))
        for p in reversed(list(EQUAL_CAPACITY))
    ]
    losses = [c for c in paper.paper_claims() if c.rows[0][0] == "Table 4"]
    equal = [
        paper.Claim(
            f"CA's max beats the mean of the same slots, {p} (equal capacity)",
            "greater",
            (("Table 3", p), (CONTROLS, label)),
        )
        for p, label in reversed(list(EQUAL_CAPACITY.items()))
    ]
    parts = paper.Claim(
        f"the part branches add to the global one: {paper.FINAL_PATTERN} + CA > Part-1",
        "greater",
        (("Table 3", paper.FINAL_PATTERN), (CONTROLS, "Part-1 (Tables 2-3 loss)")),
    )
    assert all(c.kind == "greater" for c in losses)
    return [*ca, *losses, *equal, parts]


def cell_records(profile: str | Path, cell: Cell, seeds: Sequence[int] = (0, 1, 2)) -> list[dict[str, Any]]:
    """The recorded runs of ``cell`` (none when its design cannot be resolved yet)."""
    if not cell.ready():
        return []
    extra = cell.overrides()
    rows = [Row(r.table, r.label, (*r.overrides, *extra)) for r in claim_rows()]
    return load_records(profile, cell.data_root, rows, seeds, cell.results)


def judge_claim(claim: paper.Claim, records: Sequence[dict[str, Any]], results: Path) -> dict[str, Any]:
    """One "greater" claim in one cell: Δ mAP (points), its Welch interval over seeds and verdict, and,
    when every run of both rows was read out on the test draws, the same over seeds and draws."""
    sides = [[r for r in records if (r["table"], r["row"]) == key] for key in claim.rows]
    out: dict[str, Any] = {"seeds": min(len(s) for s in sides)}
    nan = (math.nan, math.nan)
    if min(len(s) for s in sides) < 2:
        out.update({"Δ": math.nan, "seeds CI": nan, "verdict (seeds)": "not run"})
        return {**out, "Δ draws": math.nan, "draws CI": nan, "verdict (seeds and draws)": "not run"}
    maps = [np.array([100.0 * float(r["mAP"]) for r in s]) for s in sides]
    iv = welch_interval(*(v for m in maps for v in (m.mean(), m.std(ddof=1), len(m))))
    out.update({"Δ": maps[0].mean() - maps[1].mean(), "seeds CI": iv, "verdict (seeds)": verdict_of([iv])})
    a, b = (_draws_matrix(results, s) for s in sides)
    if a is None or b is None:
        return {**out, "Δ draws": math.nan, "draws CI": nan, "verdict (seeds and draws)": "no draws"}
    both = seed_draw_interval(a, b)
    verdict = verdict_of([(both.low, both.high)]) if not math.isnan(both.low) else "inconclusive"
    return {**out, "Δ draws": both.diff, "draws CI": (both.low, both.high), "verdict (seeds and draws)": verdict}


def _draws_matrix(results: Path, runs: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """``[seed, draw]`` mAP in percent of one row's runs, or None when a run lacks a draw."""
    rows = []
    for r in runs:
        got = (read_draws(results / r["run"]) or {}).get("draws", {})
        if not all(f"draw-{s}" in got for s in DRAW_SEEDS):
            return None
        rows.append([100.0 * float(got[f"draw-{s}"]["mAP"]) for s in DRAW_SEEDS])
    return np.asarray(rows)


def judge_cells(profile: str | Path, design: Sequence[Cell], seeds: Sequence[int] = (0, 1, 2)) -> pd.DataFrame:
    """Every claim of :func:`subgrid_claims` in every cell: one row per (claim, cell)."""
    out = []
    for cell in design:
        records = cell_records(profile, cell, seeds)
        for claim in subgrid_claims():
            judged = judge_claim(claim, records, cell.results)
            out.append({"claim": claim.text, "level": cell.level, "neck": cell.neck, **judged})
    return pd.DataFrame(out)


class Reading(NamedTuple):
    """A cell's verdict as the book reads it, with its Δ mAP (points) and interval."""

    verdict: str
    diff: float
    low: float
    high: float
    draws: bool  # over seeds and draws; False: Welch's interval over seeds


def final_reading(row: pd.Series) -> Reading:
    """One row of :func:`judge_cells` as the book reads it: over seeds and draws where the runs have
    draws, else over seeds."""
    if row["verdict (seeds and draws)"] in ("no draws", "not run"):
        low, high = row["seeds CI"]
        return Reading(row["verdict (seeds)"], row["Δ"], low, high, draws=False)
    low, high = row["draws CI"]
    return Reading(row["verdict (seeds and draws)"], row["Δ draws"], low, high, draws=True)


def robustness(judged: pd.DataFrame) -> pd.DataFrame:
    """Per claim and level, the verdict over the neck's levels (:func:`canlib.lab.analysis.robust_verdict`)."""
    frame = judged.assign(verdict=[final_reading(row).verdict for _, row in judged.iterrows()])
    table = frame.groupby(["claim", "level"], sort=False)["verdict"].apply(lambda v: robust_verdict(list(v)))
    return table.unstack("level").reindex(columns=list(LEVELS))


def design_json(design: Sequence[Cell]) -> str:
    """The cells as JSON (the book shows where each cell's records lie)."""
    return json.dumps([{"level": c.level, "neck": c.neck, "results": str(c.results)} for c in design], indent=1)
