"""Chapter 8 re-executed as on a GPU runtime (issue 25, item 8): papermill, ``profile="paper"``, CPU.

The chapter's parameters are set as book/gpu.md tells a reader to set them (the paper profile, a
Market-1501 folder, ``train_missing``) and a few more make it seconds: a tiny Market-layout folder
(the ``tiny_data`` fixture read by the Market-1501 reader), a slim random trunk instead of the
ImageNet ResNet50, two epochs of one batch. Its records and checkpoints go to a temporary folder;
the repository's ``results/`` must come out untouched.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from canlib.config import ConfigError, config_hash, load_config, profile_path

REPO = Path(__file__).resolve().parents[1]
CHAPTER = REPO / "chapters" / "08_training.ipynb"
FAST = [  # what makes the paper profile seconds on a CPU; the rest is the paper's (8 x 4 batches, its loss)
    "model.backbone=timm:resnet18",
    "model.backbone_kwargs={channels: [16, 32, 64, 128]}",
    "model.pretrained=null",  # no ImageNet weights offline
    "data.height=128",
    "data.width=64",
    "data.num_workers=0",
    "data.test_batch_size=64",
    "train.max_batches_per_epoch=1",
]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_chapter_8_runs_the_paper_profile_on_a_tiny_market_folder(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel and the training child import this checkout
    results, runs, out = tmp_path / "results", tmp_path / "runs", tmp_path / "08_training.ipynb"
    before = _tree(REPO / "results")
    parameters = {
        "profile": "paper",
        "dataset": "market1501",
        "data_root": str(tiny_data),
        "device": "cpu",
        "epochs": 2,
        "seeds": [0],
        "train_missing": True,
        "overrides": FAST,
        "results_dir": str(results),
        "runs_dir": str(runs),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # jupyter_client's own
        papermill.execute_notebook(
            str(CHAPTER), str(out), parameters=parameters, cwd=str(CHAPTER.parent), progress_bar=False, log_output=False
        )
    assert _tree(REPO / "results") == before  # nothing written into the repository's records
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert config_hash(cfg) == run.name and cfg["profile"] == "paper" and cfg["data"]["dataset"] == "market1501"
    assert cfg["model"]["parts"] == [1, 3, 5, 7] and cfg["loss"]["clustering_features"] == "all"  # the final row
    assert (cfg["data"]["p"], cfg["data"]["k"], cfg["optim"]["lr"]) == (8, 4, 3e-4)  # the paper's, not the proxy's
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2]
    assert (runs / run.name / "checkpoints" / "last.pt").is_file()
    executed = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "profile: paper | data set: market1501" in text
    assert "default run of the 'paper' profile recorded for 1 of 1 seed(s)" in text


def test_the_chapters_profile_takes_overrides_and_names_a_bad_one():
    configs = REPO / "configs"
    assert profile_path("paper", "market1501", configs_dir=configs) == configs / "paper-market1501.yaml"
    derived = load_config(profile_path("paper", "market1501", 2, configs, ["model.pretrained=null"]))
    assert (derived["profile"], derived["optim"]["epochs"], derived["model"]["pretrained"]) == ("paper", 2, None)
    with pytest.raises(ConfigError, match=r"unknown configuration key 'model\.nope'"):
        profile_path("paper", "market1501", None, configs, ["model.nope=1"])
