"""canlib.book.claims_table / claim_verdict: verdicts coloured by the sign and size of Welch's t."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from canlib.book import VERDICT_COLOURS, claim_verdict, claims_table, claims_tally, markdown_table
from canlib.lab.analysis import count_verdicts


def _claims(holds: list[str], ts: list[float]) -> pd.DataFrame:
    n = len(holds)
    return pd.DataFrame(
        {
            "claim": [f"claim {i}" for i in range(n)],
            "paper holds?": ["yes"] * n,
            "paper mAP %": ["1.0 vs 0.5"] * n,
            "proxy holds?": holds,
            "proxy mAP %": ["-" if h == "not run" else "2.0 vs 1.0" for h in holds],
            "min t": ts,
            "min seeds": [0 if h == "not run" else 3 for h in holds],
        }
    )


@pytest.mark.parametrize(
    "holds,t,kind,word",
    [
        ("yes", 4.0, "clear for", "holds, clear of seed noise"),
        ("yes", 1.0, "for", "holds on the means, within seed noise"),
        ("no", -3.5, "clear against", "contradicted, clear of seed noise"),
        ("no", -0.2, "against", "contradicted on the means, within seed noise"),
        ("no", math.nan, "against", "contradicted on the means, seed noise not measured"),
        ("not run", math.nan, "not run", "not run yet"),
    ],
)
def test_claim_verdict_colour_follows_t(holds: str, t: float, kind: str, word: str) -> None:
    html = claim_verdict(holds, t)
    assert VERDICT_COLOURS[kind] in html and word in html
    assert sum(colour in html for colour in VERDICT_COLOURS.values()) == 1


def test_claims_table_one_and_two_grids() -> None:
    before = _claims(["yes", "no"], [2.6, -6.9])
    now = _claims(["not run", "not run"], [math.nan, math.nan])
    one = claims_table(before)
    assert list(one.columns) == ["paper mAP %", "mAP %", "min t", "seeds", "verdict"]
    assert VERDICT_COLOURS["clear against"] in one.loc["claim 1", "verdict"]
    two = claims_table({"before": before, "now": now})
    assert "now: verdict" in two.columns and two["now: seeds"].tolist() == [0, 0]
    text = markdown_table(two, {"before: min t": ".1f", "now: min t": ".1f", "before: seeds": "d", "now: seeds": "d"})
    assert "| -6.9 |" in text and "not run yet" in text
    with pytest.raises(ValueError, match="other claims"):
        claims_table({"a": before, "b": before.iloc[::-1]})


def test_claims_tally_tells_means_from_clear() -> None:
    judged = _claims(["yes", "yes", "yes", "no", "no", "not run"], [4.0, 0.4, 1.0, -0.2, -6.9, math.nan])
    assert count_verdicts(judged) == {"clear for": 1, "for": 2, "against": 1, "clear against": 1, "not run": 1}
    text = claims_tally(judged, html=False)
    assert text == (
        "of 5 claims run (|t| ≥ 3 counts as clear): 1 holds clear of seed noise; "
        "2 hold on the means, within seed noise; 1 contradicted on the means, within seed noise; "
        "1 contradicted clear of seed noise"
    )
    html = claims_tally(judged)
    for kind in ("clear for", "for", "against", "clear against"):
        assert VERDICT_COLOURS[kind] in html
    assert VERDICT_COLOURS["not run"] not in html
    assert claims_tally(_claims(["not run"], [math.nan])) == "not run yet"
    assert count_verdicts(judged, clear=0.3)["clear for"] == 3  # t = 0.4 is clear only with a lower bar
