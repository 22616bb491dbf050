"""Certifying that a change to the training code does not change what it trains.

A recorded run is *current* when the code that trained it is the code checked out now (one
fingerprint per training module, :mod:`canlib.engine.record`). A restructuring that keeps the
meaning (a function moved, typed configuration sections, lint fixes) changes fingerprints all the
same. Retraining every recorded run after each such change would cost hours (the CPU grid alone
takes two), so ``python -m canlib certify --against COMMIT`` checks the change instead:

1. it extracts the training code of ``COMMIT`` (``git archive``) beside the checkout;
2. both codes draw the same small synthetic data set, which must be byte-identical;
3. both codes train every configuration the records use (the grid's rows, the decision stages'
   neck options, the pre-training profile) for a short schedule that still crosses a
   learning-rate step, on that data, one thread each, and evaluate;
4. everything a run produces is compared bit for bit: every value of every epoch's log (but
   timings), the metrics, and the final checkpoint (weights, loss centres, optimiser and
   scheduler state, RNG states).

Only when all of it is identical does it write, for each training module whose fingerprint
differs, an equivalence between the two fingerprints into ``results/equivalences.json``, with
the digests of the evidence in ``results/equivalences/``. :func:`canlib.engine.record.changed_modules`
then counts such a module as unchanged. What the check cannot see are code paths that none of
the short runs takes (resuming, CUDA, mixed precision, distributed training): a change there
that alters numbers would go unnoticed, which is why the certificate lists what was replayed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from canlib.config import config_hash, dump_config, load_config
from canlib.engine.checkpoint import checkpoint_path, load_checkpoint
from canlib.engine.record import (
    EQUIVALENCES,
    REPO_DIR,
    code_fingerprint,
    git_commit,
    load_equivalences,
    machine_info,
    module_fingerprints,
)

log = logging.getLogger(__name__)

#: A module that does not exist in one of the two codes (added or removed by the change).
ABSENT = "absent"
#: Log keys that measure time, not training.
TIMING_KEYS = frozenset({"seconds", "images_per_s"})
#: The short schedule every replay uses (the same on both sides): two epochs, a step after one.
SHORT = ("optim.epochs=2", "optim.milestones=[1]", "train.eval_every=2", "train.progress=false")
#: The small synthetic set both codes draw (train/test halves of 24 identities).
DATA_ARGS = ("--ids", "24", "--seed", "7")


def replay_configs(profile: str | Path, pretrain_profile: str | Path | None) -> dict[str, dict[str, Any]]:
    """Every configuration the records use, by name: the grid's distinct rows, the neck stage's
    options on the validation split, and the pre-training profile (with a batch that fits)."""
    from canlib.lab.decide import STAGES, VALIDATION, pending_defaults, stage_rows
    from canlib.lab.grid import ablation_rows

    named: dict[str, list[str]] = {}
    for row in ablation_rows():
        named.setdefault(f"{row.table}: {row.label}", list(row.overrides))
    for row in stage_rows(STAGES[0], [], pending_defaults(STAGES, 0)):
        overrides = [o for o in row.overrides if o not in VALIDATION] + ["data.val_ids=4", "data.val_seed=0"]
        named[f"decision {row.table}: {row.label}"] = overrides
    configs: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for name, overrides in named.items():
        cfg = load_config(profile, [*overrides, *SHORT, "seed=0"])
        if config_hash(cfg) not in seen:
            seen.add(config_hash(cfg))
            configs[name] = cfg
    if pretrain_profile is not None:
        configs["pretraining"] = load_config(pretrain_profile, [*SHORT, "data.p=4", "data.k=2", "seed=0"])
    return configs


def extract_commit(commit: str, dest: Path, repo: Path = REPO_DIR) -> Path:
    """The package (and configs) of ``commit`` under ``dest``; raises when git cannot give it."""
    proc = subprocess.run(
        ["git", "archive", "--format=tar", commit, "canlib", "configs"], cwd=repo, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise ValueError(f"certify: git cannot give the code of {commit!r}: {proc.stderr.decode().strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    tar_path = dest / "code.tar"
    tar_path.write_bytes(proc.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    tar_path.unlink()
    return dest


def _full_commit(commit: str, repo: Path = REPO_DIR) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=repo, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ValueError(f"certify: {commit!r} is not a commit of {repo}")
    return proc.stdout.strip()


def _env(code_root: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(code_root),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
    )


def _run_canlib(code_root: Path, args: list[str], log_path: Path) -> None:
    """``python -m canlib ARGS`` with the package at ``code_root`` first on the path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "canlib", *args],
            check=False,
            cwd=code_root,
            env=_env(code_root),
            stdout=out,
            stderr=out,
        )
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"certify: `canlib {' '.join(args[:1])}` failed with {code_root}:\n{tail}")


