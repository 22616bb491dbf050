"""Where and how the grid's runs start: GPUs on one machine, ``torchrun``, a cluster through submitit.

A grid run is one child process, ``python -m canlib train`` (:func:`train_command`), or, for a
run that spans K GPUs, the same command under PyTorch's launcher, ``torchrun --standalone
--nproc_per_node=K``. What this module adds around that child:

* **one machine, several GPUs**: :func:`place` splits the visible GPUs into ``jobs`` slots of
  ``gpus_per_run`` each, and a child sees only its slot (``CUDA_VISIBLE_DEVICES``, :func:`child_env`).
  The grid's thread pool has one worker per slot and :class:`SlotPool` hands a free slot to the run
  a worker starts, so the runs beyond the slots wait in the pool's queue (no scheduler of our own);
* **a cluster**: :func:`submit` sends each run as one task of a Slurm job array through
  `submitit <https://github.com/facebookincubator/submitit>`_ (its ``AutoExecutor``; its local
  executor runs the same path on one machine, which is what the tests use), and :func:`wait`
  collects the jobs. The submitted function is the grid's own top-level
  :func:`canlib.lab.grid.train_and_record`, with plain arguments, so the job and the local pool
  train and record through one code path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A run's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs); ``None``: whatever the parent sees.
Slot = tuple[str, ...] | None


def visible_gpus(count: int, cuda_visible_devices: str | None) -> list[str]:
    """The identifiers of the ``count`` GPUs this process sees, as a child's ``CUDA_VISIBLE_DEVICES``
    must name them: the parent's own list when it has one (``"2,3"`` -> ``["2", "3"]``), else ``0..count-1``."""
    if cuda_visible_devices is None:
        return [str(i) for i in range(count)]
    listed = [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]
    return listed[:count]


def local_gpus() -> list[str]:
    """:func:`visible_gpus` of this machine (torch's device count, the environment's list)."""
    import torch

    return visible_gpus(torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def place(jobs: int, gpus: Sequence[str], gpus_per_run: int = 1) -> list[tuple[str, ...]]:
    """``jobs`` disjoint slots of ``gpus_per_run`` GPUs each, taken in order from ``gpus``.

    ``ValueError`` naming the counts when the slots need more GPUs than ``gpus`` holds.
    """
    if jobs < 1 or gpus_per_run < 1:
        raise ValueError(f"--jobs and --gpus-per-run must be at least 1, got {jobs} and {gpus_per_run}")
    needed = jobs * gpus_per_run
    if needed > len(gpus):
        visible = ", ".join(gpus) or "none"
        raise ValueError(
            f"--jobs {jobs} x --gpus-per-run {gpus_per_run} = {needed} GPUs asked for, "
            f"{len(gpus)} visible ({visible}); at most --jobs {len(gpus) // gpus_per_run} with "
            f"--gpus-per-run {gpus_per_run}"
        )
    return [tuple(gpus[i * gpus_per_run : (i + 1) * gpus_per_run]) for i in range(jobs)]


def check_split(p: int, gpus_per_run: int) -> None:
    """A run over K processes splits each PK batch's P identities evenly (see
    :class:`canlib.engine.distributed.GlobalBatchShard`): ``ValueError`` before anything starts otherwise."""
    if p % gpus_per_run:
        divisors = [d for d in range(1, p + 1) if p % d == 0]
        raise ValueError(
            f"--gpus-per-run {gpus_per_run} cannot split data.p={p} identities per batch evenly; "
            f"choose one of {', '.join(map(str, divisors))}"
        )


class SlotPool:
    """The free slots of a pool with one worker per slot: a worker takes one for each run it starts."""

    def __init__(self, slots: Sequence[Slot]) -> None:
        self._free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
        for slot in slots:
            self._free.put(slot)

    @contextlib.contextmanager
    def take(self) -> Iterator[Slot]:
        """A free slot for the duration of one run (never waits while workers <= slots)."""
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)


