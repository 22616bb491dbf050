"""The run record: where a number came from (commit, dirty tree, configuration hash, versions, machine)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from canlib.config import config_hash, load_config
from canlib.engine.record import RECORDED_FILES, REPO_DIR, copy_record, git_commit, run_record


def test_a_run_record_names_commit_config_hash_versions_and_machine() -> None:
    cfg = load_config(REPO_DIR / "configs" / "smoke.yaml", ["seed=3"])
    record = run_record(cfg, "cpu")
    assert set(record) == {"created", "profile", "seed", "config_hash", "git", "versions", "machine"}
    assert record["seed"] == 3 and record["config_hash"] == config_hash(cfg)
    assert record["git"] == git_commit() and len(record["git"]["commit"]) == 40
    assert {"python", "torch", "torchvision", "numpy", "canlib", "timm"} <= set(record["versions"])
    assert record["machine"]["device"] == "cpu" and record["machine"]["cpu_count"]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def test_the_dirty_flag_follows_the_package_and_configs_only(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == {"commit": None, "dirty": None}  # not a git work tree
    (tmp_path / "canlib").mkdir()
    (tmp_path / "canlib" / "model.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first")
    assert git_commit(tmp_path)["dirty"] is False and len(git_commit(tmp_path)["commit"]) == 40
    (tmp_path / "notes.md").write_text("an untracked note does not count\n")
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "canlib" / "model.py").write_text("x = 2\n")
    assert git_commit(tmp_path)["dirty"] is True


def test_copy_record_copies_the_recorded_files_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in (*RECORDED_FILES, "checkpoints/last.pt"):
        (run / name).write_text(name)
    dest = copy_record(run, tmp_path / "results" / "abc")
    assert sorted(p.name for p in dest.iterdir()) == sorted(RECORDED_FILES)
    assert (dest / "run.json").read_text() == "run.json"
