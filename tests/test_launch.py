"""Where the grid's runs train: GPU slots on one machine, torchrun runs, submitit jobs, and the cost estimate.

The GPUs are faked (CUDA_VISIBLE_DEVICES entries are only strings to the placement); the torchrun
run is two gloo processes on the CPU; the submitit grid goes through submitit's local executor,
the same code path a Slurm job runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from canlib import cli
from canlib.config import config_hash, dump_config
from canlib.engine.record import RECORDED_FILES
from canlib.lab import cost, grid, launch
from canlib.lab.grid import run_grid
from canlib.lab.rows import Row, ablation_rows, resolve

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _rows(*labels: str) -> list[Row]:
    return [r for r in ablation_rows(["Table 4"]) if r.label in labels]


# ---------------------------------------------------------------------------------------------- placement
def test_place_gives_each_job_its_own_gpus_and_names_the_counts_when_short():
    gpus = ["0", "1", "2", "3"]
    assert launch.place(4, gpus) == [("0",), ("1",), ("2",), ("3",)]
    assert launch.place(2, gpus, 2) == [("0", "1"), ("2", "3")]
    assert launch.place(1, ["GPU-a", "GPU-b", "GPU-c"], 3) == [("GPU-a", "GPU-b", "GPU-c")]
    assert launch.place(1, gpus, 3) == [("0", "1", "2")]  # the fourth stays idle
    with pytest.raises(ValueError, match=r"--jobs 5 x --gpus-per-run 1 = 5 GPUs asked for, 4 visible"):
        launch.place(5, gpus)
    with pytest.raises(ValueError, match=r"= 6 GPUs asked for, 4 visible \(0, 1, 2, 3\); at most --jobs 1"):
        launch.place(2, gpus, 3)
    with pytest.raises(ValueError, match=r"0 visible \(none\)"):
        launch.place(1, [])
    with pytest.raises(ValueError, match="at least 1"):
        launch.place(0, gpus)


def test_visible_gpus_keep_the_parents_own_list():
    assert launch.visible_gpus(2, None) == ["0", "1"]
    assert launch.visible_gpus(2, "4,6") == ["4", "6"]  # a child must name the parent's GPUs, not 0 and 1
    assert launch.visible_gpus(1, "GPU-5f1c, 3") == ["GPU-5f1c"]  # torch sees only the first
    assert launch.visible_gpus(0, "") == []


def test_a_run_over_k_gpus_must_split_the_pk_batch_evenly():
    launch.check_split(8, 4)
    with pytest.raises(ValueError, match=r"--gpus-per-run 3 cannot split data.p=8 .* one of 1, 2, 4, 8"):
        launch.check_split(8, 3)


def test_child_command_and_environment():
    one = launch.train_command("r.yaml", "runs/r", "cuda")
    assert one[1:5] == ["-m", "canlib", "train", "--config"] and one[-2:] == ["--resume", "--no-progress"]
    two = launch.train_command("r.yaml", "runs/r", "cuda", nproc=2)
    assert two[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert two[5:8] == ["-m", "canlib", "train"]
    env = launch.child_env({"CUDA_VISIBLE_DEVICES": "0,1,2,3", "PATH": "/bin"}, 8, ("2", "3"), nproc=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OMP_NUM_THREADS"] == "4" and env["PATH"] == "/bin"
    inherited = launch.child_env({"CUDA_VISIBLE_DEVICES": "5"}, None, None)
    assert inherited == {"CUDA_VISIBLE_DEVICES": "5"}  # a Slurm job's own GPUs, untouched


def test_grid_places_one_run_per_gpu_slot_and_queues_the_rest(tiny_data, tmp_path, monkeypatch, caplog):
    """Four runs on two fake 1-GPU slots: at most two at once, never two on one slot, every run trained."""
    lock, running, seen = threading.Lock(), set(), []

    def fake_train(cfg, run_dir, results_dir, device, threads, nproc, slot, fresh, slices=False, draws=()):
        with lock:
            assert slot not in running, f"slot {slot} given to two runs at once"
            running.add(slot)
            seen.append((slot, len(running), nproc, device))
        time.sleep(0.2)
        dest = Path(results_dir) / Path(run_dir).name
        dest.mkdir(parents=True)
        (dest / "metrics.json").write_text(json.dumps({"mAP": 0.5, "rank1": 0.5}))
        (dest / "run.json").write_text(json.dumps({"git": {"commit": "x", "dirty": False}}))
        dump_config(cfg, dest / "config.yaml")  # a complete record: configuration, run record, metrics
        with lock:
            running.discard(slot)
        return str(dest)

    monkeypatch.setattr(grid, "train_and_record", fake_train)
    rows = _rows(*(r.label for r in ablation_rows(["Table 4"])))
    kwargs = {"rows": rows, "seeds": (0,), "results_dir": tmp_path / "results", "runs_dir": tmp_path / "runs"}
    with caplog.at_level(logging.INFO, logger="canlib.lab.grid"):
        records = run_grid(SMOKE, tiny_data, device="cuda", jobs=2, gpus=["3", "7", "9"], **kwargs)
    assert len(records) == len(seen) == 4
    assert {s for s, *_ in seen} == {("3",), ("7",)} and max(n for _, n, *_ in seen) <= 2
    assert {(nproc, device) for *_, nproc, device in seen} == {(1, "cuda")}
    assert "cost: 4 runs to train, 128 training images (each run 2 epochs x 16 images)" in caplog.text
    assert "no measured throughput" in caplog.text
    with pytest.raises(ValueError, match="4 GPUs asked for, 3 visible"):
        run_grid(SMOKE, tiny_data, device="cuda", jobs=2, gpus=["3", "7", "9"], gpus_per_run=2, force=True, **kwargs)
    with pytest.raises(ValueError, match=r"--gpus-per-run 3 cannot split data\.p=4"):
        run_grid(SMOKE, tiny_data, device="cuda", jobs=1, gpus=["3", "7", "9"], gpus_per_run=3, force=True, **kwargs)


def test_a_two_gpu_run_trains_under_torchrun(tiny_data, tmp_path):
    """--gpus-per-run 2 on two fake GPUs: torchrun starts two processes (gloo on the CPU) and rank 0 records."""
    (record,) = run_grid(
        SMOKE,
        tiny_data,
        rows=_rows("CE"),
        seeds=(0,),
        results_dir=tmp_path / "results",
        runs_dir=tmp_path / "runs",
        gpus=["0", "1"],
        gpus_per_run=2,
        threads_per_job=2,
    )
    run = json.loads((tmp_path / "results" / record["run"] / "run.json").read_text())
    assert run["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert 0 <= record["mAP"] <= 1


# ---------------------------------------------------------------------------------------------- submitit
def test_submitit_local_executor_trains_the_missing_runs_into_the_grids_records(tiny_data, tmp_path, monkeypatch):
    """The 2-run smoke grid through submitit's local executor (what a Slurm job runs); a rerun submits nothing."""
    submitted, real_submit = [], launch.submit

    def submit(fn, calls, options):
        submitted.append(len(calls))
        return real_submit(fn, calls, options)

    monkeypatch.setattr(launch, "submit", submit)
    options = launch.ClusterOptions(folder=tmp_path / "submitit", timeout_min=10, cluster="local")
    rows = _rows("CE", "CE + triplet")
    kwargs = {"rows": rows, "seeds": (0,), "results_dir": tmp_path / "results", "runs_dir": tmp_path / "runs"}
    records = run_grid(SMOKE, tiny_data, cluster=options, threads_per_job=1, **kwargs)
    assert submitted == [2] and [r["row"] for r in records] == ["CE", "CE + triplet"]
    for row, record in zip(rows, records, strict=True):
        assert record["run"] == config_hash(resolve(SMOKE, row, 0, tiny_data))
        assert sorted(p.name for p in (tmp_path / "results" / record["run"]).iterdir()) == sorted(RECORDED_FILES)
    assert list((tmp_path / "submitit").glob("*_result.pkl"))  # submitit's own job files
    assert run_grid(SMOKE, tiny_data, cluster=options, **kwargs) == records and submitted == [2, 0]