def train_command(cfg_path: str | Path, run_dir: str | Path, device: str, nproc: int = 1) -> list[str]:
    """The child's command line: ``python -m canlib train`` (resuming), under ``torchrun`` for ``nproc > 1``.

    ``--standalone`` lets torchrun pick a free rendezvous port, so several runs of K processes
    can share a machine.
    """
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    train = ["canlib", "train", "--config", str(cfg_path), "--output", str(run_dir), "--device", device]
    return [sys.executable, *launcher, "-m", *train, "--resume", "--no-progress"]


def child_env(base: Mapping[str, str], threads: int | None, slot: Slot, nproc: int = 1) -> dict[str, str]:
    """The child's environment: ``threads`` CPU threads split over its ``nproc`` processes, and
    only its slot's GPUs (``slot=None``: the parent's, e.g. those Slurm gave the job)."""
    env = dict(base)
    if threads is not None:
        per_process = str(max(1, threads // nproc))
        env.update(OMP_NUM_THREADS=per_process, MKL_NUM_THREADS=per_process)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
    return env


# ---------------------------------------------------------------------------------------------- submitit
@dataclass(frozen=True)
class ClusterOptions:
    """What each job asks its scheduler for (submitit's ``AutoExecutor`` parameters).

    ``cluster`` is submitit's executor: ``"slurm"``, or ``"local"`` (the same jobs as processes of
    this machine: for tests). ``extra`` holds further Slurm options without the ``slurm_`` prefix,
    e.g. ``(("account", "abc"), ("qos", "high"))``.
    """

    folder: Path
    timeout_min: int
    cluster: str = "slurm"
    partition: str | None = None
    gpus_per_node: int = 0
    mem_gb: float | None = None
    cpus_per_task: int | None = None
    extra: tuple[tuple[str, str | int], ...] = field(default_factory=tuple)

    def parameters(self) -> dict[str, Any]:
        """The ``update_parameters`` keywords (``None``: the scheduler's default)."""
        params: dict[str, Any] = {
            "name": "canlib-grid",
            "timeout_min": self.timeout_min,
            "nodes": 1,
            "tasks_per_node": 1,
            "gpus_per_node": self.gpus_per_node,
            "mem_gb": self.mem_gb,
            "cpus_per_task": self.cpus_per_task,
            "slurm_partition": self.partition,
        }
        params.update({f"slurm_{key}": value for key, value in self.extra})
        return {k: v for k, v in params.items() if v is not None}


def executor(options: ClusterOptions) -> Any:
    """A submitit ``AutoExecutor`` with ``options`` (``ValueError`` for an option it does not know)."""
    try:
        import submitit
    except ImportError as exc:  # pragma: no cover - installed with the test and cluster extras
        raise RuntimeError('--launcher submitit needs submitit: pip install -e ".[cluster]"') from exc
    ex = submitit.AutoExecutor(folder=options.folder, cluster=options.cluster)
    try:
        ex.update_parameters(**options.parameters())
    except (NameError, AssertionError) as exc:  # submitit's refusals of unknown or mistyped options
        raise ValueError(f"submitit refused the job options: {str(exc).splitlines()[0]}") from None
    return ex


def submit(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], options: ClusterOptions) -> list[Any]:
    """Submit ``fn(*args)`` for each ``args`` of ``calls`` as one job array; the jobs, in order."""
    if not calls:
        return []
    jobs = executor(options).map_array(fn, *zip(*calls, strict=True))
    ids = ", ".join(str(job.job_id) for job in jobs)
    log.info("submitted %d jobs to %s (logs: %s): %s", len(jobs), options.cluster, options.folder, ids)
    return list(jobs)


class JobsFailed(RuntimeError):
    """Some submitted jobs failed; the message names each, its log and its error."""


def wait(jobs: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """Every job's result, in order; :class:`JobsFailed` naming each failed job (after all have ended)."""
    results, failed = [], []
    for job, name in zip(jobs, names, strict=True):
        try:
            results.append(job.result())
            log.info("job %s (%s) finished", job.job_id, name)
        except Exception as exc:  # submitit re-raises the job's error, or reports a job that died
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            failed.append(f"{name} (job {job.job_id}, log {job.paths.stderr}): {first}")
    if failed:
        raise JobsFailed(f"{len(failed)} of {len(jobs)} jobs failed: " + "; ".join(failed))
    return results
