"""The ablation grid of Tables 2-4 (Sections 4.2-4.3): rows, recorded runs, summaries.

Each row of the paper's Tables 2, 3 and 4 is a set of configuration overrides on top of a
profile. A run is identified by the hash of its resolved configuration (seed included)
and recorded under ``results_dir/<hash>/`` with its configuration, run record, per-epoch
log and metrics. A recorded run is reused when its configuration hash matches and its code
fingerprint (:func:`canlib.engine.record.code_fingerprint`) equals the current one, so
rerunning the grid only trains what changed; ``force=True`` retrains everything.
:func:`paper_claims` and :func:`judge_claims` state the comparisons the paper's text draws
from the tables and test them on the recorded runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from canlib.config import config_hash, dump_config, load_config
from canlib.engine.record import code_fingerprint
from canlib.losses import TABLE4_ROWS
from canlib.model import TABLE_PATTERNS

log = logging.getLogger(__name__)

#: Files copied from a run folder into ``results/`` (checkpoints stay out of git).
RECORDED_FILES = ("config.yaml", "run.json", "log.jsonl", "metrics.json")
METRIC_KEYS = ("mAP", "rank1", "rank3", "rank5", "rank10", "mINP")


@dataclass(frozen=True)
class Row:
    """One row of one of the paper's tables, as configuration overrides."""

    table: str
    label: str
    overrides: tuple[str, ...]


def ablation_rows(tables: Iterable[str] = ("Table 2", "Table 3", "Table 4")) -> list[Row]:
    """The rows of Tables 2 (no CA), 3 (with CA) and 4 (loss combinations, on Part-1,3,5,7 + CA)."""
    rows: list[Row] = []
    tables = set(tables)
    for table, ca in (("Table 2", False), ("Table 3", True)):
        if table in tables:
            for label, parts in TABLE_PATTERNS.items():
                rows.append(Row(table, label, (f"model.parts={list(parts)}", f"model.collaborative={str(ca).lower()}")))
    if "Table 4" in tables:
        for label, kwargs in TABLE4_ROWS.items():
            rows.append(Row("Table 4", label, tuple(f"loss.{k}={v}" for k, v in kwargs.items())))
    return rows


def resolve(profile: str | Path, row: Row, seed: int, data_root: str | Path) -> dict[str, Any]:
    """The resolved configuration of one run of ``row`` with ``seed``."""
    return load_config(profile, [*row.overrides, f"seed={seed}", f"data.root={data_root}", "train.progress=false"])


