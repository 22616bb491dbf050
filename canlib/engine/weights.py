"""Trained weights without the training state: export a run, load it back for inference.

A training checkpoint (``checkpoints/last.pt``) carries the optimisers, the scheduler and the
RNG states so that a run can resume exactly; a reader who only wants to look at a trained
model needs the network's weights and the configuration that built it. :func:`export_weights`
writes that smaller file (optionally in half precision, which is how the book stores the
models it shows), and :func:`load_trained` rebuilds the model from it, in evaluation mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from canlib.engine.build import build_model
from canlib.model import CAN

#: File format version of an exported weights file.
FORMAT = 1


def export_weights(run_dir: str | Path, dest: str | Path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write ``run_dir``'s final network weights, configuration, record and metrics to ``dest``.

    ``dtype`` casts floating-point tensors (``None`` keeps float32). The classifiers are kept,
    so the file also records the number of training identities.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/last.pt: is it a finished training run?")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state["model"].items()}
    payload = {
        "format": FORMAT,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "record": json.loads((run_dir / "run.json").read_text()),
        "metrics": json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else None,
        "epoch": int(state["epoch"]),
        "num_classes": int(state["model"]["classifiers.0.weight"].shape[0]),
        "model": model,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, dest)
    return dest


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[CAN, dict[str, Any]]:
    """The model stored by :func:`export_weights`, in float32 and evaluation mode, and its metadata.

    The backbone is rebuilt without downloading anything (``pretrained`` is ignored: the file
    holds every weight).
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=False)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an exported weights file of format {FORMAT}")
    cfg = payload["config"]
    cfg = {**cfg, "model": {**cfg["model"], "pretrained": None}}
    model = build_model(cfg, payload["num_classes"])
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in payload["model"].items()})
    meta = {k: v for k, v in payload.items() if k != "model"}
    return model.to(device).eval(), meta
