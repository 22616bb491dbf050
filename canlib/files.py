"""Reading a PyTorch file a user is handed, safely: ``weights_only`` loading and canlib's refusal.

Checkpoints, exported weights and pre-trained trunks are all read here, with
``torch.load(weights_only=True)``: a file that holds anything but tensors and plain data is
refused in one line naming the file and what it would have called, never with torch's advice to
pass ``weights_only=False`` (which would run the file's code).
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnsafeFileError(ValueError):
    """A file that is not a plain PyTorch file of tensors (tampered, truncated, or not one at all)."""


def _refusal(path: Path, exc: pickle.UnpicklingError, what: str) -> str:
    """Why weights-only loading refused ``path``: the globals it would have called, in one line."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
    calls = f"it would call {', '.join(names)}" if names else detail or type(exc).__name__
    return (
        f"{path}: refused: the file holds objects other than tensors and plain data, which {what} "
        f"never does (tampered, or not written by canlib or torch.save of a state dict): {calls}"
    )


def load_tensors(path: str | os.PathLike[str], what: str = "a checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; :class:`UnsafeFileError` in one line for a missing,
    empty, truncated or tampered file (``what`` names the kind of file in the message)."""
    path = Path(path)
    if not path.is_file():
        raise UnsafeFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UnsafeFileError(f"{path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # a raw pickle (not torch.save's zip) draws a protocol warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(_refusal(path, exc, what)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise UnsafeFileError(f"{path}: truncated or not a PyTorch file ({first})") from None
