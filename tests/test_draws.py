"""Test draws: the reporting set made again with other seeds, and a run's model evaluated on each."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from canlib import cli
from canlib.config import load_config
from canlib.data.synthetic import make_synthetic
from canlib.data.synthetic_identity import make_identities
from canlib.engine.trainer import train
from canlib.lab import draws

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
SEEDS = (21, 22)


@pytest.fixture(scope="module")
def drawn(tiny_data, tmp_path_factory) -> list[Path]:
    return draws.make_draws(tiny_data, tmp_path_factory.mktemp("draws"), SEEDS)


def test_a_draw_repeats_the_reporting_arguments_with_its_own_seed_and_new_people(tiny_data, drawn):
    reporting = json.loads((tiny_data / "meta.json").read_text())["arguments"]
    cameras = json.loads((tiny_data / "meta.json").read_text())["cameras"]
    for seed, root in zip(SEEDS, drawn, strict=True):
        meta = json.loads((root / "meta.json").read_text())
        assert meta["arguments"] == {**reporting, "seed": seed, "camera_seed": reporting["seed"]}
        assert meta["cameras"] == cameras  # the reporting set's cameras: only the people are new

    def looks(seed: int) -> set[str]:
        people, _ = make_identities(list(range(1, reporting["ids"] + 1)), seed, reporting["hard_negative_fraction"], 3)
        return {
            repr(sorted((k, v) for k, v in dataclasses.asdict(p).items() if k not in ("pid", "group"))) for p in people
        }

    assert not looks(reporting["seed"]) & looks(SEEDS[0])  # nobody of the reporting set is drawn again
    assert draws.make_draws(tiny_data, drawn[0].parent, SEEDS) == drawn  # made once, then reused


def test_draws_refuse_what_would_mix_sets(tiny_data, drawn, tmp_path):
    with pytest.raises(ValueError, match="among the draws' seeds"):
        draws.make_draws(tiny_data, tmp_path, (3, 4))  # tiny_data's own seed is 3
    other = tmp_path / "other"
    make_synthetic(other, ids=8, seed=5, images_per_id=3)
    with pytest.raises(ValueError, match="other arguments"):
        draws.make_draws(other, drawn[0].parent, (SEEDS[0],))  # draw-21 exists, made from tiny_data's arguments
    with pytest.raises(ValueError, match="real data has no generator"):
        draws.make_draws(tmp_path, tmp_path / "d", SEEDS)


def test_a_run_is_evaluated_on_every_draw_with_its_per_query_ap(tiny_data, drawn, tmp_path):
    run = tmp_path / "run"
    train(load_config(SMOKE, [f"data.root={tiny_data}", "optim.epochs=1", "train.max_batches_per_epoch=1"]), run)
    record = tmp_path / "record"
    draws.record_draws(run, record, drawn)
    saved = draws.read_draws(record)["draws"]
    assert list(saved) == [f"draw-{s}" for s in SEEDS]
    for d in saved.values():
        aps = [a for a in d["ap_per_query"] if a is not None]
        assert len(d["ap_per_query"]) == d["num_query"] and len(aps) == d["num_valid_queries"]
        assert np.mean(aps) == pytest.approx(d["mAP"], abs=1e-5)
    matrix = draws.draw_matrix([record], seeds=SEEDS)
    assert matrix.shape == (1, 2) and matrix[0, 0] == pytest.approx(100 * saved["draw-21"]["mAP"])
    with pytest.raises(ValueError, match=r"no evaluation on draw\(s\) \[23\]"):
        draws.draw_matrix([record], seeds=(21, 23))


def test_the_cli_refuses_real_data_in_one_line(tmp_path, caplog):
    argv = ["draws", "--config", str(SMOKE), "--data-root", str(tmp_path), "--row", "Table 3:Part-1"]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "real data has no generator" in caplog.text
