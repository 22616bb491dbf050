"""The ablation grid of Tables 2-4 (Sections 4.2-4.3): rows, recorded runs, orchestration.

Each row of the paper's Tables 2, 3 and 4 is a set of configuration overrides on top of a
profile, built from :mod:`canlib.paper` (the part patterns, the loss rows, and the loss that
trained Tables 2-3). A run is identified by the hash of its resolved configuration (seed
included) and recorded under ``results_dir/<hash>/`` with its configuration, run record,
per-epoch log and metrics. A recorded run is reused when its configuration hash matches and its
record is complete (a folder without its configuration, run record, or mAP and rank-1 is trained
again), so rerunning the grid only trains what is missing; ``force=True`` retrains everything. The
grid's tables (``runs.csv``, ``summary.csv``) are written whole, a run of some rows replacing only
their lines. Whether the
checked-out code still trains each recorded configuration as the recording code did is checked by
the training digest (:mod:`canlib.lab.digest`, ``tests/test_digest.py``), not here. The
statistics over seeds and the paper's claims live in :mod:`canlib.lab.analysis`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from canlib import paper
from canlib.config import ConfigError, RunSections, config_hash, dump_config, load_config
from canlib.engine.build import build_model
from canlib.engine.checkpoint import CHECKPOINT
from canlib.engine.errors import error_line
from canlib.engine.record import copy_record
from canlib.engine.run_folder import FolderBusy, locked
from canlib.lab import cost, launch
from canlib.lab.analysis import METRIC_KEYS, summarize
from canlib.lab.readout import read_slices, record_slices

log = logging.getLogger(__name__)

#: The metrics a record must hold to count as recorded (of :data:`canlib.lab.analysis.METRIC_KEYS`).
REQUIRED_METRICS = ("mAP", "rank1")


@dataclass(frozen=True)
class Row:
    """One row of one of the paper's tables, as configuration overrides."""

    table: str
    label: str
    overrides: tuple[str, ...]


def _loss_overrides(kwargs: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f"loss.{k}={v}" for k, v in kwargs.items())


def _pattern_overrides(parts: Sequence[int], collaborative: bool) -> tuple[str, ...]:
    return (f"model.parts={list(parts)}", f"model.collaborative={str(collaborative).lower()}")


def ablation_rows(tables: Iterable[str] = ("Table 2", "Table 3", "Table 4")) -> list[Row]:
    """The rows of Tables 2 (no CA), 3 (with CA) and 4 (loss combinations, on Part-1,3,5,7 + CA).

    Tables 2 and 3 are trained with the loss the paper used for them
    (:func:`canlib.paper.ablation_loss`: CE + the batch-hard triplet on the global features),
    Table 4's rows with their own losses. Table 3's Part-1,3,5,7 row and Table 4's
    "CE + triplet" row are then one configuration, as they are one row of numbers in the paper.
    """
    rows: list[Row] = []
    tables = set(tables)
    ablation_loss = _loss_overrides(paper.ablation_loss())
    for table, ca in (("Table 2", False), ("Table 3", True)):
        if table in tables:
            for label, parts in paper.PART_PATTERNS.items():
                rows.append(Row(table, label, _pattern_overrides(parts, ca) + ablation_loss))
    if "Table 4" in tables:
        final = _pattern_overrides(paper.PART_PATTERNS[paper.FINAL_PATTERN], True)
        for label, kwargs in paper.LOSS_ROWS.items():
            rows.append(Row("Table 4", label, final + _loss_overrides(kwargs)))
    if CONTROLS in tables:
        rows += control_rows()
    return rows


#: The grid's table of controls (not one of the paper's tables).
CONTROLS = "Controls"


