"""Issue 23's remaining hazards: every destination is checked before any work, and a wrong
argument names the option it came from. Each test fails on the code before the fix."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from canlib import cli
from canlib.data.datasets import DATASETS


@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if a command starts its work (so a refusal is shown to come first)."""

    def work(*args, **kwargs):
        raise AssertionError("the command started its work before checking its destination")

    for name in ("export_weights", "export_run", "evaluate_run"):
        monkeypatch.setattr(cli, name, work)


@pytest.mark.parametrize("out", ["/proc/can.pt", "{tmp}"])
def test_export_refuses_an_unwritable_destination_first(tmp_path, caplog, no_work, out):
    out = out.format(tmp=tmp_path)  # /proc: not writable even for root; tmp_path: a folder, not a file
    assert cli.main(["export", "--run", str(tmp_path / "run"), "--out", out]) == cli.EXIT_BAD_INPUT
    assert f"cannot write {out}" in caplog.text and "Traceback" not in caplog.text


def test_export_onnx_refuses_an_existing_folder_first(tmp_path, caplog, no_work):
    (tmp_path / "model.onnx").mkdir()
    args = ["export", "--run", str(tmp_path / "run"), "--onnx", str(tmp_path / "model.onnx")]
    assert cli.main(args) == cli.EXIT_BAD_INPUT
    assert "model.onnx: it is a folder" in caplog.text


def test_evaluate_checks_where_it_records_before_evaluating(tmp_path, caplog, no_work):
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluations").write_text("")  # a file where the folder of evaluations goes
    assert cli.main(["evaluate", "--run", str(run)]) == cli.EXIT_BAD_INPUT
    assert "evaluations" in caplog.text and "pass --out FILE" in caplog.text


def test_evaluate_names_the_dataset_option_and_the_readers(tmp_path, caplog, no_work):
    assert cli.main(["evaluate", "--run", str(tmp_path), "--dataset", "viper", "--data-root", "x"]) == 2
    assert "--dataset 'viper' is not a data set canlib reads" in caplog.text
    assert all(name in caplog.text for name in DATASETS)


def test_an_empty_layout_folder_is_named(tmp_path):
    from canlib.data import load_dataset
    from canlib.data.base import DatasetLayoutError

    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (tmp_path / folder).mkdir()
    with pytest.raises(DatasetLayoutError, match=r"bounding_box_train holds no usable image"):
        load_dataset("folder", tmp_path)


