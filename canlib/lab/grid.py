"""The ablation grid's runner (Tables 2-4, Sections 4.2-4.3), and its runs trained again for export.

Every (row, seed) of :mod:`canlib.lab.rows` trains in a child process (or a cluster job) and is
recorded by its configuration hash (:mod:`canlib.lab.records`). A recorded run is reused when its
record is complete, so rerunning the grid only trains what is missing; ``force=True`` retrains
everything. Whether the checked-out code still trains each recorded configuration as the recording
code did is checked by the training digest (:mod:`canlib.lab.digest`, ``tests/test_digest.py``), not
here. The grid's tables are written by :mod:`canlib.lab.tables`; the statistics over seeds and the
paper's claims live in :mod:`canlib.lab.analysis`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from canlib.config import config_hash, dump_config
from canlib.engine.checkpoint import CHECKPOINT
from canlib.engine.record import copy_record
from canlib.engine.run_folder import FolderBusy, locked
from canlib.lab import cost, launch
from canlib.lab.analysis import METRIC_KEYS
from canlib.lab.draws import read_draws, record_draws
from canlib.lab.readout import record_slices
from canlib.lab.records import incomplete_record, load_records, recorded_run
from canlib.lab.rows import TABLES, Row, ablation_rows, check_rows, check_seeds, resolve, results_folder

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """A grid run whose training child failed; the message names the run, its log and the log's last error."""


class GridFailed(RuntimeError):
    """Some runs of the grid failed (``failures``, one line each); ``records`` holds the runs recorded."""

    def __init__(self, failures: Sequence[str], records: Sequence[dict[str, Any]]) -> None:
        super().__init__(f"{len(failures)} run(s) of the grid failed: {'; '.join(failures)}")
        self.failures, self.records = list(failures), list(records)


def run_lock(run_dir: Path) -> Path:
    """The lock of a grid run's working folder, beside it (``<hash>.lock``): held while the run's
    configuration, log and folder are written, so that a second job on the run writes none of them."""
    return run_dir.with_name(f"{run_dir.name}.lock")


def last_error(log_file: Path) -> str:
    """The child's last error line in its log (the CLI's ``ERROR`` line, its message alone), else its last line."""
    try:
        lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if " ERROR " in ln]
    if errors:
        return errors[-1].split(" ERROR ", 1)[1].split(": ", 1)[-1]
    return lines[-1] if lines else "the log is empty"


def _train_subprocess(
    cfg: dict[str, Any], run_dir: Path, device: str, threads: int | None, nproc: int = 1, slot: launch.Slot = None
) -> None:
    """Train in a child process (one per core keeps both cores busy with small models; under torchrun
    for ``nproc > 1``; on the GPUs of ``slot`` only); the requested configuration and the child's output
    lie beside the run folder (``<hash>.yaml``, ``<hash>.log``). The caller holds :func:`run_lock`.
    :class:`RunFailed` when the child fails, naming its log and the log's last error line."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.with_name(f"{run_dir.name}.yaml")
    dump_config(cfg, cfg_path)
    cmd = launch.train_command(cfg_path, run_dir, device, nproc)
    env = launch.child_env(os.environ, threads, slot, nproc)
    log_file = run_dir.with_name(f"{run_dir.name}.log")
    with log_file.open("w") as fh:
        code = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RunFailed(f"run {run_dir.name} failed (exit code {code}): {last_error(log_file)} (its log: {log_file})")


def _locked_run(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """:func:`canlib.engine.run_folder.locked` of a grid run, by :func:`run_lock`; refused (``FolderBusy``)
    at once when another job trains it."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return locked(run_dir, f"grid run {run_dir.name}", lock_file=run_lock(run_dir))


def train_and_record(
    cfg: dict[str, Any],
    run_dir: str,
    results_dir: str,
    device: str,
    threads: int | None,
    nproc: int = 1,
    slot: launch.Slot = None,
    fresh: bool = False,
    slices: bool = False,
    draws: Sequence[str] = (),
) -> str:
    """Train one run in its working folder ``run_dir`` (resuming it, or from scratch with ``fresh``) and
    copy its record to ``results_dir/<hash>``; returns that folder. What the local pool runs for each
    run, and what a cluster job runs (top-level, plain arguments: submitit pickles it). With
    ``slices``, the trained model is also read out on its global and local slices (:mod:`canlib.lab.readout`);
    with ``draws`` (generated test draws, :mod:`canlib.lab.draws`), evaluated on each of them.
    A complete record is not copied again: a run trained anew only for its draws keeps its record.
    Nothing of the run is touched (its folder, configuration or log) while another job holds it."""
    folder = Path(run_dir)
    dest = Path(results_dir) / folder.name
    with _locked_run(folder):
        if fresh and folder.exists():
            shutil.rmtree(folder)
        _train_subprocess(cfg, folder, device, threads, nproc, slot)
        if fresh or not dest.exists() or incomplete_record(dest) is not None:
            copy_record(folder, dest)
        if slices:
            record_slices(folder, dest, device)
        if draws:
            record_draws(folder, dest, [Path(d) for d in draws], device)
    log.info("recorded %s", dest)
    return str(dest)


