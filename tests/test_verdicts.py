"""Each claim judged per cell (difficulty x neck level), over seeds and over seeds and test draws."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from canlib.book import seeds_beside_draws, verdict_grid
from canlib.lab import verdicts
from canlib.lab.analysis import DEPENDS, seed_draw_interval
from canlib.lab.draws import DRAW_SEEDS, DRAWS
from canlib.lab.rows import CLAIM_ROWS

CLAIM = verdicts.subgrid_claims()[0]  # CA improves Part-1,3,5,7


def _records(tmp_path: Path, maps: dict[int, list[float]], draws: dict[int, np.ndarray] | None = None) -> list[dict]:
    out = []
    for side, key in enumerate(CLAIM.rows):
        for seed, value in enumerate(maps[side]):
            run = f"{side}-{seed}"
            out.append({"table": key[0], "row": key[1], "seed": seed, "run": run, "mAP": value / 100})
            if draws is not None:
                (tmp_path / run).mkdir()
                per = {f"draw-{s}": {"mAP": float(v) / 100} for s, v in zip(DRAW_SEEDS, draws[side][seed], strict=True)}
                (tmp_path / run / DRAWS).write_text(json.dumps({"draws": per}))
    return out


def test_every_claim_compares_rows_of_the_sub_grid():
    assert {key for c in verdicts.subgrid_claims() for key in c.rows} <= set(CLAIM_ROWS)


def test_over_seeds_it_is_welchs_interval_and_without_draws_it_says_so(tmp_path):
    a, b = [61.0, 64.0, 60.0], [58.0, 57.0, 62.0]
    judged = verdicts.judge_claim(CLAIM, _records(tmp_path, {0: a, 1: b}), tmp_path)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert judged["seeds CI"] == pytest.approx((ref.low, ref.high)) and judged["Δ"] == pytest.approx(8 / 3)
    assert judged["verdict (seeds)"] == "inconclusive" and judged["verdict (seeds and draws)"] == "no draws"


def test_with_draws_the_interval_covers_seeds_and_draws(tmp_path):
    rng = np.random.default_rng(0)
    draws = {0: rng.normal(62, 1, (3, 5)), 1: rng.normal(58, 1, (3, 5))}
    maps = {side: list(draws[side][:, 0]) for side in draws}
    judged = verdicts.judge_claim(CLAIM, _records(tmp_path, maps, draws), tmp_path)
    want = seed_draw_interval(draws[0], draws[1])
    assert judged["draws CI"] == pytest.approx((want.low, want.high))
    assert judged["verdict (seeds and draws)"] == "holds"


def _judged(claim: str, level: str, seeds: str, draws: str) -> dict:
    """One row of ``judge_cells`` with a verdict over seeds and one over seeds and draws."""
    nan = (math.nan, math.nan)
    with_draws = draws not in ("no draws", "not run")
    return {
        "claim": claim,
        "level": level,
        "verdict (seeds)": seeds,
        "verdict (seeds and draws)": draws,
        "Δ": 1.0,
        "seeds CI": (0.5, 1.5),
        "Δ draws": 2.0 if with_draws else math.nan,
        "draws CI": (-0.5, 4.5) if with_draws else nan,
    }


def test_the_book_reads_the_draws_interval_where_there_are_draws_else_the_seeds():
    seeds_only = verdicts.final_reading(pd.Series(_judged("c", "level 0", "holds", "no draws")))
    assert seeds_only == verdicts.Reading("holds", 1.0, 0.5, 1.5, draws=False)
    both = verdicts.final_reading(pd.Series(_judged("c", "level 0", "holds", "inconclusive")))
    assert both == verdicts.Reading("inconclusive", 2.0, -0.5, 4.5, draws=True)


def test_a_claim_that_flips_between_the_necks_is_reported_as_depending_on_it():
    judged = pd.DataFrame(
        [
            _judged("c", "level 0", "holds", "no draws"),
            _judged("c", "level 0", "contradicted", "no draws"),
            _judged("c", "realistic", "holds", "inconclusive"),
            _judged("c", "realistic", "holds", "holds"),
        ]
    )
    table = verdicts.robustness(judged)
    assert table.loc["c", "level 0"] == DEPENDS  # holds under one neck, reversed under the other
    assert table.loc["c", "realistic"] == DEPENDS  # the draws' interval decides where there are draws


def test_a_cell_whose_decisions_are_not_made_has_no_records(tmp_path):
    cell = verdicts.Cell("realistic", "BNNeck, shared BN, plain", tmp_path, "data/realistic", tmp_path / "none.json")
    assert not cell.ready() and verdicts.cell_records("configs/cpu.yaml", cell) == []


def test_the_books_tables_read_the_draws_where_there_are_draws():
    judged = pd.DataFrame(
        [
            {**_judged("c", "level 0", "holds", "no draws"), "neck": "post-BN, shared BN, squared"},
            {**_judged("c", "realistic", "holds", "inconclusive"), "neck": "BNNeck, shared BN, plain"},
        ]
    )
    grid = verdict_grid(judged, verdicts.robustness(judged))
    assert grid.loc["c", "level 0, post-BN, squared"].endswith("+1.0 (+0.5, +1.5) s")
    assert grid.loc["c", "realistic, BNNeck, plain"].endswith("+2.0 (-0.5, +4.5) s+d")
    beside = seeds_beside_draws(judged)
    assert beside["cell"].tolist() == ["realistic, BNNeck, plain"]  # only the cell read out on draws
    assert beside["width ratio"].iloc[0] == pytest.approx(5.0)  # (4.5 + 0.5) / (1.5 - 0.5)
    assert "holds" in beside["over seeds"].iloc[0] and "inconclusive" in beside["over seeds and draws"].iloc[0]
