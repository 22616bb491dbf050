"""The training engine: smoke training, exact resume, the NaN guard, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from canlib.config import RunSections, config_hash, load_config
from canlib.engine.checkpoint import checkpoint_path
from canlib.engine.evaluate import evaluation_options
from canlib.engine.trainer import CHECKPOINT, Trainer, TrainingDiverged, train

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


def smoke_cfg(root: Path, *overrides: str) -> dict:
    return load_config(SMOKE, [f"data.root={root}", *overrides])


def read_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_smoke_training_writes_a_complete_run(tiny_data, tmp_path):
    run = tmp_path / "run"
    metrics = train(smoke_cfg(tiny_data), run, device="cpu")
    for name in ("config.yaml", "run.json", "log.jsonl", "metrics.json", CHECKPOINT):
        assert (run / name).is_file(), name
    assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["rank1"] <= 1.0
    assert {"mAP", "rank1", "rank5", "rank10", "mINP", "ap_variant"} <= set(read_metrics(run))
    log_lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log_lines] == [1, 2]
    assert all(x["loss_total"] > 0 and x["loss_ce"] > 0 for x in log_lines)
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 0 and "torch" in record["versions"] and record["machine"]["cpu"]
    assert record["config_hash"] == config_hash(smoke_cfg(tiny_data)) and "code_fingerprint" not in record
    state = torch.load(run / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 2 and "centers" in "".join(state["loss"].keys())
    assert state["scheduler"]["last_epoch"] == 2


def test_interrupted_run_resumes_exactly(tiny_data, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    train(smoke_cfg(tiny_data), full, device="cpu")
    train(smoke_cfg(tiny_data, "optim.epochs=1"), split, device="cpu")  # "interrupted" after epoch 1
    assert torch.load(split / CHECKPOINT, weights_only=False)["epoch"] == 1
    train(smoke_cfg(tiny_data), split, device="cpu", resume=True)
    assert (full / "metrics.json").read_text() == (split / "metrics.json").read_text()
    a = torch.load(full / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(split / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_recipe(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(smoke_cfg(tiny_data, "optim.epochs=1"), run, device="cpu")
    with pytest.raises(ValueError, match=r"optim\.lr"):
        train(smoke_cfg(tiny_data, "optim.lr=0.1"), run, device="cpu", resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer.from_config(smoke_cfg(tiny_data, "optim.epochs=3"), run, device="cpu")
    real_forward = trainer.loss.forward
    calls = {"n": 0}

    def poisoned(features, logits, pids, pre_bn=None):
        calls["n"] += 1
        total, terms = real_forward(features, logits, pids, pre_bn=pre_bn)
        if calls["n"] > 2:  # epoch 2, first step (two steps per epoch in the smoke profile)
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(trainer.loss, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss.*epoch 2.*last good checkpoint"):
        trainer.fit()
    state = torch.load(run / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_a_trainer_given_sections_is_the_trainer_of_the_dictionary(tiny_data, tmp_path):
    cfg = smoke_cfg(tiny_data, "train.max_batches_per_epoch=1", "data.verify_images=false")
    by_dict = Trainer.from_config(cfg, tmp_path / "dict", device="cpu")
    stats = by_dict.train_one_epoch(1)
    by_sections = Trainer(RunSections.from_config(cfg), tmp_path / "sections", device="cpu")
    assert by_sections.run == by_dict.run and by_sections.run.config == cfg
    again = by_sections.train_one_epoch(1)
    timing = ("seconds", "images_per_s")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in stats.items() if k not in timing}
    assert stats["loss_total"] > 0 and stats["images"] == 8
    a, b = by_dict.state_dict(), by_sections.state_dict()
    assert a["config_hash"] == b["config_hash"] == config_hash(cfg)
    assert list(a["model"]) == list(b["model"]) and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert by_dict.save_checkpoint() == checkpoint_path(tmp_path / "dict") == tmp_path / "dict" / CHECKPOINT


def test_evaluation_options_come_from_the_eval_section_once():
    cfg = load_config(SMOKE, ["eval.flip_tta=true", "eval.chunk_size=512"])
    section = RunSections.from_config(cfg).eval
    assert evaluation_options(section) == {
        "metric": "cosine",
        "ap": "step",
        "max_rank": 50,
        "flip_tta": True,
        "rerank": False,
        "chunk_size": 512,
    }
    changed = evaluation_options(section, metric="euclidean", ap="trapezoid", flip_tta=False, rerank=True)
    assert (changed["metric"], changed["ap"], changed["flip_tta"], changed["rerank"]) == (
        "euclidean",
        "trapezoid",
        False,
        True,
    )


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "canlib", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_help_lists_every_command():
    out = _cli("--help")
    assert out.returncode == 0
    for command in ("make-synthetic", "train", "evaluate"):
        assert command in out.stdout
        assert _cli(command, "--help").returncode == 0


def test_cli_train_then_evaluate(tiny_data, tmp_path):
    run = tmp_path / "cli-run"
    out = _cli(
        "train",
        "--config",
        str(SMOKE),
        "--data-root",
        str(tiny_data),
        "--output",
        str(run),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "train.max_batches_per_epoch=1",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["epoch"] == 1
    ev = _cli("evaluate", "--run", str(run), "--device", "cpu", "--ap", "trapezoid")
    assert ev.returncode == 0, ev.stderr
    step, trap = read_metrics(run)["mAP"], json.loads(ev.stdout)["mAP"]
    assert json.loads(ev.stdout)["ap_variant"] == "trapezoid" and trap <= step + 1e-9


def test_cli_reports_a_wrong_data_root(tmp_path):
    out = _cli(
        "train",
        "--config",
        str(SMOKE),
        "--data-root",
        str(tmp_path / "nowhere"),
        "--output",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    )
    assert out.returncode == 2
    assert "bounding_box_train" in out.stderr


def test_a_trainer_given_a_dictionary_points_to_from_config(tiny_data, tmp_path):
    cfg = smoke_cfg(tiny_data, "data.verify_images=false")
    with pytest.raises(TypeError, match=r"Trainer\.from_config"):
        Trainer(cfg, tmp_path / "dict", device="cpu")