def test_cluster_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    """The Slurm options as submitit writes them (a stand-in ``srun`` lets it build a Slurm executor here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    options = launch.ClusterOptions(
        folder=tmp_path / "logs",
        timeout_min=120,
        partition="gpu",
        gpus_per_node=2,
        mem_gb=64,
        cpus_per_task=8,
        extra=(("account", "reid"),),
    )
    script = launch.executor(options)._executor._make_submission_file_text("cmd", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--mem=64GB", "--cpus-per-task=8", "--time=120"):
        assert f"#SBATCH {line}\n" in script
    assert "#SBATCH --account=reid\n" in script and "#SBATCH --ntasks-per-node=1\n" in script
    with pytest.raises(ValueError, match="submitit refused the job options: Unknown argument 'bogus'"):
        launch.executor(launch.ClusterOptions(folder=tmp_path / "logs", timeout_min=1, extra=(("bogus", "1"),)))


def test_ablate_refuses_launch_options_that_cannot_work(tmp_path, monkeypatch, caplog):
    base = ["ablate", "--config", str(SMOKE), "--data-root", str(tmp_path), "--runs", str(tmp_path / "runs")]
    cases = {
        ("--gpus-per-run", "2"): "--gpus-per-run 2 needs --device cuda (got --device cpu)",
        ("--launcher", "submitit"): "--launcher submitit needs --slurm-time MINUTES",
        ("--launcher", "submitit", "--slurm-time", "5", "--slurm-option", "account"): "expects KEY=VALUE",
        ("--device", "cuda", "--jobs", "3"): "--jobs 3 x --gpus-per-run 1 = 3 GPUs asked for, 2 visible (4, 5)",
    }
    monkeypatch.setattr(launch, "local_gpus", lambda: ["4", "5"])
    for extra, message in cases.items():
        caplog.clear()
        assert cli.main([*base, *extra]) == cli.EXIT_BAD_INPUT, extra
        assert message in caplog.text, extra


# ---------------------------------------------------------------------------------------------- cost
def test_images_per_epoch_follow_the_configured_epoch():
    market = [pid for pid in range(751) for _ in range(17)]  # 751 ids as Market-1501's training set
    assert cost.images_per_epoch(market, 8, 4) == 751 // 8 * 32 == 2976  # every identity once
    assert cost.images_per_epoch(market, 8, 4, cap=2.7) == 2 * 32  # train.max_batches_per_epoch
    by_images = cost.images_per_epoch(market, 8, 4, epoch="images")  # about every image once
    assert len(market) // 2 < by_images <= len(market)


def test_gpu_hours_are_runs_x_epochs_x_images_over_the_rate():
    rate = cost.Throughput(1000.0, "--images-per-second")
    est = cost.estimate([600 * 2976] * 39, rate)
    assert est.runs == 39 and est.gpu_hours == pytest.approx(39 * 600 * 2976 / 1000 / 3600)
    assert "39 runs to train, 69,638,400 training images" in est.line()
    assert f"about {est.gpu_hours:.1f} GPU-hours of training steps, {est.gpu_hours / 39:.2f} h a run" in est.line()
    unknown = cost.estimate([600 * 2976] * 39, None)
    assert (
        unknown.gpu_hours is None and "no measured throughput" in unknown.line() and "GPU-hours not" in unknown.line()
    )
    assert cost.estimate([], rate).line() == "cost: nothing to train, every run is recorded"


def test_estimate_of_a_grid_reads_its_data_set(tiny_data, tmp_path):
    cfgs = [resolve(SMOKE, row, 0, tiny_data) for row in _rows("CE", "CE + triplet")]
    est = cost.estimate_grid(cfgs, cost.Throughput(8.0, "test"))
    assert est.images == 2 * 2 * 2 * 4 * 2  # runs x epochs x (2 batches of 4 ids x 2 images)
    assert est.gpu_hours == pytest.approx(64 / 8 / 3600)
    missing = cost.estimate_grid([resolve(SMOKE, _rows("CE")[0], 0, tmp_path / "absent")], None)
    assert (
        missing.images is None and "training images not counted (the data set could not be read here" in missing.line()
    )


def _gpu_check(folder: Path, name: str, created: str, rates: list[float], dry_run: bool = False) -> None:
    trainer = [{"compile": i == 1, "img_s": r} for i, r in enumerate(rates)]
    result = {"dry_run": dry_run, "device_name": name, "created": created, "trainer": trainer}
    (folder / f"gpu-check-{name.replace(' ', '_')}-{created[:10]}.json").write_text(json.dumps(result))


def test_measured_throughput_is_the_newest_gpu_check_of_this_gpu(tmp_path):
    assert cost.measured_throughput(tmp_path, "NVIDIA H100") is None
    _gpu_check(tmp_path, "CPU", "2026-03-01T00:00:00+00:00", [50.0], dry_run=True)
    assert cost.measured_throughput(tmp_path) is None  # a dry run measures no GPU
    _gpu_check(tmp_path, "NVIDIA H100", "2026-01-01T00:00:00+00:00", [900.0, 1100.0])
    _gpu_check(tmp_path, "NVIDIA H100", "2026-02-01T00:00:00+00:00", [1000.0, 1200.0])
    _gpu_check(tmp_path, "NVIDIA A100", "2026-02-15T00:00:00+00:00", [700.0])
    h100 = cost.measured_throughput(tmp_path, "NVIDIA H100")
    assert h100.images_per_second == 1200.0 and "NVIDIA H100, 2026-02-01" in h100.source and "compile on" in h100.source
    assert cost.measured_throughput(tmp_path, "NVIDIA L4") is None
    assert cost.measured_throughput(tmp_path).images_per_second == 700.0  # no GPU here (a login node): the newest


def test_only_rank_0_of_a_torchrun_job_checks_the_run_folders_lock(tmp_path, monkeypatch):
    """Rank 0 holds the lock for its job; rank 1 checking it would refuse its own job's folder."""
    import filelock

    from canlib.engine.run_folder import LOCK, FolderBusy, check_not_busy

    holder = filelock.FileLock(tmp_path / LOCK, timeout=0)
    with holder:
        with pytest.raises(FolderBusy, match="is in use by"):
            check_not_busy(tmp_path)
        monkeypatch.setenv("RANK", "1")
        check_not_busy(tmp_path)
