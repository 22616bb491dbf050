"""What every run records beside its metrics: configuration, seed, code, versions, machine."""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PACKAGE_DIR.parent


def git_commit(repo: Path = REPO_DIR) -> dict[str, Any]:
    """The checked-out commit and whether the work tree differs from it (None outside git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "canlib", "configs"],
            cwd=repo, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        return {"commit": head, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _code_without_docstrings(source: str) -> str:
    """The module's syntax tree with docstrings removed (comments never reach the tree)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


#: The sources that determine a training result (relative to the package; folders include
#: every module under them). Left out on purpose: the paper's numbers (``paper.py``), model
#: complexity counting, the ablation driver, the CLI, this module and exported weights.
TRAINING_SOURCES: tuple[str, ...] = (
    "attention.py",
    "backbone.py",
    "pooling.py",
    "model.py",
    "losses.py",
    "config.py",
    "data",
    "metrics",
    "engine/build.py",
    "engine/trainer.py",
    "engine/evaluate.py",
)


def training_source_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files :func:`code_fingerprint` hashes, in a fixed order."""
    files: set[Path] = set()
    for entry in TRAINING_SOURCES:
        path = package_dir / entry
        if path.is_dir():
            files.update(path.rglob("*.py"))
        elif path.is_file():
            files.add(path)
        else:
            raise FileNotFoundError(f"code_fingerprint: {path} is listed in TRAINING_SOURCES but does not exist")
    return sorted(files)


def code_fingerprint(package_dir: Path = PACKAGE_DIR) -> str:
    """A hash of what the training code *does*: equal fingerprints mean the same training code.

    Only :data:`TRAINING_SOURCES` count, and docstrings and comments are left out, so editing
    prose, the paper's tables or the ablation driver does not change it. Recorded runs are
    reused only when both this and the configuration hash match.
    """
    digest = hashlib.sha256()
    for path in training_source_files(package_dir):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(_code_without_docstrings(path.read_text()).encode())
    return digest.hexdigest()[:12]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine a run used: CPU model and cores, and the GPU when one was used."""
    info: dict[str, Any] = {
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    info["device"] = str(device) if device is not None else "cpu"
    return info


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import numpy
    import torchvision

    import canlib

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "canlib": canlib.__version__,
    }
    try:
        import timm

        versions["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return versions


def run_record(cfg: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """Everything needed to say where a number came from."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": cfg.get("profile"),
        "seed": cfg.get("seed"),
        "git": git_commit(),
        "code_fingerprint": code_fingerprint(),
        "versions": library_versions(),
        "machine": machine_info(device),
    }
