"""What every run records beside its metrics: commit, configuration hash, versions, machine.

Whether the checked-out code still trains a recorded configuration as the recording code did is
the training digest's job (:mod:`canlib.lab.digest`, ``tests/test_digest.py``), not the record's.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from canlib.config import config_hash

REPO_DIR = Path(__file__).resolve().parents[2]


def _git(*args: str, repo: Path) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10).stdout


def git_commit(repo: Path = REPO_DIR) -> dict[str, Any]:
    """The checked-out commit and whether the work tree differs from it (None outside git)."""
    try:
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "canlib", "configs", repo=repo)
        return {"commit": _git("rev-parse", "HEAD", repo=repo).strip(), "dirty": bool(dirty.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine a run used: CPU model and cores, and the GPU when one was used."""
    info: dict[str, Any] = {
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(device), gpu_count=torch.cuda.device_count())
    return {**info, "device": str(device) if device is not None else "cpu"}


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import numpy
    import timm
    import torchvision

    import canlib

    versions = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    versions.update(numpy=numpy.__version__, canlib=canlib.__version__, timm=timm.__version__)
    if torch.cuda.is_available():
        versions.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()))
    return versions


#: Files copied from a run folder into ``results/`` (checkpoints stay out of git).
RECORDED_FILES = ("config.yaml", "run.json", "log.jsonl", "metrics.json")


def copy_record(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy a finished run's record (:data:`RECORDED_FILES`) from its working folder to ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in RECORDED_FILES:
        shutil.copy2(Path(run_dir) / name, dest / name)
    return dest


def run_record(cfg: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """Where a number came from: the commit (and whether the tree differed from it), the hash of
    the resolved configuration (saved beside it as ``config.yaml``), library versions, machine."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": cfg.get("profile"),
        "seed": cfg.get("seed"),
        "config_hash": config_hash(cfg),
        "git": git_commit(),
        "versions": library_versions(),
        "machine": machine_info(device),
    }
