"""The probe's paths that damaged a user's files or gave a silently wrong result, in the grid and the
converters of runs: each is refused in one line naming the argument or file (exit code 2) before any
work or write, and nothing of the user's is overwritten or truncated."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
import yaml

from canlib import cli
from canlib.config import RunSections, config_hash, dump_config, load_config
from canlib.engine.checkpoint import load_checkpoint, save_checkpoint
from canlib.engine.errors import RunFolderError, TrainingInterrupted
from canlib.engine.run_folder import LOCK, FolderBusy
from canlib.engine.trainer import Trainer, train
from canlib.lab import grid, tables
from canlib.lab.analysis import METRIC_KEYS
from canlib.lab.records import incomplete_record, load_records
from canlib.lab.rows import Row, resolve, select_rows

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
TINY = ["model.parts=[1,2]", "data.height=32", "data.width=16", "model.embed_dim=16", "train.max_batches_per_epoch=1"]
RUNS_CSV = 'table,row,seed,run,mAP,rank1\nTable 2,"Part-1,2,3",0,aaaaaaaaaaaa,0.25,0.5\n'


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but a run folder's lock file) and its bytes."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


# ---------------------------------------------------------------------------------------------- the grid
@pytest.fixture()
def grid_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A grid's records folder holding tables of the user's (one line of Table 2), and its runs folder."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs.csv").write_text(RUNS_CSV)
    (results / "summary.csv").write_text("the user's summary\n")
    return results, tmp_path / "runs"


@pytest.fixture()
def fake_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each run the grid trains records a complete record at once (no training); the names trained."""
    trained: list[str] = []

    def train_and_record(
        cfg, run_dir, results_dir, device, threads, nproc=1, slot=None, fresh=False, slices=False, draws=()
    ):
        trained.append(Path(run_dir).name)
        dest = Path(results_dir) / Path(run_dir).name
        dest.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, dest / "config.yaml")
        (dest / "run.json").write_text(json.dumps({"git": {"commit": "c0ffee", "dirty": False}}))
        (dest / "metrics.json").write_text(json.dumps(dict.fromkeys(METRIC_KEYS, 0.5)))
        return str(dest)

    monkeypatch.setattr(grid, "train_and_record", train_and_record)
    return trained


def _ablate(data: Path, results: Path, runs: Path, *extra: str) -> int:
    argv = ["ablate", "--config", str(SMOKE), "--data-root", str(data), "--results", str(results)]
    return cli.main([*argv, "--runs", str(runs), *extra])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--tables", "table 2", "--tables 'table 2' is not a table of the grid; the tables: 'Table 2', 'Table 3'"),
        ("--tables", "Table 9", "--tables 'Table 9' is not a table of the grid; the tables: 'Table 2', 'Table 3'"),
        ("--tables", "table2", "--tables 'table2' is not a table of the grid; the tables: 'Table 2', 'Table 3'"),
        ("--rows", "Part-1,2,3 ", "--rows 'Part-1,2,3 ' is not a row of Table 2, Table 3, Table 4; its rows: 'Part-"),
        ("--rows", "Part-99", "--rows 'Part-99' is not a row of Table 2, Table 3, Table 4; its rows: 'Part-1,2,3'"),
    ],
)
def test_ablate_refuses_a_mistyped_table_or_row_before_any_work(
    tiny_data, grid_folders, fake_training, monkeypatch, caplog, option, value, message
):
    results, runs = grid_folders
    before = _snapshot(results)

    def no_grid(*args, **kwargs):
        raise AssertionError("the grid ran before its rows were checked")

    monkeypatch.setattr(grid, "run_grid", no_grid)
    assert _ablate(tiny_data, results, runs, option, value) == cli.EXIT_BAD_INPUT
    (error,) = _errors(caplog)
    assert error.startswith(message) and "\n" not in error
    assert _snapshot(results) == before and not runs.exists() and fake_training == []


