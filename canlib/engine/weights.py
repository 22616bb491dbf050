"""Trained weights without the training state: export a run, load it back for inference.

A training checkpoint (``checkpoints/last.pt``) carries the optimisers, the scheduler and the
RNG states so that a run can resume exactly; a reader who only wants to look at a trained
model needs the network's weights and the configuration that built it. :func:`export_weights`
writes that smaller file (optionally in half precision, which is how the book stores the
models it shows), and :func:`load_trained` rebuilds the model from it, in evaluation mode.
Every file is read with ``weights_only=True`` (:mod:`canlib.engine.checkpoint`). The ``export``
command also writes ONNX (``--onnx``, :mod:`canlib.engine.onnx_export`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from canlib.config import RunSections, load_config
from canlib.engine.build import build_model
from canlib.engine.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from canlib.model import CAN

log = logging.getLogger(__name__)

#: File format version of an exported weights file.
FORMAT = 1


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved configuration a run folder recorded (``config.yaml``), validated.

    Raises ``FileNotFoundError`` naming the folder when it is missing or not a run folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: is it a run folder written by `train`?")
    return load_config(run_dir / "config.yaml")


def model_from_checkpoint(
    cfg: dict[str, Any], path: str | Path, device: torch.device | str = "cpu"
) -> tuple[CAN, dict[str, Any]]:
    """The model ``cfg`` builds with the weights of ``path`` (a checkpoint or exported weights), in eval mode.

    The classifier size is the file's (the training data set's identities), whatever data set the
    model is then evaluated on. Returns the model and the file's other entries (epoch, ...).
    Raises :class:`CheckpointError` naming the file when it cannot be read or does not fit.
    """
    state = load_checkpoint(path)
    weights = state.get("model")
    if not isinstance(weights, dict) or "classifiers.0.weight" not in weights:
        raise CheckpointError(f"{path}: holds no CAN model weights (no 'model' entry with classifiers)")
    num_classes = int(state.get("num_classes") or weights["classifiers.0.weight"].shape[0])
    # The file holds every weight: nothing to pre-load.
    model = build_model(dataclasses.replace(RunSections.from_config(cfg).model, pretrained=None), num_classes)
    load_model_state(model, weights, path)
    meta = {k: v for k, v in state.items() if k in ("epoch", "format", "num_classes", "config_hash")}
    return model.to(device).eval(), meta


def export_weights(run_dir: str | Path, dest: str | Path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write ``run_dir``'s final network weights, configuration, record and metrics to ``dest``.

    ``dtype`` casts floating-point tensors (``None`` keeps float32). The classifiers are kept,
    so the file also records the number of training identities. The weights are checked
    against the run's configuration first (:class:`CheckpointError` when they do not fit).
    """
    run_dir, dest = Path(run_dir), Path(dest)
    checkpoint = checkpoint_path(run_dir)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT}: is it a finished training run?")
    model, meta = model_from_checkpoint(read_run_config(run_dir), checkpoint)
    weights = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "record": json.loads((run_dir / "run.json").read_text()),
        "metrics": json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else None,
        "epoch": int(meta["epoch"]),
        "num_classes": int(model.num_classes),
        "model": weights,
    }
    return save_checkpoint(payload, dest)


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[CAN, dict[str, Any]]:
    """The model stored by :func:`export_weights`, in float32 and evaluation mode, and its metadata.

    The backbone is rebuilt without downloading anything (``pretrained`` is ignored: the file
    holds every weight). The file is read with ``weights_only=True``; a file that is not an
    export, is damaged or does not fit its own configuration raises :class:`CheckpointError`.
    """
    payload = load_checkpoint(path)
    if payload.get("format") != FORMAT or not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{path}: not an exported weights file of format {FORMAT}")
    # A key the file's configuration lacks takes its default, as in any configuration dictionary.
    model_section = dataclasses.replace(RunSections.from_config(payload["config"]).model, pretrained=None)
    model = build_model(model_section, int(payload["num_classes"]))
    load_model_state(model, payload["model"], path)
    meta = {k: v for k, v in payload.items() if k != "model"}
    return model.float().to(device).eval(), meta


