"""`make gpu-check` on a CPU-only machine: a tiny dry run that exits 0 and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from canlib.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_exits_zero_and_writes_one_json(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "gpu-check" in out
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["dry_run"] is True and result["machine"]["cpu"]
    names = [m["name"] for m in result["models"]]
    assert names[0].startswith("CAN parts 1,3,5,7") and "last stride 1" in names[1]
    assert all(m["img_s"] > 0 and m["train_gflop_per_image"] > 0 for m in result["models"])
    assert result["trainer"][0]["img_s"] > 0 and result["trainer"][0]["cache_on"] == "cpu"
    assert result["evaluation"]["queries"] == 40 and 0 <= result["evaluation"]["mAP_random"] <= 1
    assert result["projection"]["total_hours"] > 0 and "skipped" in result["ddp_smoke"]


def test_market_projection_counts_the_papers_epochs_and_evaluations(gpu_check):
    cfg = load_config(REPO / "configs" / "paper-market1501.yaml")
    p = gpu_check.project_market(train_img_s=2976.0, extract_img_s=19281.0, eval_s=9.0, cfg=cfg)
    assert p["images_per_epoch"] == 751 // 8 * 32 == 2976  # one epoch: every id once
    assert p["evaluations"] == 600 // 50  # eval_every 50, the last at epoch 600
    assert p["training_hours"] == pytest.approx(600 / 3600)
    assert p["evaluation_hours"] == pytest.approx(12 * 10 / 3600)
