"""The claims' sub-grid: its rows, the neck factor, the realistic level's stages, and runs read out on test draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from canlib import cli
from canlib.config import RunSections, config_hash
from canlib.engine.build import build_model
from canlib.lab import decide, draws
from canlib.lab.grid import run_grid
from canlib.lab.rows import CLAIM_ROWS, CONTROLS, EQUAL_CAPACITY, Row, claim_rows, resolve

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
CPU = ROOT / "configs" / "cpu.yaml"
LEVEL0 = ROOT / "results" / "decisions" / "cpu-synthetic" / "decisions.json"


def test_the_sub_grid_holds_every_named_row_once_per_configuration():
    rows = claim_rows()
    assert [(r.table, r.label) for r in rows] == sorted(CLAIM_ROWS, key=[(r.table, r.label) for r in rows].index)
    hashes = {config_hash(resolve(CPU, r, 0, "/d")) for r in rows}
    assert len(rows) == 11 and len(hashes) == 10  # Table 3's Part-1,3,5,7 is Table 4's "CE + triplet"


@pytest.mark.parametrize("pattern", list(EQUAL_CAPACITY))
def test_an_equal_capacity_control_has_the_ca_models_descriptor(pattern):
    """Same number of features and the same descriptor size as the CA row; the row without CA differs."""
    rows = {(r.table, r.label): r for r in claim_rows()}
    sizes = {}
    for key in (("Table 3", pattern), (CONTROLS, EQUAL_CAPACITY[pattern]), ("Table 2", pattern)):
        run = RunSections.from_config(resolve(CPU, rows[key], 0, "/d"))
        model = build_model(run.model, 5).eval()
        with torch.no_grad():
            sizes[key[0]] = tuple(model(torch.zeros(1, 3, run.data.height, run.data.width)).shape)
    assert sizes["Table 3"] == sizes[CONTROLS] != sizes["Table 2"]


def test_the_realistic_stages_keep_level_0s_choices_on_a_tie():
    chosen = {d["stage"]: d["chosen"] for d in json.loads(LEVEL0.read_text())["decisions"]}
    stages = decide.select_stages(["neck", "schedule"], LEVEL0)
    assert [s.name for s in stages] == ["schedule", "neck"]  # in the committed order, whatever was typed
    assert [s.default for s in stages] == [chosen["schedule"], chosen["neck"]]
    assert stages[0].converged_ce == decide.CONVERGED_CE  # the rule itself is unchanged
    with pytest.raises(ValueError, match=r"'sheduel'.*schedule, neck, scale, margin"):
        decide.select_stages(["sheduel"])
    assert [s.default for s in decide.select_stages()] == [s.default for s in decide.STAGES]


def test_the_neck_factor_is_two_options_of_the_neck_stage():
    assert all(decide.neck_overrides(label) for label in decide.NECK_FACTOR) and len(decide.NECK_FACTOR) == 2
    with pytest.raises(ValueError, match="--neck 'BNNeck'"):
        decide.neck_overrides("BNNeck")
    with pytest.raises(ValueError):
        decide.neck_overrides("CE only (reference)")  # a reference is never a level


def test_ablate_refuses_a_mistyped_neck_or_claims_row_before_any_work(tmp_path, caplog):
    base = ["ablate", "--config", str(SMOKE), "--data-root", str(tmp_path), "--results", str(tmp_path / "r")]
    assert cli.main([*base, "--claims", "--neck", "BNNeck"]) == cli.EXIT_BAD_INPUT
    assert "--neck 'BNNeck' is not an option" in caplog.text
    assert cli.main([*base, "--claims", "--rows", "Part-1,2,3,4"]) == cli.EXIT_BAD_INPUT
    assert "selects no row of the claims' sub-grid" in caplog.text
    assert not (tmp_path / "r").exists()


def test_a_grid_run_is_read_out_on_every_draw_and_a_missing_readout_is_made_again(tiny_data, tmp_path):
    roots = [str(r) for r in draws.make_draws(tiny_data, tmp_path / "draws", (21, 22))]
    short = ("optim.epochs=1", "train.max_batches_per_epoch=1")
    row = Row("Table 4", "CE", (*next(r for r in claim_rows() if r.label == "CE").overrides, *short))
    kwargs = {"rows": [row], "seeds": (0,), "results_dir": tmp_path / "results", "runs_dir": tmp_path / "runs"}
    (record,) = run_grid(SMOKE, tiny_data, draws=roots, **kwargs)
    folder = tmp_path / "results" / record["run"]
    assert list(draws.read_draws(folder)["draws"]) == ["draw-21", "draw-22"]
    run_json = (folder / "run.json").read_text()
    (folder / draws.DRAWS).unlink()
    assert run_grid(SMOKE, tiny_data, draws=roots, **kwargs) == [record]
    assert list(draws.read_draws(folder)["draws"]) == ["draw-21", "draw-22"]  # measured again
    assert (folder / "run.json").read_text() == run_json  # the record itself is kept as it was


def test_missing_decisions_and_a_mistyped_stage_are_refused_in_one_line(tmp_path, caplog):
    base = ["--config", str(SMOKE), "--data-root", str(tmp_path)]
    missing = tmp_path / "none" / "decisions.json"
    assert cli.main(["ablate", *base, "--claims", "--decisions", str(missing)]) == cli.EXIT_BAD_INPUT
    assert str(missing) in caplog.text
    assert cli.main(["decide", *base, "--stages", "sheduel"]) == cli.EXIT_BAD_INPUT
    assert "--stages 'sheduel'" in caplog.text
    assert cli.main(["decide", *base, "--stages", "neck", "--defaults-from", str(missing)]) == cli.EXIT_BAD_INPUT
