"""The slice read-out and the trunk control: a model's descriptor evaluated whole, on its global slices and on
its local slices, from one extraction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canlib.config import RunSections, load_config
from canlib.engine.build import build_dataset, build_loaders, build_model
from canlib.engine.evaluate import descriptor_slices, evaluate_model, evaluate_slices

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _setup(tiny_data: Path, parts: str):
    cfg = load_config(SMOKE, [f"data.root={tiny_data}", f"model.parts={parts}", "model.embed_dim=16"])
    run = RunSections.from_config(cfg)
    dataset = build_dataset(run.data)
    torch.manual_seed(0)
    model = build_model(run.model, dataset.num_train_pids)
    _, query, gallery = build_loaders(run.data, dataset, 0, 0, 1, torch.device("cpu"))
    return model, query, gallery


def test_the_global_slices_of_a_part1_model_are_its_whole_descriptor(tiny_data):
    model, query, gallery = _setup(tiny_data, "[1]")
    assert list(descriptor_slices(model)) == ["global"]
    out = evaluate_slices(model, query, gallery, torch.device("cpu"))
    assert out["global"] == out["all"]
    whole = evaluate_model(model, query, gallery, torch.device("cpu"))
    assert out["all"]["mAP"] == pytest.approx(whole["mAP"], abs=1e-12)


def test_global_and_local_slices_partition_the_descriptor(tiny_data):
    model, query, gallery = _setup(tiny_data, "[1,3]")
    slices = descriptor_slices(model)
    assert len(slices["global"]) == 2 * 16 and len(slices["local"]) == 2 * 16  # part1 G, part3 G + 2 CA features
    assert sorted(slices["global"] + slices["local"]) == list(range(model.descriptor_dim))
    out = evaluate_slices(model, query, gallery, torch.device("cpu"))
    assert {k: v["descriptor_dim"] for k, v in out.items()} == {"all": 64, "global": 32, "local": 32}
    assert out["local"]["mAP"] != out["all"]["mAP"]


def test_the_trunk_control_reads_the_trunk_of_a_part1_model_on_each_split(tiny_data):
    from canlib.lab.controls import TrunkDescriptor, trunk_only

    cfg = load_config(SMOKE, [f"data.root={tiny_data}"])
    splits = {"test": None, "validation": {"num_ids": 3, "seed": 0}}
    result = trunk_only(cfg, splits=splits)
    assert list(result["results"]) == ["test", "validation"] and result["record"]["config_hash"]
    assert all(0 < r["mAP"] <= 1 and r["descriptor_dim"] == 2 * 128 for r in result["results"].values())
    model, _, _ = _setup(tiny_data, "[1,3]")
    with pytest.raises(ValueError, match="Part-1"):
        TrunkDescriptor(model)


def test_the_control_measures_only_the_splits_named(tiny_data, tmp_path, capsys):
    import json

    from canlib import cli

    out = tmp_path / "c.json"
    argv = ["controls", "--config", str(SMOKE), "--data-root", str(tiny_data), "--out", str(out), "--split", "test"]
    assert cli.main([*argv, "data.val_ids=3"]) == 0
    assert list(json.loads(out.read_text())["results"]) == ["test"] and "trunk only, test" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse names the choices
        cli.main([*argv[:-1], "fold 9"])
