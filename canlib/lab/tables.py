"""The grid's tables: ``runs.csv`` (one line per run) and ``summary.csv`` (mean and spread per row).

Both are written whole and atomically, a run of some rows replacing only their lines. The
statistics over seeds live in :mod:`canlib.lab.analysis`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from canlib.engine.errors import error_line
from canlib.lab.analysis import summarize
from canlib.lab.rows import TABLES, ablation_rows

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
    order (:data:`canlib.lab.rows.TABLES`' rows, then seed); lines of rows the grid no longer has come last."""
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
