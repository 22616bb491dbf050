"""Claims judged in three verdict classes (canlib.lab.analysis.VERDICTS), and the book's words for them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from canlib import paper
from canlib.book import VERDICT_COLOURS, claim_verdict, claims_table, claims_tally, headline_table, markdown_table
from canlib.lab.analysis import count_verdicts, judge_claims, verdict_of, welch_interval

CLAIM = paper.Claim("A beats B", "greater", (("Table 2", "Part-1,2,3"), ("Table 2", "Part-1,3,5,7,9")))


def _records(a: list[float], b: list[float]) -> list[dict]:
    rows = [("Part-1,2,3", a), ("Part-1,3,5,7,9", b)]
    return [{"table": "Table 2", "row": r, "seed": s, "mAP": v} for r, vs in rows for s, v in enumerate(vs)]


@pytest.mark.parametrize("seed", range(20))
def test_the_interval_is_scipys_welch_interval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.7, 0.02, 3), rng.normal(0.69, 0.01 + 0.02 * rng.random(), 4)
    ours = welch_interval(a.mean(), a.std(ddof=1), 3, b.mean(), b.std(ddof=1), 4)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    np.testing.assert_allclose(ours, (ref.low, ref.high), rtol=1e-10)


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([0.70, 0.71, 0.72], [0.60, 0.61, 0.62], "holds"),
        ([0.60, 0.61, 0.62], [0.70, 0.71, 0.72], "contradicted"),
        ([0.6642, 0.70, 0.63], [0.6637, 0.69, 0.64], "inconclusive"),  # a tie on the means
        ([0.658, 0.658, 0.658], [0.658, 0.658, 0.658], "inconclusive"),  # an exact tie, no spread
        ([0.70], [0.60], "inconclusive"),  # one seed: no interval
    ],
)
def test_a_claim_is_judged_by_its_interval(a: list[float], b: list[float], expected: str) -> None:
    judged = judge_claims(_records(a, b), [CLAIM]).iloc[0]
    assert judged["verdict"] == expected


@pytest.mark.parametrize("seed", range(200))
def test_an_interval_containing_zero_is_never_a_hold_or_a_contradiction(seed: int) -> None:
    """Whatever the means say: a comparison whose interval contains zero decides nothing."""
    rng = np.random.default_rng(seed)
    a = list(rng.normal(0.7, 0.03, 3))
    b = list(rng.normal(0.7 + rng.normal(0, 0.03), 0.03, 3))
    judged = judge_claims(_records(a, b), [CLAIM]).iloc[0]
    lo, hi = welch_interval(np.mean(a), np.std(a, ddof=1), 3, np.mean(b), np.std(b, ddof=1), 3)
    if lo <= 0 <= hi:
        assert judged["verdict"] == "inconclusive"
    else:
        assert judged["verdict"] == ("holds" if lo > 0 else "contradicted")
    assert (judged["CI low"], judged["CI high"]) == pytest.approx((100 * lo, 100 * hi))


def test_a_claim_of_several_comparisons_holds_only_if_every_one_is_resolved() -> None:
    assert verdict_of([(0.5, 2.0), (0.1, 1.0)]) == "holds"
    assert verdict_of([(0.5, 2.0), (-0.1, 1.0)]) == "inconclusive"  # one step a tie: "every step" does not hold
    assert verdict_of([(0.5, 2.0), (-2.0, -0.1)]) == "contradicted"  # one step resolved the other way
    assert verdict_of([]) == "inconclusive"


def _claims(verdicts: list[str]) -> pd.DataFrame:
    n, nan = len(verdicts), math.nan
    ran = [v != "not run" for v in verdicts]
    return pd.DataFrame(
        {
            "claim": [f"claim {i}" for i in range(n)],
            "paper mAP %": ["1.0 vs 0.5"] * n,
            "proxy mAP %": ["2.0 vs 1.0" if r else "-" for r in ran],
            "Δ %": [1.0 if r else nan for r in ran],
            "CI low": [0.2 if v == "holds" else (-1.5 if v == "contradicted" else (-0.3 if r else nan)) for v, r in
                       zip(verdicts, ran, strict=True)],
            "CI high": [1.8 if r else nan for r in ran],
            "min seeds": [3 if r else 0 for r in ran],
            "verdict": verdicts,
        }
    )  # fmt: skip


@pytest.mark.parametrize("verdict", ["holds", "contradicted", "inconclusive", "not run"])
def test_claim_verdict_words_and_colour(verdict: str) -> None:
    html = claim_verdict(verdict)
    assert VERDICT_COLOURS[verdict] in html and verdict.replace("not run", "not run yet") in html
    assert sum(colour in html for colour in VERDICT_COLOURS.values()) == 1


def test_claims_table_one_and_two_grids() -> None:
    before = _claims(["holds", "contradicted"])
    now = _claims(["not run", "not run"])
    one = claims_table(before)
    assert list(one.columns) == ["paper mAP %", "mAP %", "Δ (95 % CI)", "seeds", "verdict"]
    assert one.loc["claim 0", "Δ (95 % CI)"] == "+1.0 (+0.2, +1.8)"
    assert VERDICT_COLOURS["contradicted"] in one.loc["claim 1", "verdict"]
    two = claims_table({"before": before, "now": now})
    assert "now: verdict" in two.columns and two["now: seeds"].tolist() == [0, 0]
    text = markdown_table(two, {"before: seeds": "d", "now: seeds": "d"})
    assert "| +1.0 (+0.2, +1.8) |" in text and "not run yet" in text
    with pytest.raises(ValueError, match="other claims"):
        claims_table({"a": before, "b": before.iloc[::-1]})


def test_claims_tally_counts_the_three_classes() -> None:
    judged = _claims(["holds", "holds", "inconclusive", "contradicted", "inconclusive", "not run"])
    assert count_verdicts(judged) == {"holds": 2, "contradicted": 1, "inconclusive": 2, "not run": 1}
    assert claims_tally(judged, html=False) == (
        "of 5 claims run (95 % Welch interval on each difference): 2 hold; 1 contradicted; 2 inconclusive"
    )
    html = claims_tally(judged)
    assert all(VERDICT_COLOURS[k] in html for k in ("holds", "contradicted", "inconclusive"))
    assert claims_tally(_claims(["not run"])) == "not run yet"
    assert claims_tally(_claims(["holds"]), html=False).endswith(": 1 holds")


def test_the_headline_table_has_one_row_per_claim_and_compares_the_earlier_grids() -> None:
    now = _claims(["holds", "inconclusive"]).assign(**{"paper Δ %": [2.5, 0.4]})
    before = now.assign(verdict=["holds", "contradicted"])
    table = headline_table({"now": now, "v3": before}, "now")
    assert list(table.columns) == ["paper Δ", "proxy Δ (95 % CI)", "verdict", "same verdict on v3?"]
    assert table["paper Δ"].tolist() == ["+2.5", "+0.4"] and table["same verdict on v3?"].tolist() == [
        "yes",
        "contradicted",
    ]
    assert VERDICT_COLOURS["inconclusive"] in table.iloc[1]["verdict"]
