"""The ablation grid of Tables 2-4 (Sections 4.2-4.3): rows, recorded runs, orchestration.

Each row of the paper's Tables 2, 3 and 4 is a set of configuration overrides on top of a
profile, built from :mod:`canlib.paper` (the part patterns, the loss rows, and the loss that
trained Tables 2-3). A run is identified by the hash of its resolved configuration (seed
included) and recorded under ``results_dir/<hash>/`` with its configuration, run record,
per-epoch log and metrics. A recorded run is reused when its configuration hash matches and
it was trained by the current training code, module by module, or by code that
``python -m canlib certify`` showed to train bit-for-bit the same (:func:`freshness`), so
rerunning the grid only trains what changed; ``force=True`` retrains everything. The
statistics over seeds and the paper's claims live in :mod:`canlib.lab.analysis`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from canlib import paper
from canlib.config import config_hash, dump_config, load_config
from canlib.engine.record import (
    changed_inputs,
    changed_modules,
    code_fingerprint,
    copy_record,
    load_equivalences,
    module_fingerprints,
)
from canlib.lab.analysis import summarize

log = logging.getLogger(__name__)

METRIC_KEYS = ("mAP", "rank1", "rank3", "rank5", "rank10", "mINP")


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
    return rows


def resolve(profile: str | Path, row: Row, seed: int, data_root: str | Path) -> dict[str, Any]:
    """The resolved configuration of one run of ``row`` with ``seed``."""
    return load_config(profile, [*row.overrides, f"seed={seed}", f"data.root={data_root}", "train.progress=false"])


def recorded_run(results_dir: Path, cfg: dict[str, Any], current: CheckoutState | None) -> dict[str, Any] | None:
    """The metrics of a recorded run with this configuration, or None.

    With ``current`` (the checkout, :func:`checkout_state`) the run
    must also have been trained by the current code, or code certified equivalent to it
    (:func:`freshness`); with ``None`` any recorded run of the configuration is returned.
    """
    folder = Path(results_dir) / config_hash(cfg)
    try:
        record = json.loads((folder / "run.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if current is not None and freshness(folder, current) != "":
        return None
    return {
        **metrics,
        "code_fingerprint": record.get("code_fingerprint"),
        "commit": record.get("git", {}).get("commit"),
    }


def load_records(
    profile: str | Path,
    data_root: str | Path,
    rows: Sequence[Row] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    results_dir: str | Path = "results/ablations",
) -> list[dict[str, Any]]:
    """Read the recorded runs of a grid without training anything (for the book).

    Each record says whether it was trained by the current code (``current``) and, when not,
    which training modules changed since (``changed``, see :func:`freshness`); runs that were
    never recorded are left out, so a reader sees what exists and how fresh it is.
    """
    current = checkout_state()
    out = []
    for row in rows if rows is not None else ablation_rows():
        for seed in seeds:
            cfg = resolve(profile, row, seed, data_root)
            metrics = recorded_run(Path(results_dir), cfg, None)
            if metrics is None:
                continue
            key = config_hash(cfg)
            changed = freshness(Path(results_dir) / key, current)
            out.append(
                {
                    "table": row.table,
                    "row": row.label,
                    "seed": seed,
                    "run": key,
                    "current": changed == "",
                    "commit": metrics["commit"],
                    "changed": changed,
                    **{k: metrics[k] for k in METRIC_KEYS if k in metrics},
                }
            )
    return out


class CheckoutState(NamedTuple):
    """What a recorded run is compared with: the checkout's training-code fingerprint, its
    per-module fingerprints and the certified equivalences (read once per batch of runs)."""

    fingerprint: str
    modules: dict[str, str]
    equivalences: list[dict[str, Any]]


def checkout_state() -> CheckoutState:
    """The checkout's :class:`CheckoutState`."""
    return CheckoutState(code_fingerprint(), module_fingerprints(), load_equivalences())


def freshness(run_dir: str | Path, current: CheckoutState | None = None) -> str:
    """Which training modules changed since a recorded run: ``""`` when none (a current run),
    a comma-separated list of modules otherwise, ``"unknown"`` when that cannot be told.

    A module whose change was certified to train the same (``results/equivalences.json``,
    :mod:`canlib.lab.certify`) does not count as changed.

    ``current``: the checkout's :func:`checkout_state`, when the caller checks many runs
    (read here otherwise).
    """
    fingerprint, modules, equivalences = current if current is not None else checkout_state()
    try:
        record = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown"
    inputs = [f"{key} (file changed)" for key in changed_inputs(record, run_dir)]
    if record.get("code_fingerprint") == fingerprint:
        return ", ".join(inputs)
    changed = changed_modules(record, modules, equivalences)
    return "unknown" if changed is None else ", ".join(changed + inputs)


