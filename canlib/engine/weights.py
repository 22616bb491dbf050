"""Trained weights without the training state: export a run, load it back for inference.

A training checkpoint (``checkpoints/last.pt``) carries the optimisers, the scheduler and the
RNG states so that a run can resume exactly; a reader who only wants to look at a trained
model needs the network's weights and the configuration that built it. :func:`export_weights`
writes that smaller file (optionally in half precision, which is how the book stores the
models it shows), and :func:`load_trained` rebuilds the model from it, in evaluation mode.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from canlib.engine.build import build_model
from canlib.model import CAN

log = logging.getLogger(__name__)

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


def _export(args) -> int:
    from canlib.engine.cli import EXIT_BAD_INPUT

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}[args.dtype]
    runs: list[Path] = [Path(r) for r in args.run or []]
    if args.row:
        if args.config is None or args.data_root is None:
            log.error("--row needs --config and --data-root (to resolve the run's configuration hash)")
            return EXIT_BAD_INPUT
        from canlib.config import config_hash
        from canlib.engine.ablation import ablation_rows, resolve

        known = {f"{r.table}:{r.label}": r for r in ablation_rows()}
        for spec in args.row:
            if spec not in known:
                log.error("unknown row %r; known rows: %s", spec, ", ".join(known))
                return EXIT_BAD_INPUT
            runs.append(Path(args.runs) / config_hash(resolve(args.config, known[spec], args.seed, args.data_root)))
    if not runs:
        log.error("nothing to export: give --run DIR or --row 'Table N:label'")
        return EXIT_BAD_INPUT
    for run in runs:
        dest = Path(args.out) if args.out and len(runs) == 1 else Path(args.out_dir) / f"{run.name}.pt"
        try:
            export_weights(run, dest, dtype=dtype)
        except FileNotFoundError as exc:
            log.error("%s", exc)
            return EXIT_BAD_INPUT
        log.info("exported %s -> %s (%.1f MB)", run, dest, dest.stat().st_size / 1e6)
    return 0


def register_cli(subparsers) -> None:
    """Add the ``export`` sub-command (a run's trained weights without the training state)."""
    p = subparsers.add_parser(
        "export",
        help="export a finished run's weights (for inference and the book's figures)",
        description="Write a run's final weights, configuration, record and metrics to one file that "
        "canlib.engine.weights.load_trained reads. Name runs by folder (--run) or by ablation row "
        "(--row 'Table 3:Part-1,3,5,7' with --config, --data-root and --seed).",
    )
    p.add_argument("--run", action="append", help="a finished run folder (with checkpoints/last.pt); repeatable")
    p.add_argument("--row", action="append", help="an ablation row 'Table N:label'; repeatable")
    p.add_argument("--config", help="the profile the grid was run with (for --row)")
    p.add_argument("--data-root", help="the data root the grid was run with (for --row)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (for --row)")
    p.add_argument("--runs", default="runs/ablations", help="the grid's working folders (for --row)")
    p.add_argument("--out", help="output file (one run only)")
    p.add_argument("--out-dir", default="results/weights", help="output folder: <run name>.pt")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.set_defaults(func=_export)
