"""Checkpoint files: one path, atomic writes, and loading that never runs code from the file.

A checkpoint or an exported weights file may come from someone else. ``torch.load`` with
``weights_only=True`` unpickles only tensors and plain Python data (dicts, lists, tuples,
numbers, strings), so a crafted file cannot execute code; anything else in it is refused.
Every file problem (missing, empty, truncated, tampered, weights that do not fit the model)
is a :class:`CheckpointError` naming the file and what is wrong, which the CLI reports as
bad input (exit code 2).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: A run folder's checkpoint, relative to the folder.
CHECKPOINT = "checkpoints/last.pt"


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be read, written or used; the message names it."""


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/checkpoints/last.pt``, the checkpoint ``train`` keeps up to date."""
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file.

    Raises :class:`CheckpointError` naming ``path`` when the folder or file cannot be written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _refusal(path: Path, exc: pickle.UnpicklingError) -> str:
    """Why weights-only loading refused ``path``: the globals it would have called, in one line."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    if names and all(n.startswith("numpy.") for n in names):
        return (
            f"{path}: holds NumPy objects ({', '.join(names)}): a checkpoint written before canlib stored "
            "RNG states as tensors; weights-only loading refuses it, so retrain the run"
        )
    detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
    what = f"it would call {', '.join(names)}" if names else detail or type(exc).__name__
    return (
        f"{path}: refused: the file holds objects other than tensors and plain data, which a checkpoint "
        f"never does (tampered, or not written by canlib): {what}"
    )


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint or exported weights file with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or
    tampered file (one that holds anything but tensors and plain data).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # a raw pickle (not torch.save's zip) draws a protocol warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal(path, exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or not a PyTorch file ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dictionary of tensors and metadata, got {type(state).__name__}")
    return state


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """``model.load_state_dict(state)``; weights that do not fit are a one-line :class:`CheckpointError`.

    Floating-point tensors are cast to the model's dtype by ``load_state_dict`` itself, so a
    half-precision export loads into a float32 model.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = getattr(model, "parts", None)
        saved = sorted({int(m.group(1)) for k in state if (m := re.match(r"branches\.part(\d+)\.", k))})
        problems = [f"the file's branches are parts {saved}"] if parts is not None and saved else []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)):
            if keys:
                problems.append(f"{len(keys)} {what} (e.g. {keys[0]})")
        raise CheckpointError(
            f"{path}: its weights do not fit the model the configuration builds"
            + (f" (parts {list(parts)})" if parts is not None else "")
            + ": "
            + ", ".join(problems)
            + "; was it trained with another configuration?"
        )
    model.load_state_dict(state)