def control_rows() -> list[Row]:
    """Rows that separate "local features help" from "more descriptor slices" and test a reading:

    Part-1 (the global branch alone) under Tables 2-3's loss and under Table 4's final loss, and
    Part-1,3,5,7 with CA and PyTorch's adaptive pooling instead of equation (1) (``model.pooling``),
    under Table 3's loss, as the paper's "Adaptive Concatenation Pooling" may mean. The pre-trained
    trunk alone, without fine-tuning, is measured by :mod:`canlib.lab.controls` (no training).
    """
    global_only = _pattern_overrides((1,), False)
    final_loss = paper.LOSS_ROWS[list(paper.LOSS_ROWS)[-1]]
    ca = _pattern_overrides(paper.PART_PATTERNS[paper.FINAL_PATTERN], True)
    return [
        Row(CONTROLS, "Part-1 (Tables 2-3 loss)", global_only + _loss_overrides(paper.ablation_loss())),
        Row(CONTROLS, "Part-1 (final loss)", global_only + _loss_overrides(final_loss)),
        Row(
            CONTROLS,
            "Part-1,3,5,7 + CA, adaptive pooling",
            (*ca, *_loss_overrides(paper.ablation_loss()), "model.pooling=adaptive"),
        ),
    ]


#: The grid's tables, as ``ablate --tables`` names them.
TABLES = ("Table 2", "Table 3", "Table 4", CONTROLS)


def select_rows(tables: Sequence[str], labels: Sequence[str] | None = None) -> list[Row]:
    """The rows of ``tables`` (of :data:`TABLES`), only those labelled ``labels`` when given.

    ``ValueError`` naming the option (``--tables``, ``--rows``) and the known values for a table
    or a label that selects nothing, so that a typo never runs (or tabulates) an empty grid.
    """
    unknown = [t for t in tables if t not in TABLES]
    if unknown or not tables:
        got = repr(unknown[0]) if unknown else "nothing"
        raise ValueError(f"--tables {got} is not a table of the grid; the tables: {_quoted(TABLES)}")
    rows = ablation_rows(tables)
    if labels is None:
        return rows
    known = list(dict.fromkeys(r.label for r in rows))
    missing = [label for label in labels if label not in known]
    if missing or not labels:
        got = repr(missing[0]) if missing else "nothing"
        raise ValueError(f"--rows {got} is not a row of {', '.join(dict.fromkeys(tables))}; its rows: {_quoted(known)}")
    return [r for r in rows if r.label in labels]


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in values)


def check_seeds(seeds: Sequence[int]) -> None:
    """Refuse a seed given twice (``ValueError`` naming ``--seeds``): it would count one run twice."""
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if not seeds or repeated:
        what = f"repeats seed {repeated[0]}" if repeated else "names no seed"
        raise ValueError(f"--seeds {' '.join(map(str, seeds))} {what}: give each seed once (each is one run)")


def results_folder(profile: str | Path, kind: str = "ablations") -> Path:
    """``results/<kind>/<profile>-<dataset>``: each profile and data set records its grid (or its
    decisions) in its own folder, so that a paper-profile grid never touches the proxy's records."""
    cfg = load_config(profile)
    return Path("results") / kind / f"{cfg['profile']}-{cfg['data']['dataset']}"


def resolve(profile: str | Path, row: Row, seed: int, data_root: str | Path) -> dict[str, Any]:
    """The resolved configuration of one run of ``row`` with ``seed``."""
    return load_config(profile, [*row.overrides, f"seed={seed}", f"data.root={data_root}", "train.progress=false"])


def check_rows(profile: str | Path, rows: Sequence[Row], seed: int, data_root: str | Path) -> None:
    """Before any training: every row's configuration is valid and its input high enough for its
    largest part (``ValueError`` naming the first row that is not, and why)."""
    strides: dict[str, int] = {}
    for row in rows:
        try:
            run = RunSections.from_config(resolve(profile, row, seed, data_root))
            trunk = dataclasses.replace(run.model, parts=(1,), collaborative=False, pretrained=None)
            if repr(trunk) not in strides:  # one trunk per backbone: its output stride
                strides[repr(trunk)] = build_model(trunk, 2).output_stride
            need = strides[repr(trunk)] * (max(run.model.parts) - 1) + 1
            if run.data.height < need:
                raise ConfigError(
                    f"data.height={run.data.height} is too small for model.parts={list(run.model.parts)} "
                    f"(at least {need} pixels high)"
                )
        except (ConfigError, ValueError) as exc:
            raise ValueError(f"row {row.label!r} of {row.table} cannot train: {error_line(exc)}") from None