def read_grid_csv(results_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a frozen grid from its ``runs.csv`` (e.g. a "before" grid whose profile
    and rows have since changed), each with its freshness as in :func:`load_records`."""
    results_dir = Path(results_dir)
    frame = pd.read_csv(results_dir / "runs.csv", dtype={"run": str})
    records = [{str(k): v for k, v in rec.items()} for rec in frame.to_dict("records")]  # the CSV's column names
    current = checkout_state()
    for rec in records:
        rec["changed"] = freshness(results_dir / rec["run"], current)
        rec["current"] = rec["changed"] == ""
    return records


def _train_subprocess(cfg: dict[str, Any], run_dir: Path, device: str, threads: int) -> None:
    """Train in a child process (one per core keeps both cores busy with small models)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "requested.yaml"
    dump_config(cfg, cfg_path)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [
        sys.executable,
        "-m",
        "canlib",
        "train",
        "--config",
        str(cfg_path),
        "--output",
        str(run_dir),
        "--device",
        device,
        "--resume",
        "--no-progress",
    ]
    with (run_dir / "train.log").open("w") as fh:
        subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def _is_stale(run_dir: Path, current: CheckoutState) -> bool:
    """A working folder left by other training code (resuming it would mix two codes)."""
    if not (run_dir / "run.json").is_file():
        return False  # nothing recorded yet: an interrupted start, safe to resume
    return freshness(run_dir, current) != ""


def run_grid(
    profile: str | Path,
    data_root: str | Path,
    rows: Sequence[Row] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    results_dir: str | Path = "results/ablations",
    runs_dir: str | Path = "runs/ablations",
    force: bool = False,
    device: str = "cpu",
    jobs: int = 1,
    threads_per_job: int | None = None,
    any_code: bool = False,
) -> list[dict[str, Any]]:
    """Train (or reuse) every (row, seed) and return one record per run (as :func:`load_records`).

    Identical configurations that appear in two tables (Table 3's Part-1,3,5,7 is Table 4's
    last row) are trained once. ``jobs`` runs train side by side in child processes. An
    interrupted run resumes from its working folder; a folder left by other training code
    (another fingerprint) is discarded first. ``any_code=True`` reuses a recorded run whatever
    code trained it and returns stale records instead of raising (for exploratory stages
    whose records say plainly which code made them; never for the grid the book reports).
    """
    rows = list(rows if rows is not None else ablation_rows())
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    current = checkout_state()
    threads = threads_per_job or max(1, (os.cpu_count() or 1) // max(jobs, 1))
    plan = {config_hash(cfg): cfg for cfg in (resolve(profile, r, s, data_root) for r in rows for s in seeds)}
    todo = {
        key: cfg
        for key, cfg in plan.items()
        if force or recorded_run(results_dir, cfg, None if any_code else current) is None
    }
    log.info("ablation grid: %d runs, %d distinct, %d to train", len(rows) * len(seeds), len(plan), len(todo))

    def work(item: tuple[str, dict[str, Any]]) -> None:
        key, cfg = item
        run_dir = runs_dir / key
        if run_dir.exists() and (force or (_is_stale(run_dir, current) and not any_code)):
            shutil.rmtree(run_dir)
        _train_subprocess(cfg, run_dir, device, threads)
        log.info("recorded %s", copy_record(run_dir, results_dir / key))

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        list(pool.map(work, todo.items()))

    records = load_records(profile, data_root, rows, seeds, results_dir)
    missing = len(rows) * len(seeds) - len(records)
    stale = [r["run"] for r in records if not r["current"]]
    if missing or (stale and not any_code):  # pragma: no cover - a finished run always records
        raise RuntimeError(f"ablation grid incomplete: {missing} runs without metrics, stale runs {stale}")
    return records


def row_run_folders(
    profile: str | Path, data_root: str | Path, specs: Iterable[str], seed: int, runs_dir: str | Path
) -> list[Path]:
    """The working folders of ablation rows named ``"Table N:label"`` (``ValueError`` for an unknown one)."""
    known = {f"{r.table}:{r.label}": r for r in ablation_rows()}
    folders = []
    for spec in specs:
        if spec not in known:
            raise ValueError(f"unknown row {spec!r}; known rows: {', '.join(known)}")
        folders.append(Path(runs_dir) / config_hash(resolve(profile, known[spec], seed, data_root)))
    return folders


def write_tables(records: Sequence[dict[str, Any]], results_dir: str | Path) -> pd.DataFrame:
    """Write the grid's ``runs.csv`` (one line per run) and ``summary.csv`` (mean and spread per row)."""
    results = Path(results_dir)
    pd.DataFrame(records).to_csv(results / "runs.csv", index=False)
    table = summarize(records).table
    table.to_csv(results / "summary.csv")
    return table
