"""The grid's record store: what a recorded run holds, and the records read back.

A run is recorded under ``results_dir/<hash>/`` with its configuration, run record, per-epoch log
and metrics. A folder without its configuration, run record, or mAP and rank-1 is not a record
(:func:`incomplete_record`): the grid trains it again, and the tables leave it out.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from canlib.config import config_hash
from canlib.engine.errors import error_line
from canlib.lab.analysis import METRIC_KEYS
from canlib.lab.readout import read_slices
from canlib.lab.rows import Row, ablation_rows, resolve, results_folder

log = logging.getLogger(__name__)

#: The metrics a record must hold to count as recorded (of :data:`canlib.lab.analysis.METRIC_KEYS`).
REQUIRED_METRICS = ("mAP", "rank1")


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
    ``results_dir`` defaults to the profile's own folder (:func:`canlib.lab.rows.results_folder`).
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