def _train_on_pool(
    todo: dict[str, dict[str, Any]],
    runs_dir: Path,
    results_dir: Path,
    device: str,
    slots: Sequence[launch.Slot],
    threads: int,
    nproc: int,
    fresh: bool,
    slices: bool = False,
    draws: Sequence[str] = (),
) -> list[str]:
    """Train ``todo`` side by side, one run per slot; the rest wait in the pool's queue. Returns the
    failed runs, one line each (a failed run does not stop the others)."""
    free = launch.SlotPool(slots)
    failures: list[str] = []

    def work(item: tuple[str, dict[str, Any]]) -> None:
        key, cfg = item
        run, results = str(runs_dir / key), str(results_dir)
        with free.take() as slot:
            try:
                train_and_record(cfg, run, results, device, threads, nproc, slot, fresh, slices, draws)
            except (RunFailed, FolderBusy) as exc:
                failures.append(str(exc))

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        list(pool.map(work, todo.items()))
    return failures


def _train_on_cluster(
    todo: dict[str, dict[str, Any]],
    runs_dir: Path,
    results_dir: Path,
    device: str,
    cluster: launch.ClusterOptions,
    threads: int | None,
    nproc: int,
    fresh: bool,
    slices: bool = False,
    draws: Sequence[str] = (),
) -> list[str]:
    """Submit ``todo`` as one job array through submitit and wait for every job; the failures, one line."""
    runs_dir, results_dir = runs_dir.resolve(), results_dir.resolve()  # the jobs may start elsewhere
    calls = [
        (cfg, str(runs_dir / key), str(results_dir), device, threads, nproc, None, fresh, slices, draws)
        for key, cfg in todo.items()
    ]
    try:
        launch.wait(launch.submit(train_and_record, calls, cluster), list(todo))
    except launch.JobsFailed as exc:
        return [str(exc)]
    return []