def test_ablate_merges_its_rows_into_the_tables_whole_and_atomically(
    tiny_data, grid_folders, fake_training, monkeypatch
):
    results, runs = grid_folders
    assert _ablate(tiny_data, results, runs, "--tables", "Table 4", "--rows", "CE", "--seeds", "0") == 0
    assert _ablate(tiny_data, results, runs, "--tables", "Table 4", "--rows", "CE + triplet", "--seeds", "0", "1") == 0
    assert len(fake_training) == 3
    lines = (results / "runs.csv").read_text().splitlines()
    assert lines[1].startswith('Table 2,"Part-1,2,3",0,aaaaaaaaaaaa,0.25,0.5')  # the user's line, kept as it was
    assert [line.split(",")[:3] for line in lines[2:]] == [
        ["Table 4", "CE", "0"],
        ["Table 4", "CE + triplet", "0"],
        ["Table 4", "CE + triplet", "1"],
    ]
    summary = (results / "summary.csv").read_text()  # recomputed from the merged runs.csv
    assert 'Table 2,"Part-1,2,3",25.0' in summary and "Table 4,CE + triplet,50.0 ± 0.0" in summary
    assert sorted(p.name for p in results.iterdir() if p.is_file()) == ["runs.csv", "summary.csv"]  # no temporaries

    # a write that fails half-way, and an empty selection, leave both tables as they were
    before = _snapshot(results)
    records = tables.read_runs_table(results).to_dict("records")
    monkeypatch.setattr(tables.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        tables.write_tables(records[:1], results)
    with pytest.raises(ValueError, match="no runs to tabulate"):
        tables.write_tables([], results)
    assert _snapshot(results) == before
    assert sorted(p.name for p in results.iterdir() if p.is_file()) == ["runs.csv", "summary.csv"]


def test_ablate_refuses_a_repeated_seed(tiny_data, grid_folders, fake_training, caplog):
    results, runs = grid_folders
    before = _snapshot(results)
    assert _ablate(tiny_data, results, runs, "--tables", "Table 4", "--seeds", "0", "0") == cli.EXIT_BAD_INPUT
    assert _errors(caplog) == ["--seeds 0 0 repeats seed 0: give each seed once (each is one run)"]
    assert _snapshot(results) == before and not runs.exists() and fake_training == []


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: (d / "metrics.json").write_text("{}"), "its metrics.json has no finite mAP, rank1"),
        (lambda d: (d / "metrics.json").write_text('{"mAP": NaN, "rank1": 0.5}'), "metrics.json has no finite mAP)"),
        (lambda d: (d / "metrics.json").write_text(""), "unreadable"),
        (lambda d: (d / "config.yaml").unlink(), "no config.yaml"),
        (lambda d: (d / "run.json").unlink(), "no run.json"),
    ],
    ids=["empty metrics", "NaN mAP", "0-byte metrics", "no config", "no run record"],
)
def test_an_incomplete_record_is_missing_and_trained_again(tiny_data, grid_folders, fake_training, caplog, damage, why):
    results, runs = grid_folders
    args = ("--tables", "Table 4", "--rows", "CE", "CE + triplet", "--seeds", "0")
    assert _ablate(tiny_data, results, runs, *args) == 0
    damaged = results / fake_training[0]
    damage(damaged)
    kept = _snapshot(results / fake_training[1])
    rows = select_rows(["Table 4"], ["CE", "CE + triplet"])
    with caplog.at_level(logging.WARNING, logger="canlib.lab.records"):
        assert [r["row"] for r in load_records(SMOKE, tiny_data, rows, (0,), results)] == ["CE + triplet"]
    assert f"{damaged} is not a complete record (" in caplog.text and why in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="canlib.lab.records"):
        assert _ablate(tiny_data, results, runs, *args) == 0
    assert f"{damaged} is not a complete record (" in caplog.text and why in caplog.text
    assert "treated as missing" in caplog.text
    assert fake_training == [fake_training[0], fake_training[1], fake_training[0]]  # the damaged one alone, again
    assert incomplete_record(damaged) is None and _snapshot(results / fake_training[1]) == kept
    frame = tables.read_runs_table(results)
    assert frame["mAP"].notna().all() and len(frame) == 3  # the user's line and the two runs, no NaN row


# ---------------------------------------------------------------------------------------------- export, evaluate
@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory) -> Path:
    """A tiny run trained to its end (one epoch of one batch)."""
    run = tmp_path_factory.mktemp("probe") / "finished"
    train(load_config(SMOKE, [f"data.root={tiny_data}", *TINY, "optim.epochs=1"]), run, device="cpu")
    return run