def provenance(run_dir: str | Path) -> dict[str, Any]:
    """The commit that trained a recorded run and whether its work tree differed from it (``run.json``)."""
    git = json.loads((Path(run_dir) / "run.json").read_text()).get("git") or {}
    return {"commit": git.get("commit"), "dirty": git.get("dirty")}


def recorded_run(results_dir: str | Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of the recorded run with this configuration and its :func:`provenance`, or None.

    A folder that is not a complete record (:func:`incomplete_record`) counts as missing, with a
    warning naming it: the grid trains it again, and the tables leave it out.
    """
    folder = Path(results_dir) / config_hash(cfg)
    if not folder.exists():
        return None
    why = incomplete_record(folder)
    if why is not None:
        log.warning("%s is not a complete record (%s): treated as missing", folder, why)
        return None
    return {**json.loads((folder / "metrics.json").read_text()), **provenance(folder)}


def incomplete_record(folder: Path) -> str | None:
    """Why ``folder`` is not a complete record (config.yaml, run.json, and metrics.json holding
    :data:`REQUIRED_METRICS` as finite numbers), or None when it is one."""
    try:
        if not isinstance(yaml.safe_load((folder / "config.yaml").read_text()), dict):
            return "its config.yaml holds no configuration"
        if not isinstance(json.loads((folder / "run.json").read_text()), dict):
            return "its run.json holds no record"
        metrics = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError as exc:
        return f"no {Path(str(exc.filename)).name}"
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return f"unreadable: {error_line(exc)}"
    if not isinstance(metrics, dict):
        return "its metrics.json holds no metrics"
    bad = [k for k in REQUIRED_METRICS if not _finite(metrics.get(k))]
    return f"its metrics.json has no finite {', '.join(bad)}" if bad else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_records(
    profile: str | Path,
    data_root: str | Path,
    rows: Sequence[Row] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    results_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Read the recorded runs of a grid without training anything (for the book).

    Each record names the commit that trained it and whether its tree was dirty
    (:func:`provenance`); runs that were never recorded are left out, so a reader sees what exists.
    ``results_dir`` defaults to the profile's own folder (:func:`results_folder`).
    """
    results_dir = results_folder(profile) if results_dir is None else results_dir
    out = []
    for row in rows if rows is not None else ablation_rows():
        for seed in seeds:
            cfg = resolve(profile, row, seed, data_root)
            metrics = recorded_run(results_dir, cfg)
            if metrics is None:
                continue
            run = {"table": row.table, "row": row.label, "seed": seed, "run": config_hash(cfg)}
            out.append({**run, "commit": metrics["commit"], "dirty": metrics["dirty"]})
            out[-1].update({k: metrics[k] for k in METRIC_KEYS if k in metrics})
            out[-1]["final_ce"] = final_train_ce(Path(results_dir) / out[-1]["run"])
            for name, part in (read_slices(Path(results_dir) / out[-1]["run"]) or {}).items():
                if name in ("global", "local"):
                    out[-1][f"mAP_{name}"] = part["mAP"]
    return out


def final_train_ce(run_dir: str | Path) -> float | None:
    """The training cross-entropy of a recorded run's last epoch (``log.jsonl``), or None."""
    try:
        lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    except OSError:
        return None
    epochs = [json.loads(line) for line in lines if line.strip()]
    values = [e["loss_ce"] for e in epochs if "loss_ce" in e and "epoch" in e]
    return float(values[-1]) if values else None


def read_grid_csv(results_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a frozen grid from its ``runs.csv`` (e.g. a "before" grid whose profile
    and rows have since changed), each with its :func:`provenance` as in :func:`load_records`
    (the freshness columns older grids wrote, ``current`` and ``changed``, are dropped)."""
    results_dir = Path(results_dir)
    frame = pd.read_csv(results_dir / "runs.csv", dtype={"run": str})
    stale = ("current", "changed")
    records = [{str(k): v for k, v in rec.items() if k not in stale} for rec in frame.to_dict("records")]
    return [{**rec, **provenance(results_dir / rec["run"])} for rec in records]


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
) -> str:
    """Train one run in its working folder ``run_dir`` (resuming it, or from scratch with ``fresh``) and
    copy its record to ``results_dir/<hash>``; returns that folder. What the local pool runs for each
    run, and what a cluster job runs (top-level, plain arguments: submitit pickles it). With
    ``slices``, the trained model is also read out on its global and local slices (:mod:`canlib.lab.readout`).
    Nothing of the run is touched (its folder, configuration or log) while another job holds it."""
    folder = Path(run_dir)
    with _locked_run(folder):
        if fresh and folder.exists():
            shutil.rmtree(folder)
        _train_subprocess(cfg, folder, device, threads, nproc, slot)
        dest = copy_record(folder, Path(results_dir) / folder.name)
        if slices:
            record_slices(folder, dest, device)
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
                train_and_record(cfg, run, results, device, threads, nproc, slot, fresh, slices)
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
) -> list[str]:
    """Submit ``todo`` as one job array through submitit and wait for every job; the failures, one line."""
    runs_dir, results_dir = runs_dir.resolve(), results_dir.resolve()  # the jobs may start elsewhere
    calls = [
        (cfg, str(runs_dir / key), str(results_dir), device, threads, nproc, None, fresh, slices)
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
) -> list[dict[str, Any]]:
    """Train (or reuse) every (row, seed) and return one record per run (as :func:`load_records`).

    With ``slices``, each newly trained run is also evaluated on its global and its local slices
    (:mod:`canlib.lab.readout`).

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
    todo = {key: cfg for key, cfg in plan.items() if force or recorded_run(results_dir, cfg) is None}
    for cfg in todo.values():
        launch.check_split(int(cfg["data"]["p"]), gpus_per_run)
    log.info("ablation grid: %d runs, %d distinct, %d to train", len(rows) * len(seeds), len(plan), len(todo))
    log.info("%s", cost.estimate_grid(list(todo.values()), throughput).line())

    if cluster is not None:
        failures = _train_on_cluster(
            todo, runs_dir, results_dir, device, cluster, threads_per_job, gpus_per_run, force, slices
        )
    else:
        threads = threads_per_job or max(1, (os.cpu_count() or 1) // max(len(slots), 1))
        failures = _train_on_pool(todo, runs_dir, results_dir, device, slots, threads, gpus_per_run, force, slices)

    records = load_records(profile, data_root, rows, seeds, results_dir)
    if failures:
        raise GridFailed(failures, records)
    missing = len(rows) * len(seeds) - len(records)
    if missing:  # pragma: no cover - a finished run always records
        raise RuntimeError(f"ablation grid incomplete: {missing} runs without metrics")
    return records


def row_run_folders(
    profile: str | Path, data_root: str | Path, specs: Iterable[str], seed: int, runs_dir: str | Path
) -> list[Path]:
    """The working folders of ablation rows named ``"Table N:label"`` (``ValueError`` for an unknown one)."""
    return [Path(runs_dir) / name for name, _ in _row_configs(profile, data_root, specs, seed)]


def _row_configs(
    profile: str | Path, data_root: str | Path, specs: Iterable[str], seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """(configuration hash, resolved configuration) of each row named ``"Table N:label"``, in order."""
    specs, known = list(specs), {f"{r.table}:{r.label}": r for r in ablation_rows()}
    unknown = [spec for spec in specs if spec not in known]
    if unknown:
        raise ValueError(f"unknown row {unknown[0]!r}; known rows: {', '.join(known)}")
    cfgs = [resolve(profile, known[spec], seed, data_root) for spec in specs]
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
) -> list[Path]:
    """:func:`row_run_folders`, each with its final checkpoint: a recorded run whose working folder
    lacks one (a fresh clone holds records, not checkpoints) is trained again on the CPU, one thread
    per job as the grid trains. Each folder's metrics must equal its record's when both were trained
    on the same CPU kind (model and capability), and lie within :data:`RETRAIN_TOLERANCE` otherwise
    (``RuntimeError``: the weights would not stand for the recorded run)."""
    results = Path(results_folder(profile) if results_dir is None else results_dir)
    named = _row_configs(profile, data_root, specs, seed)
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


#: The columns that name one run of a grid's ``runs.csv``: a newer record of the same key replaces it.
RUN_KEY = ("table", "row", "seed")


def read_runs_table(results_dir: str | Path) -> pd.DataFrame | None:
    """The grid's ``runs.csv`` as it is (None when there is none yet); ``ValueError`` naming the file
    when it cannot be read as a grid's table, or ``--results`` is not a folder."""
    results = Path(results_dir)
    if results.exists() and not results.is_dir():
        raise ValueError(f"--results {results} is a file, not a folder of records")
    path = results / "runs.csv"
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path, dtype={"run": str, "commit": str})
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as a grid's table ({error_line(exc)}): move it away") from None
    lacking = [k for k in RUN_KEY if k not in frame]
    if lacking:
        raise ValueError(f"{path} is not a grid's table (no column {', '.join(lacking)}): move it away")
    return frame


def check_tables(results_dir: str | Path) -> None:
    """Before any work: the grid's tables can be read and merged into (:func:`read_runs_table`)."""
    read_runs_table(results_dir)


def merge_runs(old: pd.DataFrame | None, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """``old``'s lines with those of ``records`` replacing the same (table, row, seed), in the grid's
    order (:data:`TABLES`' rows, then seed); lines of rows the grid no longer has come last."""
    new = pd.DataFrame(list(records))
    if old is not None:
        replaced = old.set_index(list(RUN_KEY)).index.isin(new.set_index(list(RUN_KEY)).index)
        new = pd.concat([old[~replaced], new], ignore_index=True)
    order = {(r.table, r.label): i for i, r in enumerate(ablation_rows(TABLES))}
    rank = [(order.get((t, r), len(order)), s) for t, r, s in zip(new["table"], new["row"], new["seed"], strict=True)]
    return new.iloc[sorted(range(len(new)), key=rank.__getitem__)].reset_index(drop=True)


def _replace_files(texts: dict[Path, str]) -> None:
    """Write each file whole: every text to a temporary file beside its file first, then the renames
    (a failed write leaves every file as it was; a file is never half written)."""
    temporary = {path: path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in texts}
    try:
        for path, tmp in temporary.items():
            with tmp.open("x") as fh:
                fh.write(texts[path])
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)


def write_tables(records: Sequence[dict[str, Any]], results_dir: str | Path) -> pd.DataFrame:
    """Merge ``records`` into the grid's ``runs.csv`` (one line per run; the other lines are kept) and
    recompute ``summary.csv`` (mean and spread per row) from it; both written whole and atomically.

    ``ValueError`` for no records: the tables are left as they are.
    """
    results = Path(results_dir)
    if not records:
        raise ValueError(f"no runs to tabulate: {results / 'runs.csv'} and summary.csv are left as they are")
    runs = merge_runs(read_runs_table(results), records)
    table = summarize(runs.to_dict("records")).table
    results.mkdir(parents=True, exist_ok=True)
    _replace_files({results / "runs.csv": runs.to_csv(index=False), results / "summary.csv": table.to_csv()})
    return table
