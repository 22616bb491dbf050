"""The realistic level's calibration: the ladder is walked mildest first, and the rule stops at the
first candidate that meets both targets on every calibration seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from canlib.lab import calibrate

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
TINY = {"ids": 12, "images_per_id": 4, "height": 128, "width": 64}


@pytest.fixture
def tiny_ladder(monkeypatch):
    ladder = {"mild": TINY, "harder": {**TINY, "global_lookalike_share": 1.0}, "hardest": {**TINY, "viewpoint": 1.0}}
    monkeypatch.setattr(calibrate, "LADDER", ladder)
    return ladder


def _run(tmp_path: Path, ladder: dict, seeds=(11,)) -> dict:
    folders = {k: tmp_path / k for k in ("data", "results", "runs")}
    return calibrate.calibrate(SMOKE, *folders.values(), ladder=tuple(ladder), seeds=seeds, jobs=1)


def test_the_ladder_stops_at_the_first_candidate_meeting_both_targets(tiny_ladder, tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "TARGETS", {"trunk_only": 1.0, "fine_tuned": 1.0})
    result = _run(tmp_path, tiny_ladder)
    assert result["chosen"] == "mild" and [m["candidate"] for m in result["measured"]] == ["mild"]
    (m,) = result["measured"]
    assert 0 < m["trunk_only"] <= 1 and 0 < m["fine_tuned"] <= 1 and m["final_ce"] > 0
    assert result["chosen_knobs"] == TINY
    saved = json.loads((tmp_path / "results" / "calibration.json").read_text())
    assert saved["chosen"] == "mild" and (tmp_path / "results" / "mild-seed11" / m["run"] / "metrics.json").is_file()
    assert (tmp_path / "results" / "mild-seed11" / "trunk-only.json").is_file()


def test_no_fine_tuning_where_the_trunk_misses_and_none_chosen_when_all_miss(tiny_ladder, tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "TARGETS", {"trunk_only": 0.0, "fine_tuned": 1.0})
    monkeypatch.setattr(
        calibrate.grid, "run_grid", lambda *a, **k: pytest.fail("a candidate missing the trunk target trained")
    )
    result = _run(tmp_path, tiny_ladder)
    assert result["chosen"] is None and [m["candidate"] for m in result["measured"]] == list(tiny_ladder)
    assert all("fine_tuned" not in m for m in result["measured"])


def test_the_realistic_level_is_what_the_calibration_chose():
    from canlib.data.synthetic import LEVELS

    saved = Path(__file__).resolve().parents[1] / "results" / "controls" / "calibration-realistic" / "calibration.json"
    result = json.loads(saved.read_text())
    assert result["chosen"] == "identity, camera 0.8" and result["chosen_knobs"] == calibrate.LADDER[result["chosen"]]
    assert LEVELS["realistic"].knobs == result["chosen_knobs"]
    chosen = [m for m in result["measured"] if m["candidate"] == result["chosen"]]
    assert [m["seed"] for m in chosen] == list(calibrate.SEEDS)
    assert all(calibrate.meets(m, "trunk_only") and calibrate.meets(m, "fine_tuned") for m in chosen)
    # every milder candidate missed the trunk's target on some seed, and was not fine-tuned
    milder = [m for m in result["measured"] if m["candidate"] != result["chosen"]]
    assert milder and all("fine_tuned" not in m for m in milder)
    assert {m["candidate"] for m in milder if not calibrate.meets(m, "trunk_only")} == set(calibrate.LADDER) - {
        result["chosen"],
        "identity, camera 1.0",
    }