def _runs_to_export(args: argparse.Namespace) -> list[Path]:
    """The run folders named by ``--run`` and ``--row``; ``ValueError`` naming a bad argument."""
    runs: list[Path] = [Path(r) for r in args.run or []]
    if args.row:
        if args.config is None or args.data_root is None:
            raise ValueError("--row needs --config and --data-root (to resolve the run's configuration hash)")
        from canlib.config import config_hash
        from canlib.lab.grid import ablation_rows, resolve

        known = {f"{r.table}:{r.label}": r for r in ablation_rows()}
        for spec in args.row:
            if spec not in known:
                raise ValueError(f"unknown row {spec!r}; known rows: {', '.join(known)}")
            runs.append(Path(args.runs) / config_hash(resolve(args.config, known[spec], args.seed, args.data_root)))
    if not runs:
        raise ValueError("nothing to export: give --run DIR or --row 'Table N:label'")
    if args.onnx and len(runs) > 1:
        raise ValueError(f"--onnx writes one file: name one run, not {len(runs)}")
    return runs


def _export_onnx(args: argparse.Namespace, run: Path) -> int:
    from canlib.engine.onnx_export import ParityError, export_run

    try:
        report = export_run(run, args.onnx, data_root=args.data_root, opset=args.opset, check=not args.no_check)
    except ParityError as exc:
        print(json.dumps(exc.report, indent=2))
        log.error("%s", exc)
        return 1
    print(json.dumps(report, indent=2))
    log.info("exported %s -> %s (%.1f MB, opset %d)", run, args.onnx, Path(args.onnx).stat().st_size / 1e6, args.opset)
    return 0


def _export(args: argparse.Namespace) -> int:
    from canlib.engine.cli import EXIT_BAD_INPUT

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}[args.dtype]
    try:
        runs = _runs_to_export(args)
        if args.onnx:
            return _export_onnx(args, runs[0])
        for run in runs:
            dest = Path(args.out) if args.out and len(runs) == 1 else Path(args.out_dir) / f"{run.name}.pt"
            export_weights(run, dest, dtype=dtype)
            log.info("exported %s -> %s (%.1f MB)", run, dest, dest.stat().st_size / 1e6)
    except (KeyError, ValueError, OSError) as exc:
        # Bad input, one line: a missing run folder or data root, an unknown data set or row, a damaged or
        # tampered checkpoint (CheckpointError), weights that do not fit the configuration, an unwritable
        # --out/--onnx (ExportError), missing optional packages.
        log.error("%s", exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        return EXIT_BAD_INPUT
    return 0


def register_cli(subparsers) -> None:
    """Add the ``export`` sub-command (a run's trained weights, or an ONNX file, without the training state)."""
    from canlib.engine.onnx_export import OPSET

    p = subparsers.add_parser(
        "export",
        help="export a finished run's weights or ONNX model (for inference and the book's figures)",
        description="Write a run's final weights, configuration, record and metrics to one file that "
        "canlib.engine.weights.load_trained reads, or (--onnx OUT.onnx) its evaluation-mode descriptor "
        "network as ONNX, checked against PyTorch with ONNX Runtime on the data set's query and gallery "
        "images (exit code 1 when they differ). Name runs by folder (--run) or by ablation row "
        "(--row 'Table 3:Part-1,3,5,7' with --config, --data-root and --seed).",
    )
    p.add_argument("--run", action="append", help=f"a finished run folder (with {CHECKPOINT}); repeatable")
    p.add_argument("--row", action="append", help="an ablation row 'Table N:label'; repeatable")
    p.add_argument("--config", help="the profile the grid was run with (for --row)")
    p.add_argument(
        "--data-root",
        help="the data root the grid was run with (for --row); the images of the "
        "ONNX parity check (default: the run's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the run (for --row)")
    p.add_argument("--runs", default="runs/ablations", help="the grid's working folders (for --row)")
    p.add_argument("--out", help="output file (one run only)")
    p.add_argument("--out-dir", default="results/weights", help="output folder: <run name>.pt")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument(
        "--onnx",
        metavar="OUT.onnx",
        help="write one run's model as ONNX (needs the 'export' extra) and check it against PyTorch",
    )
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX parity check (no data set needed)")
    p.set_defaults(func=_export)