def recorded_run(results_dir: Path, cfg: dict[str, Any], fingerprint: str | None) -> dict[str, Any] | None:
    """The metrics of a recorded run with this configuration, or None.

    With a ``fingerprint`` the run must also have been trained by the same code; with
    ``None`` any recorded run of the configuration is returned (see :func:`load_records`).
    """
    folder = Path(results_dir) / config_hash(cfg)
    try:
        record = json.loads((folder / "run.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if fingerprint is not None and record.get("code_fingerprint") != fingerprint:
        return None
    return {**metrics, "code_fingerprint": record.get("code_fingerprint"), "commit": record.get("git", {}).get("commit")}


def load_records(
    profile: str | Path,
    data_root: str | Path,
    rows: Sequence[Row] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    results_dir: str | Path = "results/ablations",
) -> list[dict[str, Any]]:
    """Read the recorded runs of a grid without training anything (for the book).

    Each record says whether it was trained by the current code (``current``); runs that
    were never recorded are left out, so a reader sees what exists and how fresh it is.
    """
    fingerprint = code_fingerprint()
    out = []
    for row in rows if rows is not None else ablation_rows():
        for seed in seeds:
            cfg = resolve(profile, row, seed, data_root)
            metrics = recorded_run(Path(results_dir), cfg, None)
            if metrics is None:
                continue
            out.append({"table": row.table, "row": row.label, "seed": seed, "run": config_hash(cfg),
                        "current": metrics["code_fingerprint"] == fingerprint, "commit": metrics["commit"],
                        **{k: metrics[k] for k in METRIC_KEYS if k in metrics}})
    return out


def _train_subprocess(cfg: dict[str, Any], run_dir: Path, device: str, threads: int) -> None:
    """Train in a child process (one per core keeps both cores busy with small models)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "requested.yaml"
    dump_config(cfg, cfg_path)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "canlib", "train", "--config", str(cfg_path), "--output", str(run_dir),
           "--device", device, "--resume", "--no-progress"]
    with (run_dir / "train.log").open("w") as fh:
        subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def _is_stale(run_dir: Path, fingerprint: str) -> bool:
    """A working folder left by other training code (resuming it would mix two codes)."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False  # nothing recorded yet: an interrupted start, safe to resume
    return record.get("code_fingerprint") != fingerprint


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
) -> list[dict[str, Any]]:
    """Train (or reuse) every (row, seed) and return one record per run (as :func:`load_records`).

    Identical configurations that appear in two tables (Table 3's Part-1,3,5,7 is Table 4's
    last row) are trained once. ``jobs`` runs train side by side in child processes. An
    interrupted run resumes from its working folder; a folder left by other training code
    (another fingerprint) is discarded first.
    """
    rows = list(rows if rows is not None else ablation_rows())
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    fingerprint = code_fingerprint()
    threads = threads_per_job or max(1, (os.cpu_count() or 1) // max(jobs, 1))
    plan = {config_hash(cfg): cfg for cfg in (resolve(profile, r, s, data_root) for r in rows for s in seeds)}
    todo = {key: cfg for key, cfg in plan.items()
            if force or recorded_run(results_dir, cfg, fingerprint) is None}
    log.info("ablation grid: %d runs, %d distinct, %d to train",
             len(rows) * len(seeds), len(plan), len(todo))

    def work(item: tuple[str, dict[str, Any]]) -> None:
        key, cfg = item
        run_dir = runs_dir / key
        if run_dir.exists() and (force or _is_stale(run_dir, fingerprint)):
            shutil.rmtree(run_dir)
        _train_subprocess(cfg, run_dir, device, threads)
        dest = results_dir / key
        dest.mkdir(parents=True, exist_ok=True)
        for name in RECORDED_FILES:
            shutil.copy2(run_dir / name, dest / name)
        log.info("recorded %s", dest)

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        list(pool.map(work, todo.items()))

    records = load_records(profile, data_root, rows, seeds, results_dir)
    missing = len(rows) * len(seeds) - len(records)
    stale = [r["run"] for r in records if not r["current"]]
    if missing or stale:  # pragma: no cover - a finished run always records
        raise RuntimeError(f"ablation grid incomplete: {missing} runs without metrics, stale runs {stale}")
    return records


def _format(mean: float, std: float, seeds: int) -> str:
    """``mean ± std`` in percent with one decimal (just the mean for a single seed)."""
    return f"{mean:.1f}" if seeds < 2 else f"{mean:.1f} ± {std:.1f}"


def summarize(records: Sequence[dict[str, Any]]):
    """Mean and sample standard deviation over seeds per (table, row), in percent.

    Returns ``(table, mean, std)``: ``table`` holds ``"mean ± std"`` strings (the mean alone
    for a single seed), the number of seeds, and the paper's mAP and rank-1 beside them;
    ``mean`` and ``std`` are the numeric frames (``std`` is NaN for a single seed).
    """
    import pandas as pd

    from canlib import paper

    df = pd.DataFrame(records)
    keys = [k for k in METRIC_KEYS if k in df]
    stats = df.groupby(["table", "row"], sort=False)[keys]
    mean, std, n = stats.mean() * 100, stats.std(ddof=1) * 100, stats.size()
    table = pd.DataFrame(
        {k: [_format(m, s, c) for m, s, c in zip(mean[k], std[k], n)] for k in keys}, index=mean.index
    )
    table["seeds"] = n
    table["paper mAP"] = [paper.ABLATION_TABLES[t].get(r, {}).get("mAP") for t, r in table.index]
    table["paper rank1"] = [paper.ABLATION_TABLES[t].get(r, {}).get("rank1") for t, r in table.index]
    return table, mean, std


def _ablate(args) -> int:
    rows = ablation_rows(args.tables)
    if args.rows:
        rows = [r for r in rows if r.label in args.rows]
    records = run_grid(
        args.config, args.data_root, rows=rows, seeds=args.seeds, results_dir=args.results,
        runs_dir=args.runs, force=args.force, device=args.device, jobs=args.jobs,
    )
    import pandas as pd

    results = Path(args.results)
    pd.DataFrame(records).to_csv(results / "runs.csv", index=False)
    table, _, _ = summarize(records)
    table.to_csv(results / "summary.csv")
    print(table.to_string())
    return 0


def register_cli(subparsers) -> None:
    """Add the ``ablate`` sub-command (Tables 2-4 as a grid of recorded runs)."""
    p = subparsers.add_parser(
        "ablate",
        help="train (or reuse) the ablation grid of Tables 2-4",
        description="Train every row of the paper's Tables 2-4 for each seed, reusing runs already "
        "recorded with the same configuration and code, and write runs.csv and summary.csv.",
    )
    p.add_argument("--config", required=True, help="profile YAML (configs/cpu.yaml, configs/paper-market1501.yaml)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--tables", nargs="+", default=["Table 2", "Table 3", "Table 4"],
                   help='which tables (default: "Table 2" "Table 3" "Table 4")')
    p.add_argument("--rows", nargs="+", help="only these row labels (e.g. Part-1,3,5,7)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--results", default="results/ablations", help="where runs are recorded (in git)")
    p.add_argument("--runs", default="runs/ablations", help="working folders with checkpoints (not in git)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained side by side (one per core suits small models)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="retrain even when a recorded run exists")
    p.set_defaults(func=_ablate)


@dataclass(frozen=True)
class Claim:
    """A comparative claim of Sections 4.2-4.3 about the mAP of table rows.

    ``kind``: ``"greater"`` (the first row beats the second), ``"decreasing"`` (each row beats
    the next), ``"pairwise"`` (row ``i`` of the first half beats row ``i`` of the second half)
    or ``"best"`` (the first row is at least as good as every other row).
    """

    text: str
    kind: str
    rows: tuple[tuple[str, str], ...]

    def comparisons(self) -> list[tuple[int, int]]:
        """The ``(better, worse)`` index pairs the claim asserts."""
        n = len(self.rows)
        if self.kind == "greater":
            return [(0, 1)]
        if self.kind == "decreasing":
            return [(i, i + 1) for i in range(n - 1)]
        if self.kind == "pairwise":
            return [(i, i + n // 2) for i in range(n // 2)]
        if self.kind == "best":
            return [(0, i) for i in range(1, n)]
        raise ValueError(f"unknown claim kind {self.kind!r}")


def paper_claims() -> list[Claim]:
    """The claims the paper's text draws from Tables 2-4, in the order it makes them."""
    patterns = list(TABLE_PATTERNS)
    t4 = list(TABLE4_ROWS)
    best = "Part-1,3,5,7"
    return [
        Claim("finer stripes without CA hurt: Part-1,2,3 > Part-1,3,5,7,9 (Table 2)", "greater",
              (("Table 2", patterns[0]), ("Table 2", patterns[-1]))),
        Claim("without CA, mAP falls at every step from Part-1,2,3 to Part-1,3,5,7,9", "decreasing",
              tuple(("Table 2", p) for p in patterns)),
        Claim("CA improves Part-1,3,5,7 (Table 3 vs Table 2)", "greater", (("Table 3", best), ("Table 2", best))),
        Claim("CA improves every part pattern", "pairwise",
              tuple(("Table 3", p) for p in patterns) + tuple(("Table 2", p) for p in patterns)),
        Claim("with CA, Part-1,3,5,7 is the best pattern", "best",
              (("Table 3", best),) + tuple(("Table 3", p) for p in patterns if p != best)),
        Claim("adding the triplet loss helps: CE + triplet > CE", "greater", (("Table 4", t4[1]), ("Table 4", t4[0]))),
        Claim("adding the center loss helps: CE + triplet + center > CE + triplet", "greater",
              (("Table 4", t4[2]), ("Table 4", t4[1]))),
        Claim("clustering losses on global & local features > global only", "greater",
              (("Table 4", t4[3]), ("Table 4", t4[2]))),
    ]


def judge_claims(records: Sequence[dict[str, Any]], claims: Sequence[Claim] | None = None, metric: str = "mAP"):
    """Evaluate each claim on the paper's numbers and on the recorded runs' means.

    Besides the verdicts, ``min t`` is the smallest Welch statistic over the claim's
    comparisons, ``(mean_better - mean_worse) / sqrt(s1^2/n1 + s2^2/n2)``: negative when a
    comparison goes the other way, large when the ordering is clear of seed noise (with three
    seeds per row, about 3 for a one-sided 95 % test). It is NaN below two seeds per row.
    """
    import math

    import pandas as pd

    from canlib import paper

    summary, mean, std = summarize(records) if len(records) else (None, None, None)
    out = []
    for claim in claims if claims is not None else paper_claims():
        pv = [paper.ABLATION_TABLES[t][r][metric] for t, r in claim.rows]
        have = mean is not None and all(key in mean.index for key in claim.rows)
        ov = [float(mean.loc[key, metric]) for key in claim.rows] if have else []
        seeds = [int(summary.loc[key, "seeds"]) for key in claim.rows] if have else [0]
        ts = []
        if have:
            for a, b in claim.comparisons():
                sa, sb = float(std.loc[claim.rows[a], metric]), float(std.loc[claim.rows[b], metric])
                se = math.sqrt(sa ** 2 / seeds[a] + sb ** 2 / seeds[b]) if min(seeds[a], seeds[b]) > 1 else math.nan
                ts.append((ov[a] - ov[b]) / se if se > 0 else math.nan)
        holds = lambda v: all(v[a] > v[b] if claim.kind != "best" else v[a] >= v[b] for a, b in claim.comparisons())  # noqa: E731
        out.append({
            "claim": claim.text,
            "paper holds?": "yes" if holds(pv) else "no",
            "paper mAP %": _values(pv, claim),
            "proxy holds?": ("yes" if holds(ov) else "no") if have else "not run",
            "proxy mAP %": _values(ov, claim) if have else "-",
            "min t": round(min(ts), 1) if ts and not any(math.isnan(t) for t in ts) else math.nan,
            "min seeds": min(seeds),
        })
    return pd.DataFrame(out)


def _values(values: Sequence[float], claim: Claim) -> str:
    if claim.kind == "pairwise":  # with / without, pattern by pattern
        half = len(values) // 2
        return ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(values[:half], values[half:]))
    if len(values) == 2:
        return f"{values[0]:.1f} vs {values[1]:.1f}"
    return ", ".join(f"{v:.1f}" for v in values)
