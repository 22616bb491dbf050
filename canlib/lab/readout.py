"""The slice read-out of a trained run: its descriptor whole, its global slices alone, its local slices alone.

A CAN descriptor concatenates 4 global and 12 local features (Part-1,3,5,7 with CA). When CAN beats
Part-1, the read-out tells whether the local features carry information of their own, or whether
more slices of the same information merely dilute or reinforce the global ones. It evaluates the
run's last checkpoint once (one feature extraction, three rankings) on the split the run was
evaluated on (validation for a decision run), and is recorded beside the run's metrics as
``slices.json``: an evaluation of the same checkpoint, not a new training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from canlib.config import RunSections
from canlib.engine.build import build_eval_loaders
from canlib.engine.checkpoint import checkpoint_path
from canlib.engine.evaluate import evaluate_slices, evaluation_options
from canlib.engine.weights import model_from_checkpoint, read_run_config
from canlib.files import write_text_atomically

#: The read-out's file in a recorded run.
SLICES = "slices.json"


def slice_readout(run_dir: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The metrics of ``run_dir``'s model on its own evaluation split: ``all``, ``global``, ``local``."""
    cfg = read_run_config(run_dir)
    run = RunSections.from_config(cfg)
    _, query, gallery = build_eval_loaders(run.data)
    model, meta = model_from_checkpoint(cfg, checkpoint_path(run_dir), device)
    slices = evaluate_slices(model, query, gallery, torch.device(device), **evaluation_options(run.eval))
    return {"epoch": meta.get("epoch"), **slices}


def record_slices(run_dir: str | Path, record_dir: str | Path, device: str = "cpu") -> Path:
    """Measure :func:`slice_readout` of ``run_dir`` and write it into the recorded run ``record_dir``."""
    return write_text_atomically(Path(record_dir) / SLICES, json.dumps(slice_readout(run_dir, device), indent=1) + "\n")


def read_slices(record_dir: str | Path) -> dict[str, Any] | None:
    """A recorded run's read-out, or None when it has none."""
    path = Path(record_dir) / SLICES
    return json.loads(path.read_text()) if path.is_file() else None
