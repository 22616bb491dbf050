"""A run's output folder: when it may be written, what it records, and what a resume must match.

The folder holds::

    config.yaml        the resolved configuration
    run.json           seed, git commit and dirty flag, configuration hash, library versions, machine, data statistics
    log.jsonl          one line per epoch: lr, mean loss terms, images/s (and metrics when evaluated)
    checkpoints/last.pt  model, optimisers, scheduler, centres, RNG states and epoch
    metrics.json       the final evaluation (mAP, rank-k, mINP, the AP variant used)
    tensorboard/       TensorBoard event files of the log's and the metrics' values (train.tensorboard)

A folder holding a run is refused without ``resume`` or ``overwrite``, and one that cannot be
written is refused before any work. Each epoch's log line is appended (in one flushed write)
before its checkpoint; a resume drops the lines past the checkpoint's epoch (and TensorBoard
its events past it: :mod:`canlib.engine.tensorboard_log`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock
import torch
import yaml

from canlib.config import LATER_KEYS, config_value, dump_config
from canlib.engine.checkpoint import CHECKPOINT, checkpoint_path
from canlib.engine.errors import RunFolderError, error_line
from canlib.engine.record import run_record
from canlib.engine.tensorboard_log import TENSORBOARD, TensorBoardLog

log = logging.getLogger(__name__)

#: Configuration keys a resumed run may change (extending a run is allowed).
RESUMABLE_CHANGES = (
    "optim.epochs",
    "train.progress",
    "train.eval_every",
    "data.num_workers",
    "data.cache",
    "train.compile",
    "data.root",
    "data.verify_images",
    "train.tensorboard",
)
#: Files that make a folder a run: ``train`` refuses to start over them without --resume or --overwrite.
RUN_FILES = (CHECKPOINT, "metrics.json")
#: Everything a run writes in its folder: ``--overwrite`` replaces these and keeps anything else.
RUN_ENTRIES = ("config.yaml", "run.json", "log.jsonl", "metrics.json", "checkpoints", "evaluations", TENSORBOARD)
#: The lock a command holds on a run folder while it trains, evaluates or exports it.
LOCK = ".lock"


class FolderBusy(RunFolderError):
    """Another command holds the run folder's lock."""


#: The folders this process holds the lock of (a check inside its own command does not refuse it).
_HELD: set[Path] = set()


@contextlib.contextmanager
def locked(folder: str | Path, command: str, lock_file: str | Path | None = None) -> Iterator[None]:
    """Hold ``folder``'s exclusive lock while ``command`` runs; refuse at once, naming the holder, when
    another process holds it. The lock is the kernel's (``filelock``, flock on POSIX): a killed holder
    releases it, so a later ``--resume`` is never blocked by a stale lock. A folder that cannot be
    written (a read-only run evaluated with ``--out``) cannot be trained either, and is not locked.
    ``lock_file`` (default ``folder/.lock``) locks a folder from beside it, before it exists."""
    folder = Path(folder)
    path = Path(lock_file) if lock_file is not None else folder / LOCK
    holder = f"pid {os.getpid()} on {socket.gethostname()} ({command})"

    def sign(fd: int) -> None:  # who holds it, for the refusal the next command prints
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())

    lock = filelock.FileLock(path, timeout=0, on_acquired=sign)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            other = path.read_text().strip() or "another process"
        except OSError:
            other = "another process"
        raise FolderBusy(f"{folder} is in use by {other}: wait for it to finish, or choose another folder") from None
    except OSError:  # not writable: nothing here can write it either
        yield
        return
    _HELD.add(folder.resolve())
    try:
        yield
    finally:
        _HELD.discard(folder.resolve())
        lock.release()


def _rank() -> int:
    """This process's rank under torchrun (0 for a single process)."""
    return int(os.environ.get("RANK", "0") or 0)


def check_not_busy(folder: Path) -> None:
    """Refuse, naming the holder, a folder whose lock another process holds (see :func:`locked`).
    Only rank 0 checks under torchrun: the lock it takes (:func:`hold`) is its own job's, not another's."""
    if _rank() != 0:
        return
    if (folder / LOCK).exists() and folder.resolve() not in _HELD:
        with locked(folder, "check"):
            pass


@contextlib.contextmanager
def hold(folder: str | Path, command: str) -> Iterator[None]:
    """:func:`locked` by a single process or rank 0 of a torchrun job (the other ranks write nothing).
    Creates the folder for its lock, and removes it again if the command left it empty."""
    folder = Path(folder)
    if _rank() != 0:
        yield
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with locked(folder, command):
            yield
    finally:  # the lock file stays (removing a lock file races with a new holder), unless the folder is new
        if created and folder.is_dir() and [p.name for p in folder.iterdir()] in ([], [LOCK]):
            (folder / LOCK).unlink(missing_ok=True)
            folder.rmdir()