@pytest.fixture(scope="module")
def unfinished(tiny_data, tmp_path_factory) -> Path:
    """A tiny run stopped after epoch 1 of 3: its checkpoint of epoch 1, no metrics.json."""
    run = tmp_path_factory.mktemp("probe") / "unfinished"
    real = Trainer.train_one_epoch

    def stop(self, epoch):
        if epoch >= 2:
            raise KeyboardInterrupt
        return real(self, epoch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_one_epoch", stop)
        with pytest.raises(TrainingInterrupted, match="interrupted after 1 of 3 epochs"):
            train(load_config(SMOKE, [f"data.root={tiny_data}", *TINY, "optim.epochs=3"]), run, device="cpu")
    return run


def test_export_refuses_an_existing_destination_and_an_unfinished_run(finished, unfinished, tmp_path, caplog):
    mine = {name: tmp_path / name for name in ("mine.pt", "mine.onnx")}
    for path in mine.values():
        path.write_text("the user's file\n")
    before = _snapshot(tmp_path)
    cases = {
        ("--run", str(finished), "--out", str(mine["mine.pt"])): f"{mine['mine.pt']} already exists: pass --overwrite",
        ("--run", str(finished), "--onnx", str(mine["mine.onnx"]), "--no-check"): f"{mine['mine.onnx']} already exists",
        ("--run", str(unfinished), "--out", str(tmp_path / "u.pt")): "epoch 1 of 3 (optim.epochs)",
        ("--run", str(unfinished), "--onnx", str(tmp_path / "u.onnx"), "--no-check"): "epoch 1 of 3 (optim.epochs)",
    }
    runs_before = {run: _snapshot(run) for run in (finished, unfinished)}
    for argv, message in cases.items():
        caplog.clear()
        assert cli.main(["export", *argv]) == cli.EXIT_BAD_INPUT, argv
        (error,) = _errors(caplog)
        assert message in error and "\n" not in error, argv
    assert "did not finish training" in error and "pass --allow-unfinished" in error
    assert _snapshot(tmp_path) == before and {run: _snapshot(run) for run in runs_before} == runs_before

    no_metrics = tmp_path / "no-metrics"  # a finished checkpoint whose final evaluation never came
    shutil.copytree(finished, no_metrics)
    (no_metrics / "metrics.json").unlink()
    caplog.clear()
    assert cli.main(["export", "--run", str(no_metrics), "--out", str(tmp_path / "n.pt")]) == cli.EXIT_BAD_INPUT
    assert "it has no metrics.json" in caplog.text and not (tmp_path / "n.pt").exists()

    # asked for: replaced, and exported
    assert cli.main(["export", "--run", str(finished), "--out", str(mine["mine.pt"]), "--overwrite"]) == 0
    assert mine["mine.pt"].read_bytes() != before["mine.pt"]
    assert cli.main(["export", "--run", str(unfinished), "--out", str(tmp_path / "u.pt"), "--allow-unfinished"]) == 0


def test_evaluate_and_export_refuse_weights_of_another_configuration(finished, tmp_path, caplog):
    edited = tmp_path / "edited"
    shutil.copytree(finished, edited)
    cfg = yaml.safe_load((edited / "config.yaml").read_text())
    assert cfg["model"]["pooling"] == "paper"
    cfg["model"]["pooling"] = "adaptive"  # same shapes, another model
    (edited / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    stored = json.loads((finished / "run.json").read_text())["config_hash"]
    now = config_hash(load_config(edited / "config.yaml"))
    assert stored != now
    before = _snapshot(edited)
    for argv in (
        ["evaluate", "--run", str(edited), "--device", "cpu"],
        ["evaluate", "--run", str(edited), "--device", "cpu", "--out", str(tmp_path / "e.json")],
        ["export", "--run", str(edited), "--out", str(tmp_path / "e.pt")],
        ["export", "--run", str(edited), "--onnx", str(tmp_path / "e.onnx"), "--no-check"],
    ):
        caplog.clear()
        assert cli.main(argv) == cli.EXIT_BAD_INPUT, argv
        (error,) = _errors(caplog)
        assert f"was trained with configuration {stored}, but {edited / 'config.yaml'} hashes to {now}" in error
        assert "pass --force" in error and "\n" not in error
    assert _snapshot(edited) == before and not [p for p in tmp_path.iterdir() if p.name.startswith("e.")]

    caplog.clear()
    forced = ["evaluate", "--run", str(edited), "--device", "cpu", "--force", "--out", str(tmp_path / "e.json")]
    assert cli.main(forced) == 0
    assert f"trained with configuration {stored}" in caplog.text and "(--force)" in caplog.text
    assert (tmp_path / "e.json").is_file()
    assert cli.main(["evaluate", "--run", str(finished), "--device", "cpu", "--out", str(tmp_path / "f.json")]) == 0


# ------------------------------------------------------------------------- jobs and devices, before any work
@pytest.mark.parametrize("command", ["ablate", "decide"])
@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_jobs_below_one_are_refused_naming_the_option(tmp_path, capsys, monkeypatch, command, jobs):
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: pytest.fail("the grid ran"))
    argv = [command, "--config", str(SMOKE), "--data-root", str(tmp_path), "--jobs", jobs]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == cli.EXIT_BAD_INPUT
    assert "argument --jobs: expected a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ablate", "decide"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "gpu", "tpu"])
