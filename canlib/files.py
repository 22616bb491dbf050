"""Files in and out: reading a PyTorch file a user is handed safely, and writing any file atomically.

Checkpoints, exported weights and pre-trained trunks are all read here, with
``torch.load(weights_only=True)``: a file that holds anything but tensors and plain data is
refused in one line naming the file and what it would have called, never with torch's advice to
pass ``weights_only=False`` (which would run the file's code).

Checkpoints, exports and evaluation records are written here (:func:`write_atomically`): to a
temporary file beside the destination, then renamed over it, so that a crash or a full disk never
leaves half a file; a full disk is named as such (:class:`DiskFullError`) and the partial file removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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


#: The errors of a write that found no room: a full disk, a file-size limit, a quota.
NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class DiskFullError(OSError):
    """A write that found no room (:data:`NO_ROOM`); the message names the file, the partial file is gone."""


class _Sink:
    """A binary file that remembers the first error of its writes (a writer such as ``torch.save``
    reports them as its own ``RuntimeError``, without the errno)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def _record(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except OSError as exc:
            self.error = self.error or exc
            raise

    def write(self, data: Any) -> int:
        return int(self._record(lambda: self.fh.write(data)))

    def flush(self) -> None:
        self._record(self.fh.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def _no_room(path: Path, exc: BaseException, recorded: OSError | None) -> DiskFullError | None:
    """The :class:`DiskFullError` for a failed write of ``path``, or None when the disk was not the cause."""
    cause = recorded if recorded is not None else exc if isinstance(exc, OSError) else None
    if cause is None or cause.errno not in NO_ROOM:
        return None
    error = DiskFullError(
        f"cannot write {path}: the disk is full ({os.strerror(cause.errno)}); "
        "the partial file was removed: free some space and run the command again"
    )
    error.errno = cause.errno
    return error


def write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """``write(fh)`` into ``path.tmp``, flushed to disk, then renamed over ``path``: a crash never leaves half a
    file. On any failure the temporary file is removed; a full disk raises :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    sink: _Sink | None = None
    try:
        with tmp.open("wb") as fh:
            sink = _Sink(fh)
            write(sink)  # type: ignore[arg-type]  # a file in all but name
            sink.flush()
            sink._record(lambda: os.fsync(fh.fileno()))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        full = _no_room(path, exc, sink.error if sink is not None else None)
        if full is not None:
            raise full from None
        raise
    return path


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_atomically` of ``text`` (UTF-8)."""
    return write_atomically(path, lambda fh: fh.write(text.encode()))


def write_path_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """:func:`write_atomically` for a writer that takes a file name (``write(tmp)``), such as an ONNX model's."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        full = _no_room(path, exc, _errno_of(exc))
        if full is not None:
            raise full from None
        raise
    return path


def _errno_of(exc: BaseException) -> OSError | None:
    """The first ``OSError`` in ``exc``'s chain of causes (a library may wrap the write's own)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
