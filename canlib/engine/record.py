"""What every run records beside its metrics: configuration, seed, code, versions, machine."""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml

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
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
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
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
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
    "engine/distributed.py",
    "engine/checkpoint.py",
)


def training_source_files(package_dir: Path = PACKAGE_DIR, missing_ok: bool = False) -> list[Path]:
    """The files :func:`code_fingerprint` hashes, in a fixed order (``missing_ok``: skip listed
    sources that do not exist, e.g. in an older version of the package)."""
    files: set[Path] = set()
    for entry in TRAINING_SOURCES:
        path = package_dir / entry
        if path.is_dir():
            files.update(path.rglob("*.py"))
        elif path.is_file():
            files.add(path)
        elif not missing_ok:
            raise FileNotFoundError(f"code_fingerprint: {path} is listed in TRAINING_SOURCES but does not exist")
    return sorted(files)


def _fingerprint_sources(sources: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode())
        digest.update(_code_without_docstrings(sources[name]).encode())
    return digest.hexdigest()[:12]


def code_fingerprint(package_dir: Path = PACKAGE_DIR) -> str:
    """A hash of what the training code *does*: equal fingerprints mean the same training code.

    Only :data:`TRAINING_SOURCES` count, and docstrings and comments are left out, so editing
    prose, the paper's tables or the ablation driver does not change it. Recorded runs are
    reused only when both this and the configuration hash match.
    """
    files = training_source_files(package_dir)
    return _fingerprint_sources({p.relative_to(package_dir).as_posix(): p.read_text() for p in files})


def module_fingerprints(package_dir: Path = PACKAGE_DIR, missing_ok: bool = False) -> dict[str, str]:
    """One fingerprint per training source file (``{"model.py": "1a2b...", ...}``).

    Recorded in every ``run.json`` so that a stale run can say *which* modules changed.
    """
    return {
        p.relative_to(package_dir).as_posix(): _fingerprint_sources({"": p.read_text()})
        for p in training_source_files(package_dir, missing_ok)
    }


def _git(*args: str, repo: Path = REPO_DIR) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None


_COMMIT_MODULES: dict[str, dict[str, str] | None] = {}


def module_fingerprints_at(commit: str, repo: Path = REPO_DIR) -> dict[str, str] | None:
    """:func:`module_fingerprints` of the code at a git ``commit`` (None when git cannot say).

    For runs recorded before ``run.json`` held per-module fingerprints.
    """
    if commit in _COMMIT_MODULES:
        return _COMMIT_MODULES[commit]
    package = PACKAGE_DIR.relative_to(repo).as_posix()
    listing = _git("ls-tree", "-r", "--name-only", commit, "--", package, repo=repo)
    result: dict[str, str] | None = None
    if listing is not None:
        result = {}
        for path in listing.split():
            rel = path[len(package) + 1 :]
            listed = any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in TRAINING_SOURCES)
            if not rel.endswith(".py") or not listed:
                continue
            text = _git("show", f"{commit}:{path}", repo=repo)
            if text is None:
                result = None
                break
            result[rel] = _fingerprint_sources({"": text})
    _COMMIT_MODULES[commit] = result
    return result


#: Certified behaviour-preserving code changes (written by ``python -m canlib certify``).
EQUIVALENCES = REPO_DIR / "results" / "equivalences.json"


def load_equivalences(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The certified equivalences: ``{"module", "from", "to", "why", "evidence"}`` entries, each
    saying that two fingerprints of one training module train bit-for-bit the same (see
    :mod:`canlib.lab.certify`). An absent file means none."""
    path = Path(EQUIVALENCES if path is None else path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable equivalences file ({err})") from err
    return list(data.get("equivalences", []))


def equivalent(module: str, a: str | None, b: str | None, equivalences: list[dict[str, Any]]) -> bool:
    """Whether fingerprints ``a`` and ``b`` of ``module`` are equal or joined by certified steps."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    edges: dict[str, set[str]] = {}
    for e in equivalences:
        if e.get("module") == module:
            edges.setdefault(e["from"], set()).add(e["to"])
            edges.setdefault(e["to"], set()).add(e["from"])
    seen, frontier = {a}, [a]
    while frontier:
        for nxt in edges.get(frontier.pop(), ()):
            if nxt == b:
                return True
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return False


def recorded_modules(record: dict[str, Any]) -> dict[str, str] | None:
    """The per-module fingerprints of the code a run was trained with, as far as they are known.

    The run's own ``code_modules``; modules it did not record (the list of training sources grew
    since) are read from its git commit when the run was made from a clean checkout. Runs from
    before per-module fingerprints are read from git entirely. None when nothing is known.
    """
    git = record.get("git") or {}
    commit = git.get("commit")
    then = record.get("code_modules")
    if then is None:
        return module_fingerprints_at(commit) if commit else None
    if commit and git.get("dirty") is False:
        at_commit = module_fingerprints_at(commit) or {}
        then = {**{k: v for k, v in at_commit.items() if k not in then}, **then}
    return dict(then)


def changed_modules(
    record: dict[str, Any],
    current: dict[str, str] | None = None,
    equivalences: list[dict[str, Any]] | None = None,
) -> list[str] | None:
    """The training modules whose code differs between a recorded run and the checkout.

    A module counts as unchanged when its two fingerprints are equal or certified equivalent
    (:func:`equivalent`, ``results/equivalences.json``). ``None`` when the run's code cannot be
    known (no fingerprints and no git commit, e.g. a shallow clone without that commit).
    """
    current = module_fingerprints() if current is None else current
    equivalences = load_equivalences() if equivalences is None else equivalences
    then = recorded_modules(record)
    if then is None:
        return None
    return sorted(
        name
        for name in set(then) | set(current)
        if not equivalent(name, then.get(name), current.get(name), equivalences)
    )


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_files(cfg: dict[str, Any]) -> dict[str, str]:
    """``{config key: sha256}`` of the files a run reads besides its data set (the pre-trained
    weights): a run whose weights file has since changed is not current."""
    value = (cfg.get("model") or {}).get("pretrained")
    if not isinstance(value, str) or value == "imagenet":
        return {}
    for path in (Path(value), REPO_DIR / value):  # as build.resolve_pretrained reads it
        if path.is_file():
            return {"model.pretrained": file_sha256(path)}
    return {}


def changed_inputs(record: dict[str, Any], run_dir: str | os.PathLike[str]) -> list[str]:
    """The input files a recorded run hashed whose bytes differ now, read through the run's saved
    ``config.yaml``. Runs recorded without hashes have none to compare: their configuration is
    not read and no file is hashed."""
    recorded = record.get("inputs") or {}
    if not recorded:
        return []
    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    now = input_files(cfg)
    return sorted(k for k, v in recorded.items() if now.get(k) != v)


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
    """Everything needed to say where a number came from."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": cfg.get("profile"),
        "seed": cfg.get("seed"),
        "git": git_commit(),
        "code_fingerprint": code_fingerprint(),
        "code_modules": module_fingerprints(),
        "inputs": input_files(cfg),
        "versions": library_versions(),
        "machine": machine_info(device),
    }
