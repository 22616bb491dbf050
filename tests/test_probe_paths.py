"""The probe's paths that damaged a user's files or gave a silently wrong result, in the grid and the
converters of runs: each is refused in one line naming the argument or file (exit code 2) before any
work or write, and nothing of the user's is overwritten or truncated."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from canlib import cli
from canlib.config import config_hash, dump_config, load_config
from canlib.engine.errors import TrainingInterrupted
from canlib.engine.run_folder import LOCK
from canlib.engine.trainer import Trainer, train
from canlib.lab import grid
from canlib.lab.analysis import METRIC_KEYS

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

    def train_and_record(cfg, run_dir, results_dir, device, threads, nproc=1, slot=None, fresh=False, slices=False):
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
    records = grid.read_runs_table(results).to_dict("records")
    monkeypatch.setattr(grid.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        grid.write_tables(records[:1], results)
    with pytest.raises(ValueError, match="no runs to tabulate"):
        grid.write_tables([], results)
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
    rows = grid.select_rows(["Table 4"], ["CE", "CE + triplet"])
    with caplog.at_level(logging.WARNING, logger="canlib.lab.grid"):
        assert [r["row"] for r in grid.load_records(SMOKE, tiny_data, rows, (0,), results)] == ["CE + triplet"]
    assert f"{damaged} is not a complete record (" in caplog.text and why in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="canlib.lab.grid"):
        assert _ablate(tiny_data, results, runs, *args) == 0
    assert f"{damaged} is not a complete record (" in caplog.text and why in caplog.text
    assert "treated as missing" in caplog.text
    assert fake_training == [fake_training[0], fake_training[1], fake_training[0]]  # the damaged one alone, again
    assert grid.incomplete_record(damaged) is None and _snapshot(results / fake_training[1]) == kept
    frame = grid.read_runs_table(results)
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
