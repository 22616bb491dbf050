"""How a run stops: the exceptions the trainer raises and the one line the CLI prints for any error."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run; the message says which checkpoint is kept."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable  # a checkpoint exists to continue from


class EvaluationFailed(RuntimeError):
    """Training finished and its checkpoint is kept, but the final evaluation failed."""


class RunFolderError(ValueError):
    """The output folder holds another run, cannot be written, or holds a run that cannot be resumed."""


def error_line(exc: BaseException) -> str:
    """One line for an error; a DataLoader worker's wrapped error becomes the original's message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    if len(lines) > 1 and any(ln.startswith("Original Traceback") for ln in lines):
        return lines[-1].split(": ", 1)[-1]  # "canlib.data.base.ImageReadError: cannot read image ..."
    return " ".join(lines)
