"""Checkpoint files: one path, atomic writes, loading that never runs code from the file, and
the random generators' state a checkpoint carries for an exact resume.

A checkpoint or an exported weights file may come from someone else. ``torch.load`` with
``weights_only=True`` unpickles only tensors and plain Python data (dicts, lists, tuples,
numbers, strings), so a crafted file cannot execute code; anything else in it is refused.
Every file problem (missing, empty, truncated, tampered, weights that do not fit the model)
is a :class:`CheckpointError` naming the file and what is wrong, which the CLI reports as
bad input (exit code 2).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from canlib.files import DiskFullError, UnsafeFileError, load_tensors, write_atomically

#: A run folder's checkpoint, relative to the folder.
CHECKPOINT = "checkpoints/last.pt"


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be read, written or used; the message names it."""


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/checkpoints/last.pt``, the checkpoint ``train`` keeps up to date."""
    return Path(run_dir) / CHECKPOINT


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file
    (:func:`canlib.files.write_atomically`).

    Raises :class:`CheckpointError` naming ``path`` when the folder or file cannot be written, and
    :class:`canlib.files.DiskFullError` naming it when the disk is full (the partial file removed).
    """
    path = Path(path)
    try:
        return write_atomically(path, lambda fh: torch.save(obj, fh))
    except DiskFullError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint or exported weights file with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or
    tampered file (one that holds anything but tensors and plain data; see :mod:`canlib.files`).
    """
    try:
        state = load_tensors(path, "a checkpoint", map_location)
    except UnsafeFileError as exc:
        raise CheckpointError(str(exc)) from None
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


def state_of(parts: Mapping[str, Any]) -> dict[str, Any]:
    """Each part's ``state_dict()`` under its name (``None`` for an absent part, e.g. no centre optimiser)."""
    return {name: None if part is None else part.state_dict() for name, part in parts.items()}


def load_state_of(parts: Mapping[str, Any], state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Load what :func:`state_of` saved into ``parts``, in order; ``"model"`` through :func:`load_model_state`.

    A part absent here or in the file (``None``) is skipped.
    """
    for name, part in parts.items():
        if name == "model":
            load_model_state(part, state[name], path)
        elif part is not None and state[name] is not None:
            part.load_state_dict(state[name])


# --------------------------------------------------------------------------- random generators


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (what ``weights_only`` loading accepts)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` stored, exactly."""
    py, npy = state["python"], state["numpy"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"]))
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