def _check_output_path(out: Path) -> None:
    """An output path the run's records can name (UTF-8) and that leads somewhere (no dangling or looping link)."""
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise RunFolderError(
            f"--output {str(out)!a} is not a UTF-8 path: the run's records (config.yaml, run.json) cannot "
            "name it; choose a name of UTF-8 characters"
        ) from None
    for path in (out, *out.parents):
        if path.is_symlink() and not path.exists():
            raise RunFolderError(
                f"--output {out}: {path} is a symbolic link that leads nowhere (a loop, or a missing target); "
                "remove it or choose another --output"
            )


def check_output_dir(out: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Before any work: refuse a folder holding a run (unless resuming or overwriting) and one
    that cannot be written. Writes nothing but a temporary probe file, removed at once."""
    if resume and overwrite:
        raise RunFolderError(
            "--resume continues the run in the output folder and --overwrite replaces it: pass one of them"
        )
    _check_output_path(out)
    check_not_busy(out)
    found = [name for name in RUN_FILES if (out / name).is_file()]
    if found and not (resume or overwrite):
        raise RunFolderError(
            f"the output folder {out} already holds a run ({', '.join(found)}): pass --resume to "
            "continue it, --overwrite to replace it, or choose another --output"
        )
    others = sorted(p.name for p in out.iterdir() if p.name not in (*RUN_ENTRIES, LOCK)) if out.is_dir() else []
    if others and not overwrite:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise RunFolderError(
            f"the output folder {out} holds files that are not a run's ({listed}): choose another --output, "
            "or pass --overwrite to write the run beside them (they are kept)"
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"cannot create the output folder {out}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise RunFolderError(f"cannot write to the output folder {out}: {exc.strerror or exc} ({existing})") from None


def changed_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested configurations (or that one lacks)."""
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += changed_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.append(f"{prefix}{key}")
    return keys


def _has(cfg: Mapping[str, Any], dotted: str) -> bool:
    """Whether the nested ``cfg`` holds the dotted key."""
    node: Any = cfg
    for name in dotted.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return False
        node = node[name]
    return True


def _added_later(saved: Mapping[str, Any], config: Mapping[str, Any], dotted: str) -> bool:
    """A key the schema gained after ``saved`` was written, at the value that trains as before (config.LATER_KEYS)."""
    return dotted in LATER_KEYS and not _has(saved, dotted) and config_value(config, dotted) == LATER_KEYS[dotted]


class RunFolder:
    """The files of one run in ``path``; rank 0 alone writes them (the caller's business)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.log_path = self.path / "log.jsonl"
        self.checkpoint = checkpoint_path(self.path)
        self.board: TensorBoardLog | None = None  # while :meth:`events` is open

    def check(self, resume: bool = False, overwrite: bool = False) -> None:
        """See :func:`check_output_dir`."""
        check_output_dir(self.path, resume=resume, overwrite=overwrite)

    def _read(self, name: str) -> Any:
        try:
            text = (self.path / name).read_text()
            return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise RunFolderError(f"cannot resume {self.path}: its {name} cannot be read ({error_line(exc)})") from None

    def check_resumable(self, config: Mapping[str, Any], statistics: Mapping[str, Any], data_root: Any) -> None:
        """The run in the folder has ``config`` (up to :data:`RESUMABLE_CHANGES`) and data of these ``statistics``."""
        saved = self._read("config.yaml") or {}
        changed = [
            k for k in changed_keys(saved, config) if k not in RESUMABLE_CHANGES and not _added_later(saved, config, k)
        ]
        lacking = [k for k in changed if not _has(saved, k)]
        if lacking:
            raise RunFolderError(
                f"cannot resume {self.path}: its config.yaml lacks {lacking}, so it was written by an older "
                "canlib; retrain the run (--overwrite) or choose another --output"
            )
        if changed:
            raise ValueError(
                f"cannot resume {self.path}: the configuration differs in {changed} "
                f"(a resumed run may change only {', '.join(RESUMABLE_CHANGES)})"
            )
        data = (self._read("run.json") or {}).get("data")
        recorded = data.get("statistics") if isinstance(data, dict) else None
        if not isinstance(recorded, dict) or not recorded:
            raise RunFolderError(
                f"cannot resume {self.path}: its run.json records no data statistics, so it was written by an "
                "older canlib; retrain the run (--overwrite) or choose another --output"
            )
        diffs = [
            f"{key} {statistics.get(key)} (the run's {value})"
            for key, value in recorded.items()
            if statistics.get(key) != value
        ]
        if diffs:
            raise ValueError(
                f"cannot resume {self.path}: the data set at {data_root} is not the one it was "
                f"trained on: {'; '.join(diffs)}"
            )

    def start(self, epoch: int, finished: bool, overwrite: bool) -> None:
        """The first writes of a run at ``epoch``: clear a replaced run's files, trim or start the log."""
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:  # every file of the replaced run goes (its evaluations too); other files stay
            for name in RUN_ENTRIES:
                entry = self.path / name
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
        if not finished:  # metrics.json will be rewritten
            (self.path / "metrics.json").unlink(missing_ok=True)
        if epoch == 0:
            self.checkpoint.unlink(missing_ok=True)  # a replaced run's, if any
            self.log_path.write_text("")
            shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)  # events of a run that never checkpointed
        elif self.log_path.is_file():
            trim_log(self.log_path, epoch)

    def write_record(self, config: Mapping[str, Any], device: torch.device, **sections: Any) -> None:
        """``config.yaml`` and ``run.json`` (the run record, with ``sections`` such as the data statistics)."""
        dump_config(config, self.path / "config.yaml")
        record = {**run_record(dict(config), device), **sections}
        (self.path / "run.json").write_text(json.dumps(record, indent=2) + "\n")

    @contextlib.contextmanager
    def events(self, enabled: bool, epoch: int) -> Iterator[None]:
        """While open (and ``enabled``), the log's lines and the metrics also go to TensorBoard event
        files, for the epochs after ``epoch`` (:class:`TensorBoardLog`); closed on every way out."""
        if not enabled:
            yield
            return
        self.board = TensorBoardLog(self.path, epoch)
        try:
            yield
        finally:
            self.board.close()
            self.board = None

    def append_log(self, stats: Mapping[str, Any]) -> None:
        """Append an epoch's line to ``log.jsonl`` (and to the event files, while :meth:`events` is open)."""
        append_line(self.log_path, stats)
        if self.board is not None:
            self.board.write_line(stats)

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """``metrics.json``: the final evaluation (and its scalars in the event files)."""
        (self.path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if self.board is not None:
            self.board.write_metrics(metrics)

    def kept(self, saved_epoch: int | None) -> str:
        """Which checkpoint a stopped run leaves behind (for the error messages)."""
        if saved_epoch is None:
            return "no checkpoint was written yet, so there is nothing to resume"
        return f"the last good checkpoint (end of epoch {saved_epoch}) is kept at {self.checkpoint}"

    def how_to_finish(self, epoch: int) -> str:
        """What to do when training finished but its final evaluation did not."""
        return (
            f"the checkpoint of epoch {epoch} is kept at {self.checkpoint}: once the cause is "
            f"fixed, rerun the same train command with --resume (it only evaluates) or run "
            f"`python -m canlib evaluate --run {self.path}`"
        )


class EpochLine:
    """An epoch's line of ``log.jsonl``: its loss terms summed over its images (each batch weighs its
    global size), then their means, the learning rate and the speed."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.seen = 0

    def add(self, terms: Mapping[str, float], batch: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * batch
        self.seen += batch

    def postfix(self) -> dict[str, str]:
        """The running means, for the progress bar."""
        return {k: f"{v / self.seen:.3f}" for k, v in self.sums.items()}

    def line(self, epoch: int, lr: float, elapsed: float) -> dict[str, Any]:
        """The line: epoch, lr, ``loss_<term>`` (the epoch's mean of each term), images and speed."""
        return {
            "epoch": epoch,
            "lr": lr,
            **{f"loss_{k}": v / max(self.seen, 1) for k, v in self.sums.items()},
            "images": self.seen,
            "seconds": elapsed,
            "images_per_s": self.seen / elapsed if elapsed > 0 else math.nan,
        }


def append_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line in one write, flushed to disk."""
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def trim_log(path: Path, epoch: int) -> None:
    """Keep the log lines up to ``epoch`` (a resumed checkpoint's); drop later and torn lines."""
    kept, torn = [], 0
    for line in path.read_text().splitlines():
        try:
            if line.strip() and int(json.loads(line)["epoch"]) <= epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            torn += 1
    if torn:
        log.warning("%s: dropped %d unreadable line(s) (a write cut short)", path, torn)
    path.write_text("".join(line + "\n" for line in kept))