def _package_of(code_root: Path) -> Path:
    probe = subprocess.run(
        [sys.executable, "-c", "import canlib; print(canlib.__file__)"],
        cwd=code_root,
        env=_env(code_root),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(probe.stdout.strip()).resolve().parent


def digest(obj: Any) -> str:
    """A hash of nested dicts, lists, tensors, arrays and scalars that changes with any bit."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif hasattr(obj, "tobytes"):  # numpy arrays
        h.update(f"A{getattr(obj, 'dtype', '')}{getattr(obj, 'shape', '')}".encode())
        h.update(obj.tobytes())
    elif isinstance(obj, float):
        h.update(obj.hex().encode())
    else:
        h.update(repr(obj).encode())


def tree_digest(root: Path) -> str:
    """A hash of every file under ``root`` (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def run_outputs(run_dir: Path) -> dict[str, str]:
    """Digests of what a run produced: its log (without timings), metrics and final checkpoint."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = load_checkpoint(checkpoint_path(run_dir))
    out = {"log": digest(rows), "metrics": digest(metrics)}
    out.update({f"checkpoint.{key}": digest(value) for key, value in state.items()})
    return out


def _replay(code_root: Path, cfg: dict[str, Any], work: Path) -> dict[str, str]:
    work.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, work / "requested.yaml")
    _run_canlib(
        code_root,
        ["train", "--config", str(work / "requested.yaml"), "--output", str(work / "run"), "--device", "cpu"],
        work / "train.log",
    )
    return run_outputs(work / "run")


def compare_outputs(old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]) -> list[str]:
    """What differs between the two codes' outputs (empty when every digest is equal)."""
    problems = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, {}), new.get(name, {})
        problems += [f"{name}: {key}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    return problems


def changed_fingerprints(old_package: Path, new_package: Path) -> dict[str, tuple[str, str]]:
    """``{module: (old, new)}`` for every training module whose fingerprint differs."""
    before = module_fingerprints(old_package, missing_ok=True)
    after = module_fingerprints(new_package, missing_ok=True)
    return {
        name: (before.get(name, ABSENT), after.get(name, ABSENT))
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def _replay_all(
    sides: dict[str, Path], configs: dict[str, dict[str, Any]], work: Path, jobs: int
) -> dict[str, dict[str, dict[str, str]]]:
    """Each configuration trained by each code; ``{side: {config name: digests}}``."""
    tasks = [(side, name) for name in configs for side in sides]

    def one(task: tuple[str, str]) -> dict[str, str]:
        side, name = task
        log.info("certify: %s code, %s", side, name)
        return _replay(sides[side], configs[name], work / side / config_hash(configs[name]))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, tasks))
    out: dict[str, dict[str, dict[str, str]]] = {side: {} for side in sides}
    for (side, name), digests in zip(tasks, results, strict=True):
        out[side][name] = digests
    return out


def _same_data(sides: dict[str, Path], work: Path) -> Path:
    """Both codes draw the small synthetic set; it must be byte-identical. Returns the new code's."""
    digests = {}
    for side, root in sides.items():
        out = work / side / "data"
        _run_canlib(root, ["make-synthetic", "--out", str(out), *DATA_ARGS], work / side / "data.log")
        digests[side] = tree_digest(out)
    if len(set(digests.values())) != 1:
        raise CertificationError(f"the synthetic data sets differ: {digests}")
    return work / "new" / "data"


class CertificationError(RuntimeError):
    """The two codes did not produce bit-identical results."""


def certify(
    against: str,
    profile: str | Path,
    pretrain_profile: str | Path | None,
    why: str,
    work: Path,
    jobs: int = 2,
    out: Path = EQUIVALENCES,
    only: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Replay ``against``'s code and the checkout's; on identical outputs, record equivalences.

    Returns the new equivalence entries (none when no training module changed); raises
    :class:`CertificationError` naming what differs otherwise. ``only``: replay just the
    configurations whose names contain one of these strings (a quick check that records nothing).
    """
    against = _full_commit(against)
    old_root = extract_commit(against, work / "old-code")
    sides = {"old": old_root, "new": REPO_DIR}
    for side, root in sides.items():
        if _package_of(root) != (root / "canlib").resolve():
            raise CertificationError(f"the {side} side imports canlib from {_package_of(root)}, not {root}")
    changed = changed_fingerprints(old_root / "canlib", REPO_DIR / "canlib")
    if not changed:
        log.info("certify: no training module differs from %s: nothing to certify", against)
        return []
    data = _same_data(sides, work)
    configs = {
        name: {**cfg, "data": {**cfg["data"], "root": str(data.resolve())}, "model": _absolute_weights(cfg["model"])}
        for name, cfg in replay_configs(profile, pretrain_profile).items()
        if not only or any(part in name for part in only)
    }
    if not configs:
        raise ValueError(f"certify: no configuration name contains any of {list(only)}")
    outputs = _replay_all(sides, configs, work, jobs)
    problems = compare_outputs(outputs["old"], outputs["new"])
    if problems:
        raise CertificationError("outputs differ:\n  " + "\n  ".join(problems))
    if only:  # a partial replay is a quick check, never a certificate
        log.info("certify: the %d configurations replayed are identical (partial: nothing recorded)", len(configs))
        return []
    return _record(against, changed, configs, outputs["new"], why, data, out)


def _absolute_weights(model: dict[str, Any]) -> dict[str, Any]:
    path = model.get("pretrained")
    if isinstance(path, str) and not os.path.isabs(path):
        return {**model, "pretrained": str((REPO_DIR / path).resolve())}
    return model


def _record(
    against: str,
    changed: dict[str, tuple[str, str]],
    configs: dict[str, dict[str, Any]],
    outputs: dict[str, dict[str, str]],
    why: str,
    data: Path,
    out: Path,
) -> list[dict[str, Any]]:
    head = git_commit()
    evidence = {
        "against": against,
        "checkout": {**head, "code_fingerprint": code_fingerprint()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info("cpu"),
        "torch": torch.__version__,
        "data": {"arguments": list(DATA_ARGS), "sha256": tree_digest(data)},
        "schedule": list(SHORT),
        "configs": {name: {"config_hash": config_hash(cfg), "digests": outputs[name]} for name, cfg in configs.items()},
        "changed": {k: list(v) for k, v in changed.items()},
        "not_replayed": "resuming, CUDA, mixed precision, torch.compile, distributed training",
    }
    name = f"{against[:12]}-{hashlib.sha256(json.dumps(evidence['changed']).encode()).hexdigest()[:8]}.json"
    evidence_path = out.parent / "equivalences" / name
    evidence_path.parent.mkdir(parents=True, exist_ok=True)
    evidence_path.write_text(json.dumps(evidence, indent=1) + "\n")
    entries = [
        {"module": m, "from": a, "to": b, "why": why, "evidence": evidence_path.relative_to(out.parent).as_posix()}
        for m, (a, b) in changed.items()
    ]
    known = load_equivalences(out)
    merged = known + [e for e in entries if e not in known]
    out.write_text(json.dumps({"equivalences": merged}, indent=1) + "\n")
    return entries


def _certify_cli(args: argparse.Namespace) -> int:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="canlib-certify-"))
    try:
        entries = certify(
            args.against, args.config, args.pretrain_config or None, args.why, work, args.jobs, only=tuple(args.only)
        )
    except CertificationError as err:
        log.error("certify: NOT equivalent to %s: %s", args.against, err)
        return 1
    for e in entries:
        log.info("certified %s: %s -> %s", e["module"], e["from"], e["to"])
    log.info(
        "certify: %d module fingerprint(s) certified against %s (work folder %s)", len(entries), args.against, work
    )
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``certify`` sub-command."""
    p = subparsers.add_parser(
        "certify", help="replay short trainings with an older commit's code and this checkout's; record equivalences"
    )
    p.add_argument("--against", required=True, help="the git commit whose training code the records used")
    p.add_argument("--why", required=True, help="what the change was (stored with the equivalences)")
    p.add_argument("--config", default="configs/cpu.yaml", help="the profile whose rows are replayed")
    p.add_argument("--pretrain-config", default="configs/pretrain.yaml", help="the pre-training profile (or '')")
    p.add_argument("--jobs", type=int, default=2, help="trainings side by side (one thread each)")
    p.add_argument("--work", help="working folder (default: a new temporary folder)")
    p.add_argument("--only", action="append", default=[], help="replay only configurations whose name contains this")
    p.set_defaults(func=_certify_cli)
