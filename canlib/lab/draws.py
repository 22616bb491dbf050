"""Test draws: a run's model evaluated on fresh draws of test people, for intervals that cover them.

A grid's seeds vary the training on one fixed set of test people; how much a verdict would move
on other people is not in that spread (the trunk alone scores 32.5-48.2 mAP over five draws of
50 validation identities). Each draw here is the reporting set made again by its generator with
the same arguments and another seed (:data:`DRAW_SEEDS`) for its people, and the reporting set's
own cameras (``camera_seed``): new people seen by the same cameras, at the same difficulty. With
the cameras redrawn too, a draw would test another domain, not other people (measured on the
calibration draws: ``results/controls/calibration-realistic/README.md``). Only its query and
gallery are read. A run's model is evaluated on every draw, and the metrics,
per-query AP included, are recorded beside the run as ``draws.json``:
:func:`canlib.lab.analysis.seed_draw_interval` turns a pair of rows' ``[seed, draw]`` matrices
(:func:`draw_matrix`) into an interval over seeds and draws.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from canlib.data.synthetic import SyntheticConfig, cameras_seed, make_synthetic
from canlib.engine.evaluate import evaluate_run
from canlib.files import write_text_atomically

log = logging.getLogger(__name__)

#: The draws' seeds: none is the reporting set's (0), a calibration draw's (11, 12) or the
#: pre-training set's (1000).
DRAW_SEEDS: tuple[int, ...] = (101, 102, 103, 104, 105)
#: The read-out's file in a recorded run.
DRAWS = "draws.json"
#: Metrics of each draw kept in ``draws.json`` (with the per-query AP).
KEPT = ("mAP", "rank1", "mINP", "num_query", "num_gallery", "num_valid_queries")


def make_draws(reporting_root: str | Path, draws_dir: str | Path, seeds: Sequence[int] = DRAW_SEEDS) -> list[Path]:
    """The draws of a generated set: its ``meta.json`` arguments with each seed of ``seeds``, generated
    once under ``draws_dir/draw-<seed>`` (a folder made with other arguments is refused, not replaced)."""
    meta = Path(reporting_root) / "meta.json"
    if not meta.is_file():
        raise ValueError(
            f"{reporting_root}: test draws need a generated set (with meta.json); real data has no generator"
        )
    arguments = json.loads(meta.read_text())["arguments"]
    if int(arguments["seed"]) in seeds:
        raise ValueError(f"the reporting set's seed {arguments['seed']} is among the draws' seeds {list(seeds)}")
    roots = []
    cameras = cameras_seed(SyntheticConfig(**arguments))
    for seed in seeds:
        root = Path(draws_dir) / f"draw-{seed}"
        wanted = {**arguments, "seed": seed, "camera_seed": cameras}
        if (root / "meta.json").is_file():
            made = json.loads((root / "meta.json").read_text())["arguments"]
            if made != wanted:
                raise ValueError(f"{root} was generated with other arguments than {reporting_root}'s: remove it first")
        else:
            make_synthetic(root, **wanted)
        roots.append(root)
    return roots


def draw_readout(run_dir: str | Path, roots: Sequence[Path], device: str = "cpu") -> dict[str, Any]:
    """``run_dir``'s final model on each draw: the metrics of :data:`KEPT` and the per-query AP."""
    draws = {}
    for root in roots:
        metrics = evaluate_run(run_dir, data_root=root, device=device)
        ap = [None if a is None else round(float(a), 6) for a in metrics["ap_per_query"]]
        draws[root.name] = {**{k: metrics[k] for k in KEPT}, "ap_per_query": ap}
        log.info("%s on %s: mAP %.4f", run_dir, root.name, metrics["mAP"])
    return {"draws": draws}


def record_draws(run_dir: str | Path, record_dir: str | Path, roots: Sequence[Path], device: str = "cpu") -> Path:
    """Measure :func:`draw_readout` of ``run_dir`` and write it into the recorded run ``record_dir``."""
    text = json.dumps(draw_readout(run_dir, roots, device), indent=1) + "\n"
    return write_text_atomically(Path(record_dir) / DRAWS, text)


def read_draws(record_dir: str | Path) -> dict[str, Any] | None:
    """A recorded run's draws, or None when it has none."""
    path = Path(record_dir) / DRAWS
    return json.loads(path.read_text()) if path.is_file() else None


def draw_matrix(record_dirs: Sequence[str | Path], key: str = "mAP", seeds: Sequence[int] = DRAW_SEEDS) -> np.ndarray:
    """``[run, draw]`` matrix of ``key`` for one row's runs (one per seed), in percent; ``ValueError``
    naming a run that lacks a draw."""
    rows = []
    for folder in record_dirs:
        draws = (read_draws(folder) or {}).get("draws", {})
        missing = [s for s in seeds if f"draw-{s}" not in draws]
        if missing:
            raise ValueError(f"{folder}: no evaluation on draw(s) {missing} (python -m canlib draws)")
        rows.append([100.0 * float(draws[f"draw-{s}"][key]) for s in seeds])
    return np.asarray(rows, dtype=float)