def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path, caplog, monkeypatch, command, device):
    from canlib.lab import decide

    monkeypatch.setattr(cli.launch, "local_gpus", lambda: [])  # a CPU machine, whatever runs the test
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: pytest.fail("the grid ran"))
    monkeypatch.setattr(decide, "run_decisions", lambda *a, **k: pytest.fail("the decisions ran"))
    results = tmp_path / "results"
    argv = [
        command,
        "--config",
        str(SMOKE),
        "--data-root",
        str(tmp_path),
        "--device",
        device,
        "--results",
        str(results),
    ]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    (message,) = _errors(caplog)
    assert f"--device {device}" in message or f"--device {device!r}" in message
    assert (
        ("no CUDA GPU" in message) if device.startswith("cuda") else ("expected cpu, auto, cuda or cuda:N" in message)
    )
    assert not results.exists()


def test_a_gpu_index_beyond_the_machines_is_named(caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(cli.launch, "local_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: pytest.fail("the grid ran"))
    argv = ["ablate", "--config", str(SMOKE), "--data-root", str(tmp_path), "--device", "cuda:2"]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "2 visible GPU(s), cuda:0 to cuda:1" in _errors(caplog)[0]


# ---------------------------------------------------------------------------------------------- the grid's runs
def _hold_lock(folder: Path, lock_file: Path | None = None) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s lock (as a running job does) until it is killed."""
    code = (
        "import sys, time; from canlib.engine.run_folder import locked\n"
        "with locked(sys.argv[1], 'ablate', sys.argv[2] or None):\n"
        "    print('held', flush=True); time.sleep(120)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), str(lock_file or "")], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_job_that_finds_its_run_busy_neither_opens_nor_truncates_its_log(tiny_data, tmp_path, monkeypatch):
    cfg = resolve(SMOKE, select_rows(["Table 4"], ["CE"])[0], 0, tiny_data)
    run = tmp_path / "runs" / config_hash(cfg)
    run.parent.mkdir()
    log_file = run.with_name(f"{run.name}.log")
    log_file.write_text("epoch 1 of the running job\n")
    before = _snapshot(tmp_path)
    monkeypatch.setattr(grid.subprocess, "run", lambda *a, **k: pytest.fail("a second child started"))
    holder = _hold_lock(run, grid.run_lock(run))
    try:
        with pytest.raises(FolderBusy, match=rf"{run} is in use by pid {holder.pid} on .* \(ablate\)"):
            grid.train_and_record(cfg, str(run), str(tmp_path / "results"), "cpu", 1, fresh=True)
    finally:
        holder.kill()
        holder.wait()
    after = {
        name: data
        for name, data in _snapshot(tmp_path).items()
        if name != grid.run_lock(run).relative_to(tmp_path).as_posix()
    }
    assert after == before and not run.exists()  # the log as it was, no configuration, no folder


def test_ablate_refuses_a_row_that_cannot_train_before_any_training(tiny_data, grid_folders, fake_training, caplog):
    results, runs = grid_folders
    before = _snapshot(results)
    rows = ("--rows", "Part-1,2,3", "Part-1,3,5,7,9")  # smoke.yaml's height 128 is too short for part 9
    assert _ablate(tiny_data, results, runs, "--tables", "Table 2", *rows, "--seeds", "0") == cli.EXIT_BAD_INPUT
    assert _errors(caplog) == [
        "row 'Part-1,3,5,7,9' of Table 2 cannot train: data.height=128 is too small for "
        "model.parts=[1, 3, 5, 7, 9] (at least 129 pixels high)"
    ]
    assert _snapshot(results) == before and fake_training == [] and not runs.exists()


def _fake_child(failing: str) -> Callable[..., list[str]]:
    """A stand-in for ``python -m canlib train``: the run ``failing`` stops with the CLI's one error line;
    any other records a complete run (configuration, run record, log, metrics) in its folder."""
    code = (
        "import json, shutil, sys; from pathlib import Path\n"
        "cfg, run = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "if run.name == sys.argv[3]:\n"
        "    print('2026-01-01 10:00:00,000 INFO canlib.data: 16 identities')\n"
        "    print('2026-01-01 10:00:01,000 ERROR canlib.cli: --device cuda:1: no CUDA GPU is visible'); sys.exit(2)\n"
        "run.mkdir(parents=True, exist_ok=True); shutil.copy(cfg, run / 'config.yaml')\n"
        "(run / 'run.json').write_text(json.dumps({'git': {'commit': 'c0ffee', 'dirty': False}}))\n"
        "(run / 'log.jsonl').write_text(''); metrics = dict.fromkeys(sys.argv[4:], 0.5)\n"
        "(run / 'metrics.json').write_text(json.dumps(metrics))\n"
    )

    def command(cfg_path, run_dir, device, nproc=1):
        return [sys.executable, "-c", code, str(cfg_path), str(run_dir), failing, *METRIC_KEYS]

    return command


def test_a_failed_run_is_named_with_its_log_and_the_others_are_tabulated(tiny_data, grid_folders, monkeypatch, caplog):
    results, runs = grid_folders
    failing = config_hash(resolve(SMOKE, select_rows(["Table 4"], ["CE"])[0], 0, tiny_data))
    monkeypatch.setattr(grid.launch, "train_command", _fake_child(failing))
    assert _ablate(tiny_data, results, runs, "--tables", "Table 4", "--rows", "CE", "CE + triplet", "--seeds", "0") == 2
    errors = _errors(caplog)
    assert errors[0] == (
        f"run {failing} failed (exit code 2): --device cuda:1: no CUDA GPU is visible "
        f"(its log: {runs / (failing + '.log')})"
    )
    assert errors[1] == f"1 run(s) failed: the tables ({results / 'runs.csv'}) hold only the 1 run(s) recorded; " + (
        "fix the cause and run ablate again"
    )
    lines = (results / "runs.csv").read_text().splitlines()
    assert lines[1].startswith('Table 2,"Part-1,2,3",0,aaaaaaaaaaaa')  # the user's line, kept
    assert [line.split(",")[:3] for line in lines[2:]] == [["Table 4", "CE + triplet", "0"]]  # not the failed row
    assert not (results / failing).exists()


def test_a_second_ablate_on_the_grid_is_refused_naming_the_first(tiny_data, grid_folders, fake_training, caplog):
    results, runs = grid_folders
    runs.mkdir()
    before = _snapshot(results)
    holder = _hold_lock(runs)
    try:
        assert _ablate(tiny_data, results, runs, "--tables", "Table 4", "--seeds", "0") == cli.EXIT_BAD_INPUT
    finally:
        holder.kill()
        holder.wait()
    (error,) = _errors(caplog)
    assert error.startswith(f"{runs} is in use by pid {holder.pid} on ") and error.endswith(
        "(ablate): wait for it to finish, or choose another folder"
    )
    assert _snapshot(results) == before and fake_training == []


@pytest.mark.parametrize("minutes", ["-5", "0"])
def test_slurm_time_below_one_is_refused_naming_the_option(tmp_path, capsys, monkeypatch, minutes):
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: pytest.fail("the grid ran"))
    argv = ["ablate", "--config", str(SMOKE), "--data-root", str(tmp_path), "--launcher", "submitit"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--submitit-cluster", "local", "--slurm-time", minutes])
    assert exit_info.value.code == cli.EXIT_BAD_INPUT
    assert (
        f"argument --slurm-time: expected a whole number of at least 1, got {int(minutes)}" in capsys.readouterr().err
    )
    assert sorted(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- controls, decide
def test_controls_and_decide_check_the_validation_split_before_writing(tiny_data, tmp_path, monkeypatch, caplog):
    from canlib.lab import controls, decide

    data_before = _snapshot(tiny_data)
    monkeypatch.setattr(decide, "run_grid", lambda *a, **k: pytest.fail("a decision run started"))
    out = tmp_path / "controls.json"
    for argv in (
        ["controls", "--config", str(SMOKE), "--data-root", str(tiny_data), "--out", str(out)],
        ["decide", "--config", str(SMOKE), "--data-root", str(tiny_data), "--results", str(tmp_path / "d")],
        [
            "decide",
            "--config",
            str(SMOKE),
            "--data-root",
            str(tiny_data),
            "--results",
            str(tmp_path / "d"),
            "data.val_ids=7",
        ],
    ):
        caplog.clear()
        assert cli.main(argv) == cli.EXIT_BAD_INPUT, argv
        (error,) = _errors(caplog)
        asked = 7 if "data.val_ids=7" in argv else 50
        assert error == (
            f"data.val_ids={asked} holds out more training identities than {tiny_data} has (8): "
            "pass data.val_ids=N with N from 1 to 6"
        )
    assert _snapshot(tiny_data) == data_before and sorted(tmp_path.iterdir()) == []  # no gallery people drawn

    # the validation keys as overrides: on every decision run, and on every validation split of the control
    class Stop(Exception):
        pass

    def first_stage(profile, root, rows, *args, **kwargs):
        seen.extend(rows)
        raise Stop

    seen: list[Row] = []
    monkeypatch.setattr(decide, "run_grid", first_stage)
    argv = ["decide", "--config", str(SMOKE), "--data-root", str(tiny_data), "--results", str(tmp_path / "d")]
    with pytest.raises(Stop):
        cli.main([*argv, "--runs", str(tmp_path / "r"), "data.val_ids=3", "data.val_gallery_ids=0"])
    assert seen and all(r.overrides.index("data.val_ids=3") > r.overrides.index("data.val_ids=50") for r in seen)
    data = RunSections.from_config(load_config(SMOKE, ["data.val_ids=3"])).data
    assert {s["num_ids"] for s in controls.splits_for(data).values() if s} == {3}
    assert _snapshot(tiny_data) == data_before


def test_controls_refuses_a_folder_as_out_before_any_work(tiny_data, tmp_path, monkeypatch, caplog):
    from canlib.lab import controls

    monkeypatch.setattr(controls, "trunk_only", lambda *a, **k: pytest.fail("the control was measured"))
    folder = tmp_path / "controls"
    folder.mkdir()
    argv = ["controls", "--config", str(SMOKE), "--data-root", str(tiny_data), "--out", str(folder)]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert _errors(caplog) == [f"cannot write {folder}: it is a folder; name a file inside it"]
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------------------------------------- arguments
def test_overrides_on_both_sides_of_an_option_are_taken(tiny_data, tmp_path, monkeypatch, capsys):
    from canlib.lab import decide

    trained: list[dict] = []
    monkeypatch.setattr(cli, "train", lambda cfg, out, **k: trained.append(cfg) or {"mAP": 0.5})
    argv = ["train", "--config", str(SMOKE), "optim.epochs=1", "--output", str(tmp_path / "r"), "model.embed_dim=16"]
    assert cli.main([*argv, "--data-root", str(tiny_data), "data.height=32"]) == 0
    assert (trained[0]["optim"]["epochs"], trained[0]["model"]["embed_dim"], trained[0]["data"]["height"]) == (
        1,
        16,
        32,
    )

    given: list[Sequence[str]] = []
    monkeypatch.setattr(decide, "run_decisions", lambda *a, overrides=(), **k: given.append(overrides) or [])
    argv = ["decide", "data.val_ids=3", "--config", str(SMOKE), "--data-root", str(tiny_data), "data.val_seed=1"]
    assert cli.main([*argv, "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "d")]) == 0
    assert list(given[0]) == ["data.val_ids=3", "data.val_seed=1"]

    with pytest.raises(SystemExit) as exit_info:  # anything else argparse did not take is still its error
        cli.main([*argv, "--bogus"])
    assert exit_info.value.code == cli.EXIT_BAD_INPUT and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["make-synthetic", "--out", str(tmp_path / "s"), "a=1"])  # a command without overrides
    assert "unrecognized arguments: a=1" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--output", "--data-root"])
def test_a_path_that_is_not_utf8_is_refused_and_leaves_nothing(tiny_data, tmp_path, monkeypatch, caplog, option):
    monkeypatch.setattr(cli, "train", lambda *a, **k: pytest.fail("training started"))
    bad = str(tmp_path / os.fsdecode(b"run\xff"))
    paths = {"--output": str(tmp_path / "run"), "--data-root": str(tiny_data), option: bad}
    argv = ["train", "--config", str(SMOKE), *(x for pair in paths.items() for x in pair)]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert _errors(caplog) == [
        f"{option} {os.fsencode(bad)!r} is not UTF-8: canlib records paths as UTF-8 text (config.yaml, run.json); "
        "rename it, or name another place"
    ]
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(RunFolderError, match=r"is not a UTF-8 path"):  # the library's own check, before any write
        train(load_config(SMOKE, [f"data.root={tiny_data}", *TINY]), Path(bad), device="cpu")
    assert sorted(tmp_path.iterdir()) == []


def test_an_output_that_is_a_symlink_loop_is_named(tiny_data, tmp_path, monkeypatch, caplog):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    argv = ["train", "--config", str(SMOKE), "--data-root", str(tiny_data), "--output", str(loop / "run"), *TINY]
    for output in (loop, loop / "run"):
        caplog.clear()
        argv[-len(TINY) - 1] = str(output)
        assert cli.main(argv) == cli.EXIT_BAD_INPUT
        assert _errors(caplog) == [
            f"--output {output}: {loop} is a symbolic link that leads nowhere (a loop, or a missing target); "
            "remove it or choose another --output"
        ]
    assert [p.name for p in tmp_path.iterdir()] == ["loop"] and loop.is_symlink()


# ---------------------------------------------------------------------------------------------- a full disk
FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
import torch
from canlib import cli
from canlib.engine.checkpoint import save_checkpoint
from canlib.files import write_text_atomically

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
limit, out, run = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
said = {}
for name, write in {
    "checkpoint": lambda: save_checkpoint({"w": torch.zeros(limit)}, out / "checkpoints" / "last.pt"),
    "record": lambda: write_text_atomically(out / "evaluation.json", "x" * (limit + 1)),
}.items():
    try:
        write()
    except OSError as exc:
        said[name] = str(exc)
said["export"] = cli.main(["export", "--run", run, "--out", str(out / "weights.pt"), "--overwrite"])
said["onnx"] = cli.main(["export", "--run", run, "--onnx", str(out / "m.onnx"), "--no-check", "--overwrite"])
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))  # smaller than an evaluation's record
said["evaluate"] = cli.main(["evaluate", "--run", run, "--out", str(out / "evaluation.json")])
print(json.dumps(said))
"""


def test_a_full_disk_is_named_and_leaves_no_partial_file(finished, tmp_path):
    save_checkpoint({"w": torch.ones(3)}, tmp_path / "checkpoints" / "last.pt")  # the last good checkpoint
    for name in ("evaluation.json", "weights.pt", "m.onnx"):
        (tmp_path / name).write_text("the user's good file\n")
    before = _snapshot(tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK, "20000", str(tmp_path), str(finished)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    said = json.loads(child.stdout.strip().splitlines()[-1])
    full = "the disk is full (File too large); the partial file was removed: free some space and run the command again"
    assert said["checkpoint"] == f"cannot write {tmp_path / 'checkpoints' / 'last.pt'}: {full}"
    assert said["record"] == f"cannot write {tmp_path / 'evaluation.json'}: {full}"
    assert said["export"] == said["onnx"] == said["evaluate"] == cli.EXIT_BAD_INPUT
    errors = [line.split(" ERROR canlib.cli: ", 1)[1] for line in child.stderr.splitlines() if " ERROR " in line]
    assert errors == [f"cannot write {tmp_path / name}: {full}" for name in ("weights.pt", "m.onnx", "evaluation.json")]
    assert _snapshot(tmp_path) == before  # no .tmp left, every good file as it was
    assert torch.equal(load_checkpoint(tmp_path / "checkpoints" / "last.pt")["w"], torch.ones(3))


# ---------------------------------------------------------------------------------------------- convert-cuhk03
def _cuhk03_mat(path: Path, variants: Sequence[str] = ("labeled", "detected")) -> None:
    """A fake cuhk-03.mat (MATLAB v7.3, HDF5): 2 camera pairs x 2 ids x 10 cells, 4 of them images."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        for variant in variants:
            pair_refs = []
            for pair in range(2):
                cells = np.empty((10, 2), dtype=h5py.ref_dtype)
                for pid in range(2):
                    for image in range(10):
                        shown = image in (0, 1, 5, 6)
                        data = np.full((3, 4, 8), 10 * pair + pid, np.uint8) if shown else np.zeros(2, np.uint64)
                        cells[image, pid] = f.create_dataset(f"img/{variant}/{pair}/{pid}/{image}", data=data).ref
                pair_refs.append(f.create_dataset(f"pairs/{variant}/{pair}", data=cells).ref)
            refs = np.empty((1, 2), dtype=h5py.ref_dtype)
            refs[0, :] = pair_refs
            f.create_dataset(variant, data=refs)


def _cuhk03_split(path: Path, train: Sequence[int] = range(1, 9), drop: str = "", gallery: int = 16) -> None:
    """A new-protocol split file (MATLAB v5) of the fake release's 16 images."""
    import numpy as np
    import scipy.io

    names = [
        f"{p + 1}_{i + 1:03d}_{1 if c < 5 else 2}_{c + 1:02d}.png"
        for p in range(2)
        for i in range(2)
        for c in (0, 1, 5, 6)
    ]
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    content = {
        "filelist": filelist,
        "labels": np.array([1 + 2 * (int(n[0]) - 1) + int(n[2:5]) - 1 for n in names])[:, None],
        "train_idx": np.array(list(train))[:, None],
        "query_idx": np.array([[9], [13]]),
        "gallery_idx": np.array([[10], [11], [12], [14], [15], [gallery]]),
    }
    scipy.io.savemat(path, {k: v for k, v in content.items() if k != drop})


@pytest.fixture()
def cuhk03(tmp_path: Path) -> Path:
    """The fake release and both variants' split files in ``tmp_path/in``."""
    base = tmp_path / "in"
    base.mkdir()
    _cuhk03_mat(base / "cuhk-03.mat")
    for variant in ("labeled", "detected"):
        _cuhk03_split(base / f"cuhk03_new_protocol_config_{variant}.mat")
    return base


def _convert(mat: Path, out: Path, *splits: Path | str, extra: Sequence[str] = ()) -> int:
    return cli.main(["convert-cuhk03", "--mat", str(mat), "--splits", *map(str, splits), "--out", str(out), *extra])


def test_convert_cuhk03_again_into_the_same_out_is_refused_unless_overwrite(cuhk03, tmp_path, caplog):
    out = tmp_path / "out"
    labeled = cuhk03 / "cuhk03_new_protocol_config_labeled.mat"
    assert _convert(cuhk03 / "cuhk-03.mat", out, labeled) == 0
    other = tmp_path / "other" / labeled.name  # another split: the first four images train
    other.parent.mkdir()
    _cuhk03_split(other, train=range(1, 5))
    before = _snapshot(out)
    caplog.clear()
    assert _convert(cuhk03 / "cuhk-03.mat", out, other) == cli.EXIT_BAD_INPUT
    assert _errors(caplog) == [
        f"--out {str(out)!r} already holds {out / 'cuhk03-np' / 'labeled'} (16 files): pass --overwrite to replace "
        "it whole, or choose another --out (converting into it would mix two splits' images)"
    ]
    assert _snapshot(out) == before
    assert _convert(cuhk03 / "cuhk-03.mat", out, other, extra=["--overwrite"]) == 0  # replaced whole
    assert len(list((out / "cuhk03-np" / "labeled" / "bounding_box_train").iterdir())) == 4
    assert sorted(p.name for p in (out / "cuhk03-np").iterdir()) == ["labeled"]  # no partial folder beside it


def test_convert_cuhk03_refuses_bad_inputs_before_any_write(cuhk03, tmp_path, caplog):
    mat, out = cuhk03 / "cuhk-03.mat", tmp_path / "out"
    labeled = cuhk03 / "cuhk03_new_protocol_config_labeled.mat"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.mat").write_bytes(b"not a mat file at all\n" * 10)
    _cuhk03_split(bad / "cuhk03_new_protocol_config_labeled.mat", gallery=99)
    _cuhk03_split(bad / "nolabels_labeled.mat", drop="labels")
    (bad / "garbage_labeled.mat").write_bytes(b"\x00garbage" * 40)
    _cuhk03_mat(bad / "labeled-only.mat", variants=("labeled",))
    expected = "expected the original release's cuhk-03.mat, a MATLAB v7.3 (HDF5) file"
    split_keys = "filelist, labels, train_idx, query_idx, gallery_idx"
    cases = {
        (bad / "garbage.mat", (labeled,)): f"--mat {str(bad / 'garbage.mat')!r} is not an HDF5 file: {expected}",
        (labeled, (labeled,)): f"--mat {str(labeled)!r} is a MATLAB v5 file (such as a split file): {expected}",
        (mat, (bad / "cuhk03_new_protocol_config_labeled.mat",)): "gallery_idx holds index 99, outside its 16 files",
        (
            mat,
            (bad / "nolabels_labeled.mat",),
        ): f"has no labels: expected a new-protocol split file (cuhk03_new_protocol_config_labeled.mat: {split_keys})",
        (mat, (bad / "garbage_labeled.mat",)): "cannot be read as a MATLAB v5 file (",
        (bad / "labeled-only.mat", (cuhk03,)): "has no 'detected' images: expected the original release's cuhk-03.mat",
        (mat, (tmp_path / "nowhere",)): f"--splits {str(tmp_path / 'nowhere')!r}: no such file or folder (expected",
    }
    for (raw, splits), message in cases.items():
        caplog.clear()
        assert _convert(raw, out, *splits) == cli.EXIT_BAD_INPUT, message
        (error,) = _errors(caplog)
        assert message in error and "\n" not in error, error
        assert not out.exists(), message