def run_grid(
    profile: str | Path,
    data_root: str | Path,
    rows: Sequence[Row] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    results_dir: str | Path | None = None,
    runs_dir: str | Path = "runs/ablations",
    force: bool = False,
    device: str = "cpu",
    jobs: int = 1,
    threads_per_job: int | None = None,
    gpus: Sequence[str] | None = None,
    gpus_per_run: int = 1,
    cluster: launch.ClusterOptions | None = None,
    throughput: cost.Throughput | None = None,
    slices: bool = False,
    draws: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Train (or reuse) every (row, seed) and return one record per run (as :func:`canlib.lab.records.load_records`).

    With ``slices``, each newly trained run is also evaluated on its global and its local slices
    (:mod:`canlib.lab.readout`). With ``draws`` (the folders of generated test draws), each run is
    evaluated on every draw as it finishes (``draws.json``); a recorded run without them is trained
    again for them (bit for bit, :mod:`canlib.lab.digest`) unless its working folder still holds it.

    Identical configurations that appear in two tables (Table 3's Part-1,3,5,7 is Table 4's
    last row) are trained once. ``jobs`` runs train side by side in child processes; with
    ``gpus`` (the visible GPUs' identifiers, :func:`canlib.lab.launch.local_gpus`) each child sees
    only its own ``gpus_per_run`` of them (:func:`canlib.lab.launch.place`). A run of
    ``gpus_per_run > 1`` processes trains under torchrun. With ``cluster`` the runs are submitted
    as jobs instead (:func:`canlib.lab.launch.submit`). An interrupted run resumes from its working
    folder (``force=True`` discards it first). The cost of what is missing is logged first
    (:mod:`canlib.lab.cost`, at ``throughput``).
    """
    rows = list(rows if rows is not None else ablation_rows())
    if not rows:
        raise ValueError("no rows to run: select them with select_rows (--tables, --rows)")
    check_seeds(seeds)
    results_dir, runs_dir = Path(results_folder(profile) if results_dir is None else results_dir), Path(runs_dir)
    slots: list[launch.Slot] = list(launch.place(jobs, gpus, gpus_per_run)) if gpus is not None else [None] * jobs
    check_rows(profile, rows, seeds[0], data_root)
    plan = {config_hash(cfg): cfg for cfg in (resolve(profile, r, s, data_root) for r in rows for s in seeds)}
    todo = {
        key: cfg
        for key, cfg in plan.items()
        if force or recorded_run(results_dir, cfg) is None or _lacks_draws(results_dir / key, draws)
    }
    for cfg in todo.values():
        launch.check_split(int(cfg["data"]["p"]), gpus_per_run)
    log.info("ablation grid: %d runs, %d distinct, %d to train", len(rows) * len(seeds), len(plan), len(todo))
    log.info("%s", cost.estimate_grid(list(todo.values()), throughput).line())

    if cluster is not None:
        failures = _train_on_cluster(
            todo, runs_dir, results_dir, device, cluster, threads_per_job, gpus_per_run, force, slices, draws
        )
    else:
        threads = threads_per_job or max(1, (os.cpu_count() or 1) // max(len(slots), 1))
        failures = _train_on_pool(
            todo, runs_dir, results_dir, device, slots, threads, gpus_per_run, force, slices, draws
        )

    records = load_records(profile, data_root, rows, seeds, results_dir)
    if failures:
        raise GridFailed(failures, records)
    missing = len(rows) * len(seeds) - len(records)
    if missing:  # pragma: no cover - a finished run always records
        raise RuntimeError(f"ablation grid incomplete: {missing} runs without metrics")
    return records


def _lacks_draws(record: Path, draws: Sequence[str]) -> bool:
    """Whether a recorded run misses an evaluation on one of ``draws`` (its ``draws.json``)."""
    have = (read_draws(record) or {}).get("draws", {})
    return any(Path(d).name not in have for d in draws)


def row_run_folders(
    profile: str | Path, data_root: str | Path, specs: Iterable[str], seed: int, runs_dir: str | Path
) -> list[Path]:
    """The working folders of ablation rows named ``"Table N:label"`` (``ValueError`` for an unknown one)."""
    return [Path(runs_dir) / name for name, _ in _row_configs(profile, data_root, specs, seed)]


def _row_configs(
    profile: str | Path, data_root: str | Path, specs: Iterable[str], seed: int, extra: Sequence[str] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """(configuration hash, resolved configuration) of each row named ``"Table N:label"``, in order,
    with the overrides ``extra`` appended (a grid run with ``ablate``'s overrides, e.g. a neck level)."""
    specs, known = list(specs), {f"{r.table}:{r.label}": r for r in ablation_rows(TABLES)}
    unknown = [spec for spec in specs if spec not in known]
    if unknown:
        raise ValueError(f"unknown row {unknown[0]!r}; known rows: {', '.join(known)}")
    rows = [Row(known[s].table, known[s].label, (*known[s].overrides, *extra)) for s in specs]
    cfgs = [resolve(profile, row, seed, data_root) for row in rows]
    return [(config_hash(cfg), cfg) for cfg in cfgs]


#: How far a run trained again on another kind of CPU may land from its record (mAP and rank-1,
#: absolute): a full training is bit-exact on one thread of the same CPU kind only (model and vector
#: capability: one model name covers AVX2 and AVX-512 parts). Measured against Intel Xeon records:
#: mAP 0.0005-0.0019 apart on an AMD EPYC, and on an AMD EPYC with AVX-512 mAP 0.0018 and rank-1
#: 0.0057 apart (Table 3 Part-1,3,5,7, seed 0).
RETRAIN_TOLERANCE = 0.01


def trained_run_folders(
    profile: str | Path,
    data_root: str | Path,
    specs: Sequence[str],
    seed: int,
    runs_dir: str | Path,
    results_dir: str | Path | None = None,
    jobs: int = 2,
    extra: Sequence[str] = (),
) -> list[Path]:
    """:func:`row_run_folders`, each with its final checkpoint: a recorded run whose working folder
    lacks one (a fresh clone holds records, not checkpoints) is trained again on the CPU, one thread
    per job as the grid trains (``extra``: the grid's overrides, as :func:`_row_configs`). Each
    folder's metrics must equal its record's when both were trained on the same CPU kind (model and
    capability), and lie within :data:`RETRAIN_TOLERANCE` otherwise (``RuntimeError``: the weights
    would not stand for the recorded run)."""
    results = Path(results_folder(profile) if results_dir is None else results_dir)
    named = _row_configs(profile, data_root, specs, seed, extra)
    cfgs, folders = dict(named), [Path(runs_dir) / name for name, _ in named]
    missing = [f for f in folders if not (f / CHECKPOINT).is_file() or not (f / "metrics.json").is_file()]
    unrecorded = [f.name for f in folders if recorded_run(results, cfgs[f.name]) is None]
    if unrecorded:
        raise RuntimeError(f"not recorded in {results}: {', '.join(unrecorded)} (run the grid first: make ablations)")

    def retrain(folder: Path) -> None:
        with _locked_run(folder):
            _train_subprocess(cfgs[folder.name], folder, "cpu", 1)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(retrain, missing))
    for folder in folders:
        _check_against_record(folder, results / folder.name)
    return folders


def _check_against_record(folder: Path, record: Path) -> None:
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (folder, record))
    machines = [json.loads((d / "run.json").read_text())["machine"] for d in (folder, record)]
    cpus = [f"{m['cpu']} ({m.get('cpu_capability', 'capability not recorded')})" for m in machines]
    gaps = {k: abs(got[k] - want[k]) for k in METRIC_KEYS}
    same_kind = cpus[0] == cpus[1] and all("cpu_capability" in m for m in machines)
    tolerance = 0.0 if same_kind else RETRAIN_TOLERANCE
    if max(gaps["mAP"], gaps["rank1"]) > tolerance:
        raise RuntimeError(f"{folder} differs from its record ({cpus[0]} / {cpus[1]}): {gaps}")
    log.info("%s: mAP %.4f, its record's %.4f (trained on %s / %s)", folder, got["mAP"], want["mAP"], *cpus)