def test_sixteen_bit_grayscale_is_scaled_not_clipped_and_said_once(tmp_path, caplog):
    import logging

    import numpy as np
    from PIL import Image

    from canlib.data.base import read_image

    Image.fromarray(np.full((8, 4), 0x8000, dtype=np.uint16)).save(tmp_path / "g16.png")  # mid-grey in 16 bits
    assert np.asarray(read_image(tmp_path / "g16.png")).max() == 0x80  # PIL's own convert gives 255: all white
    Image.fromarray(np.zeros((8, 4), dtype=np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(OSError, match=r"i32\.tif.*32-bit"):
        read_image(tmp_path / "i32.tif")
    from canlib.data.base import ReIDDataset

    images = [tmp_path / "g16.png"]
    Image.fromarray(np.zeros((8, 4, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    images.append(tmp_path / "rgba.png")
    Image.new("RGB", (4, 8)).save(tmp_path / "rgb.png")
    data = ReIDDataset([(str(p), i, 0) for i, p in enumerate(images)], [(str(tmp_path / "rgb.png"), 0, 0)], [])
    with caplog.at_level(logging.INFO, logger="canlib.data.base"):
        data.verify_images()
    (line,) = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert "1 16-bit grayscale" in line and "1 RGBA" in line


# ---------------------------------------------------------------------------------------------- one folder, one command
REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
TINY = ["model.parts=[1,2]", "data.height=32", "data.width=16", "model.embed_dim=16", "train.max_batches_per_epoch=1"]
HOLD = """
import sys, time
from canlib.engine.run_folder import locked
with locked(sys.argv[1], "train"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(SMOKE), "--data-root", str(data), "--output", str(run), "--device", "cpu", *extra]


@contextlib.contextmanager
def _holder(run: Path, seconds: float = 60.0):
    """Another process holding the run folder's lock, as a training in progress does."""
    run.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_command_on_a_folder_in_use_is_refused_naming_the_holder(tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    assert cli.main([*_train_args(tiny_data, run), *TINY, "optim.epochs=1"]) == 0
    log_before = (run / "log.jsonl").read_text()
    with _holder(run) as proc:
        for argv in (
            _train_args(tiny_data, run, "--resume", *TINY, "optim.epochs=2"),
            _train_args(tiny_data, run, "--overwrite", *TINY, "optim.epochs=1"),
            ["evaluate", "--run", str(run), "--device", "cpu"],
            ["export", "--run", str(run), "--out", str(tmp_path / "w.pt")],
        ):
            caplog.clear()
            assert cli.main(argv) == cli.EXIT_BAD_INPUT, argv[0]
            assert f"is in use by pid {proc.pid}" in caplog.text and "(train)" in caplog.text
    assert (run / "log.jsonl").read_text() == log_before and not (tmp_path / "w.pt").exists()
    assert cli.main(_train_args(tiny_data, run, "--resume", *TINY, "optim.epochs=2")) == 0  # the lock went with it


def _paused_after_first_checkpoint(proc: subprocess.Popen, run: Path, deadline_s: float = 120.0) -> None:
    """Wait, within a deadline, until the training ``proc`` has written its first checkpoint, then
    stop it (SIGSTOP): a stopped process keeps its lock and cannot finish before the test goes on."""
    deadline = time.monotonic() + deadline_s
    while not (run / "checkpoints" / "last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the training wrote no checkpoint within {deadline_s:.0f} s (exit {proc.poll()})")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGSTOP)


@pytest.mark.parametrize("second", ["train", "resume", "evaluate"])
def test_a_command_meeting_a_training_is_refused_and_the_training_finishes_intact(tiny_data, tmp_path, second):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "canlib", *_train_args(tiny_data, run, *TINY, "optim.epochs=20")]
    first = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    _paused_after_first_checkpoint(first, run)  # training, lock held, and it cannot finish meanwhile
    other = {
        "train": argv,
        "resume": [*argv, "--resume"],
        "evaluate": [sys.executable, "-m", "canlib", "evaluate", "--run", str(run), "--device", "cpu"],
    }[second]
    try:
        refused = subprocess.run(other, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert refused.returncode == cli.EXIT_BAD_INPUT and f"in use by pid {first.pid} " in refused.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 21)) and (run / "metrics.json").is_file()
    assert not (run / "evaluations").exists()


def test_a_killed_training_leaves_no_lock_in_the_way_of_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "canlib", *_train_args(tiny_data, run, *TINY, "optim.epochs=20")]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _paused_after_first_checkpoint(proc, run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    assert cli.main(_train_args(tiny_data, run, "--resume", *TINY, "optim.epochs=2")) == 0


def test_overwrite_replaces_every_file_of_the_run_and_keeps_the_others(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert cli.main([*_train_args(tiny_data, run), *TINY, "optim.epochs=1"]) == 0
    assert cli.main(["evaluate", "--run", str(run), "--device", "cpu", "--flip-tta"]) == 0
    assert list((run / "evaluations").iterdir())
    (run / "notes.md").write_text("mine")
    assert cli.main([*_train_args(tiny_data, run, "--overwrite"), *TINY, "optim.epochs=1", "seed=1"]) == 0
    assert not (run / "evaluations").exists() and (run / "notes.md").read_text() == "mine"


def test_a_folder_that_is_not_a_run_is_refused_unless_overwrite(tiny_data, tmp_path, caplog):
    run = tmp_path / "photos"
    run.mkdir()
    (run / "holiday.jpg").write_bytes(b"")
    assert cli.main([*_train_args(tiny_data, run), *TINY, "optim.epochs=1"]) == cli.EXIT_BAD_INPUT
    assert "holds files that are not a run's (holiday.jpg)" in caplog.text
    assert sorted(p.name for p in run.iterdir()) == ["holiday.jpg"]
    assert cli.main([*_train_args(tiny_data, run, "--overwrite"), *TINY, "optim.epochs=1"]) == 0
    assert (run / "holiday.jpg").exists() and (run / "metrics.json").exists()


# ------------------------------------------------------------------------------------- late and misleading failures
def test_a_finite_divergence_stops_the_run_like_a_nan(tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    argv = [*_train_args(tiny_data, run), *TINY, "optim.epochs=3", "optim.lr=1e10"]
    assert cli.main(argv) == cli.EXIT_DIVERGED
    assert "the loss diverged" in caplog.text and "Training stopped" in caplog.text
    assert not (run / "metrics.json").exists()


def test_the_loss_guard_bounds_growth_from_the_first_step():
    from canlib.engine.checks import LossGuard

    guard = LossGuard(factor=100.0)
    assert guard.problem(5.0, 1, 0) is None and guard.problem(499.0, 1, 1) is None
    assert "diverged" in (guard.problem(501.0, 2, 0) or "")
    assert "non-finite" in (guard.problem(float("nan"), 2, 1) or "")
    assert LossGuard(factor=100.0).problem(0.01, 1, 0) is None  # a first loss below 1 bounds at the factor


def test_a_tampered_pretrained_file_gets_canlibs_refusal(tiny_data, tmp_path, caplog):
    class Marker:
        def __reduce__(self):
            return (print, ("code ran",))

    import torch

    torch.save({"conv1.weight": Marker()}, tmp_path / "trunk.pt")
    argv = [*_train_args(tiny_data, tmp_path / "run"), *TINY, f"model.pretrained={tmp_path / 'trunk.pt'}"]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "trunk.pt: refused" in caplog.text and "weights_only=False" not in caplog.text


def test_an_empty_profile_is_refused(tmp_path):
    from canlib.config import ConfigError, load_config

    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml is empty"):
        load_config(tmp_path / "empty.yaml")
