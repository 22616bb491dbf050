"""Trained weights without the training state: export a run, load it back for inference.

A training checkpoint (``checkpoints/last.pt``) carries the optimisers, the scheduler and the
RNG states so that a run can resume exactly; a reader who only wants to look at a trained
model needs the network's weights and the configuration that built it. :func:`export_weights`
writes that smaller file (optionally in half precision, which is how the book stores the
models it shows), and :func:`load_trained` rebuilds the model from it, in evaluation mode.
Every file is read with ``weights_only=True`` (:mod:`canlib.engine.checkpoint`). The ``export``
command also writes ONNX (``--onnx``, :mod:`canlib.engine.onnx_export`). A run's weights are used
with its ``config.yaml`` only when the configuration hash the checkpoint carries matches it
(:func:`load_run_checkpoint`): a hand edit of the file would build another model around them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from canlib.config import RunSections, config_hash, load_config
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
    return model_from_state(cfg, load_checkpoint(path), path, device)


def model_from_state(
    cfg: dict[str, Any], state: Mapping[str, Any], path: str | Path, device: torch.device | str = "cpu"
) -> tuple[CAN, dict[str, Any]]:
    """:func:`model_from_checkpoint` of a file already read (``state``, from ``path``)."""
    weights = state.get("model")
    if not isinstance(weights, dict) or "classifiers.0.weight" not in weights:
        raise CheckpointError(f"{path}: holds no CAN model weights (no 'model' entry with classifiers)")
    num_classes = int(state.get("num_classes") or weights["classifiers.0.weight"].shape[0])
    # The file holds every weight: nothing to pre-load.
    model = build_model(dataclasses.replace(RunSections.from_config(cfg).model, pretrained=None), num_classes)
    load_model_state(model, weights, path)
    meta = {k: v for k, v in state.items() if k in ("epoch", "format", "num_classes", "config_hash")}
    return model.to(device).eval(), meta


def stored_config_hash(state: Mapping[str, Any]) -> str | None:
    """The hash of the configuration a checkpoint or exported weights file was trained with, or None."""
    record = state.get("record")
    for value in (state.get("config_hash"), record.get("config_hash") if isinstance(record, dict) else None):
        if isinstance(value, str) and value:
            return value
    return None


def check_trained_with(
    run_dir: Path, cfg: Mapping[str, Any], state: Mapping[str, Any], path: Path, force: bool = False
) -> None:
    """Refuse weights trained with another configuration than the run folder's ``config.yaml`` now
    holds (a hand edit would build another model around them), naming both hashes; ``force``: a warning."""
    stored, current = stored_config_hash(state), config_hash(cfg)
    if stored is None:
        log.warning("%s records no configuration hash: config.yaml cannot be checked against it", path)
        return
    if stored == current:
        return
    message = (
        f"{path} was trained with configuration {stored}, but {run_dir / 'config.yaml'} hashes to {current} "
        "(edited since training?)"
    )
    if not force:
        raise CheckpointError(f"{message}: restore it, or pass --force to use it as it is")
    log.warning("%s; used as it is (--force)", message)


def check_finished(run_dir: Path, cfg: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Refuse a run that did not finish: its checkpoint's epoch below ``optim.epochs``, or no ``metrics.json``."""
    epoch, epochs = state.get("epoch"), int(cfg["optim"]["epochs"])
    if not isinstance(epoch, int) or epoch < epochs:
        why = f"its checkpoint is of epoch {epoch} of {epochs} (optim.epochs)"
    elif not (run_dir / "metrics.json").is_file():
        why = "it has no metrics.json (its final evaluation)"
    else:
        return
    raise CheckpointError(
        f"{run_dir} did not finish training: {why}; finish it (train --resume), or pass --allow-unfinished"
    )


class RunCheckpoint(NamedTuple):
    """A run's configuration (``config.yaml``), the weights file to use, and that file's contents."""

    config: dict[str, Any]
    path: Path
    state: dict[str, Any]


def load_run_checkpoint(
    run_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    force: bool = False,
    finished: bool = False,
) -> RunCheckpoint:
    """Read a run's configuration and its checkpoint (or ``checkpoint``), checked before any work:
    the file was trained with this ``config.yaml`` (:func:`check_trained_with`, unless ``force``) and,
    with ``finished``, the run finished (:func:`check_finished`). ``FileNotFoundError`` or
    :class:`CheckpointError` naming what is wrong."""
    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint is not None else checkpoint_path(run_dir)
    if run_dir.is_dir() and checkpoint is None and not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT}: is it a finished training run?")
    cfg = read_run_config(run_dir)
    state = load_checkpoint(path)
    check_trained_with(run_dir, cfg, state, path, force)
    if finished:
        check_finished(run_dir, cfg, state)
    return RunCheckpoint(cfg, path, state)


def check_destination(dest: str | os.PathLike[str], replace: bool = True) -> Path:
    """Before any work: refuse a ``dest`` file that cannot be written (a folder, a read-only place,
    a file where a folder should be) and, unless ``replace``, one that exists, in one line naming it.
    Creates nothing but a probe, removed at once."""
    dest = Path(dest)
    if dest.is_dir():
        raise OSError(f"cannot write {dest}: it is a folder; name a file inside it")
    if not replace and (dest.exists() or dest.is_symlink()):
        raise FileExistsError(f"{dest} already exists: pass --overwrite to replace it, or name another file")
    existing = dest.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a folder")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise OSError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return dest


def export_weights(
    run_dir: str | Path,
    dest: str | Path,
    dtype: torch.dtype | None = torch.float16,
    overwrite: bool = False,
    force: bool = False,
    allow_unfinished: bool = False,
) -> Path:
    """Write ``run_dir``'s final network weights, configuration, record and metrics to ``dest``.

    ``dtype`` casts floating-point tensors (``None`` keeps float32). The classifiers are kept,
    so the file also records the number of training identities. Refused before any work: an
    existing ``dest`` (unless ``overwrite``), weights trained with another configuration than
    ``config.yaml`` (unless ``force``), a run that did not finish (unless ``allow_unfinished``:
    :func:`load_run_checkpoint`), and weights that do not fit the configuration (:class:`CheckpointError`).
    """
    run_dir, dest = Path(run_dir), check_destination(dest, replace=overwrite)
    cfg, checkpoint, state = load_run_checkpoint(run_dir, force=force, finished=not allow_unfinished)
    model, meta = model_from_state(cfg, state, checkpoint)
    weights = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "config_hash": stored_config_hash(state),
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
