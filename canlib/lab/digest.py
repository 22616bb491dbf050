"""The training digest: does the checked-out code train every recorded configuration as before?

Every distinct configuration the committed records use (the ``config.yaml`` of each run under
``results/ablations``, ``results/decisions``, their ``-v2``/``-v3`` "before" and ``results/pretrained``)
is shortened to a bit-exact training of a few steps (:data:`SHORT`: two epochs of two batches, a
learning-rate step after the first, seed 0, one thread) on a tiny synthetic set drawn here, and what
it produces (the log without timings, the metrics, every tensor of the final weights) is hashed into
one SHA-256. ``results/training-digest.json`` holds these digests; ``tests/test_digest.py``
recomputes and compares them.

The digest trains in a child process whose CPU kernels are pinned before torch loads
(:data:`PINNED_KERNELS`: ATen's dispatch and oneDNN's ISA at AVX2, MKL's conditional-numerical-
reproducibility branch at COMPATIBLE, one thread), so that an AVX-512 machine computes the AVX2
code paths and MKL takes one path whatever the vendor. What the pins cannot reach are the
approximate instructions (``rsqrtps``, ``rcpps``) inside MKL's vector maths, which Intel and AMD
implement differently: the bits are therefore promised only on the machine kinds the file lists in
``seen_on``. On any other x86-64 machine with AVX2 each configuration must give either the recorded
bits or, within :data:`RTOL`, the recorded behaviour (:func:`fingerprint`: every logged loss and
learning rate, the final metrics and the norm of each module's final weights). Measured at the
design: pinned against unpinned kernels on one AMD EPYC (AVX-512) moved the fingerprints by at most
2.7e-6 (relative); a learning rate 1 % higher moves them by 1e-2, a triplet weight of 0.5 by 0.45.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from canlib.config import config_hash, load_config
from canlib.data import make_synthetic
from canlib.engine.checkpoint import checkpoint_path, load_checkpoint
from canlib.engine.trainer import train

#: The folders whose records the digest covers (``ablations-v1`` and ``calibration`` predate it).
RECORD_DIRS = ("ablations", "ablations-v2", "ablations-v3", "decisions", "decisions-v2", "pretrained")
#: The short schedule (``data.p``/``data.val_ids`` are scaled to the tiny set in :func:`short_config`).
_STEPS = ("seed=0", "optim.epochs=2", "optim.milestones=[1]", "train.max_batches_per_epoch=2")
SHORT = (*_STEPS, "train.eval_every=0", "train.progress=false", "data.num_workers=0")
#: The tiny synthetic set (``canlib.data.make_synthetic``): 9 training and 7 test identities.
DATA: dict[str, Any] = {"ids": 16, "seed": 7, "images_per_id": 6, "height": 96, "width": 32}
TIMING_KEYS = ("seconds", "images_per_s")
#: The child's environment: every library that picks a CPU code path at run time, pinned to AVX2.
#: ATen reads ``ATEN_CPU_CAPABILITY`` at its first dispatch, oneDNN its ISA cap and MKL its
#: conditional-numerical-reproducibility branch when they load: hence a fresh process.
PINNED_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
#: How far a fingerprint value may move on a machine kind whose bits were not seen (relative).
RTOL = 1e-4


class DigestPlatformError(RuntimeError):
    """This machine cannot compute the recorded digest's bits (another torch, no AVX2, not x86-64)."""


def platform_key() -> dict[str, str]:
    """What bit-exactness is promised on: the torch build, the architecture and the pinned kernels."""
    return {"torch": torch.__version__, "machine": platform.machine(), "kernels": PINNED_KERNELS["ATEN_CPU_CAPABILITY"]}


def machine_kind() -> str:
    """The CPU model and its native vector capability (as ``run.json`` records them), as the digest's
    ``seen_on`` lists machines."""
    from canlib.engine.record import machine_info

    info = machine_info()
    return f"{info['cpu']} ({info['cpu_capability']})"


def why_not_comparable(recorded: dict[str, Any]) -> str | None:
    """Why this machine cannot judge a recorded digest, or None when it can."""
    here = platform_key()
    differs = [f"{k} {recorded.get(k)!r} there, {v!r} here" for k, v in here.items() if recorded.get(k) != v]
    if differs:
        return "the digest was made on another platform: " + "; ".join(differs)
    if not _has_avx2():
        return "this CPU has no AVX2, so it cannot compute the pinned AVX2 kernels' bits"
    return None


def _has_avx2() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def short_config(path: Path) -> dict[str, Any]:
    """A record's ``config.yaml`` as a short training on the tiny set (validation: 2 of its 9 ids)."""
    data = yaml.safe_load(path.read_text())["data"]
    scaled = [f"data.p={min(data['p'], 4)}", f"data.val_ids={min(data['val_ids'], 2)}"]
    if data.get("val_gallery_ids"):  # new gallery people: a few, drawn for the tiny set
        scaled.append(f"data.val_gallery_ids={min(data['val_gallery_ids'], 3)}")
    return load_config(path, [*SHORT, *scaled])


def record_paths(results_dir: str | Path = "results") -> list[Path]:
    """The ``config.yaml`` of every record the digest covers: flat (the first grids) or in
    ``<profile>-<dataset>/``."""
    found = (
        p
        for folder in RECORD_DIRS
        for depth in ("*", "*/*")
        for p in Path(results_dir, folder).glob(f"{depth}/config.yaml")
    )
    return sorted(found)


def record_configs(results_dir: str | Path = "results") -> dict[str, dict[str, Any]]:
    """The short configurations of the records, each named by the hashes of the records it stands for."""
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for path in record_paths(results_dir):
        short = short_config(path)
        groups.setdefault(config_hash(short), ([], short))[0].append(config_hash(yaml.safe_load(path.read_text())))
    return {" ".join(sorted(names)): short for names, short in groups.values()}


def fingerprint(run_dir: Path) -> dict[str, float]:
    """A finished run's behaviour as numbers: each epoch's logged values (timings aside), the final
    metrics, and the L2 norm of each module's final weights (grouped by the first two names)."""
    values: dict[str, float] = {}
    for row in (json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()):
        for key, v in row.items():
            if key not in (*TIMING_KEYS, "epoch") and isinstance(v, (int, float)):
                values[f"epoch{row['epoch']}.{key}"] = float(v)
    for key, v in json.loads((run_dir / "metrics.json").read_text()).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[f"metrics.{key}"] = float(v)
    squares: dict[str, float] = {}
    for key, t in load_checkpoint(checkpoint_path(run_dir))["model"].items():
        if t.is_floating_point():
            group = "weights." + ".".join(key.split(".")[:2])
            squares[group] = squares.get(group, 0.0) + float(t.double().square().sum())
    return {**values, **{k: v**0.5 for k, v in sorted(squares.items())}}


def fingerprint_gaps(now: dict[str, float], recorded: dict[str, float], rtol: float = RTOL) -> list[str]:
    """The values that moved beyond ``rtol`` (relative), or appeared or vanished."""
    gaps = [f"{k}: missing" for k in recorded if k not in now] + [f"{k}: new" for k in now if k not in recorded]
    for key in sorted(set(now) & set(recorded)):
        a, b = now[key], recorded[key]
        if abs(a - b) > rtol * max(abs(a), abs(b)) + 1e-12:
            gaps.append(f"{key}: {a!r}, recorded {b!r}")
    return gaps


#: Keys of ``metrics.json`` derived from what the digest hashes already (the final weights and the
#: evaluation): left out, so that recording them did not change the digest of any run.
DERIVED_METRICS = ("ap_per_query",)


def run_digest(run_dir: Path) -> str:
    """One SHA-256 of a finished run: its log (without timings), metrics and final model weights
    (JSON's float repr round-trips every bit; each tensor is hashed with its dtype and shape)."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    h = hashlib.sha256(json.dumps([{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]).encode())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    h.update(json.dumps({k: v for k, v in metrics.items() if k not in DERIVED_METRICS}, sort_keys=True).encode())
    for key, t in sorted(load_checkpoint(checkpoint_path(run_dir))["model"].items()):
        h.update(
            f"{key} {t.dtype} {tuple(t.shape)}".encode() + t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return h.hexdigest()


def _digests_here(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Train each short configuration in this process, one thread, on a freshly drawn tiny set:
    ``{name: {"bits": SHA-256, "fingerprint": {...}}}``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="canlib-digest-") as tmp:
            make_synthetic(Path(tmp) / "data", **DATA)
            out = {}
            for i, (name, cfg) in enumerate(configs.items()):
                train({**cfg, "data": {**cfg["data"], "root": f"{tmp}/data"}}, Path(tmp) / str(i), device="cpu")
                run = Path(tmp) / str(i)
                out[name] = {"bits": run_digest(run), "fingerprint": fingerprint(run)}
            return out
    finally:
        torch.set_num_threads(threads)


def compute_digests(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name: {"bits", "fingerprint"}}`` of each short configuration, trained in a child process
    with the CPU kernels pinned (:data:`PINNED_KERNELS`); :class:`DigestPlatformError` without AVX2."""
    if not _has_avx2():
        raise DigestPlatformError("the training digest needs an x86-64 CPU with AVX2 (its kernels are pinned there)")
    with tempfile.TemporaryDirectory(prefix="canlib-digest-io-") as tmp:
        todo, done = Path(tmp) / "configs.json", Path(tmp) / "digests.json"
        todo.write_text(json.dumps(configs))
        env = {**os.environ, **PINNED_KERNELS}
        proc = subprocess.run(
            [sys.executable, "-m", "canlib.lab.digest", str(todo), str(done)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the digest's child process failed:\n{proc.stderr[-4000:]}")
        return dict(json.loads(done.read_text()))


def write_digest(results_dir: str | Path = "results", out_path: str | Path | None = None) -> dict[str, Any]:
    """Recompute the digest of every recorded configuration and write it whole (``make digest``):
    a folder without records is refused before anything is written."""
    configs = record_configs(results_dir)
    if not configs:
        raise ValueError(f"{results_dir}: no recorded runs under {', '.join(RECORD_DIRS)} (is it the results folder?)")
    data = {**platform_key(), "seen_on": [machine_kind()], "digests": compute_digests(configs)}
    _write_whole(Path(out_path or Path(results_dir) / "training-digest.json"), data)
    return data


def add_to_digest(
    digest_path: str | Path = "results/training-digest.json", results_dir: str | Path = "results"
) -> list[str]:
    """Digest only the recorded configurations the file lacks, and drop those no longer recorded
    (``make digest-add``); the others keep their recorded digests. Refused unless this machine's kind
    is in the file's ``seen_on`` on the same platform: the file promises bits per machine kind, and
    bits from another kind mixed in would break that promise. Returns the names added."""
    path = Path(digest_path)
    recorded = json.loads(path.read_text())
    reason = why_not_comparable(recorded)
    if reason or machine_kind() not in recorded.get("seen_on", []):
        why = reason or f"this machine ({machine_kind()}) is not among its seen_on {recorded.get('seen_on')}"
        raise DigestPlatformError(f"{path}: cannot add to it here ({why}); rewrite it whole with make digest")
    configs = record_configs(results_dir)
    new = {name: cfg for name, cfg in configs.items() if name not in recorded["digests"]}
    kept = {name: d for name, d in recorded["digests"].items() if name in configs}
    recorded["digests"] = dict(sorted({**kept, **compute_digests(new)}.items())) if new else kept
    _write_whole(path, recorded)
    return sorted(new)


def judge(
    recorded: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]], exact: bool
) -> tuple[dict[str, list[str]], list[str]]:
    """Compare digests: ``(failed, other_bits)``. ``failed`` maps each configuration that trains
    differently to why; ``other_bits`` lists those whose bits differ while their behaviour stays
    within :data:`RTOL`, which passes only where ``exact`` is False (a machine kind not in ``seen_on``)."""
    failed: dict[str, list[str]] = {}
    other_bits = []
    for name, got in now.items():
        want = recorded.get(name)
        if want is None:
            failed[name] = ["not in the recorded digest"]
        elif got["bits"] != want["bits"]:
            gaps = ["bits differ on a machine kind that gave the recorded bits"] if exact else []
            gaps += fingerprint_gaps(got["fingerprint"], want["fingerprint"])
            if gaps:
                failed[name] = gaps
            else:
                other_bits.append(name)
    return failed, other_bits


def check_digest(
    digest_path: str | Path = "results/training-digest.json", results_dir: str | Path = "results"
) -> dict[str, list[str]]:
    """Recompute the recorded digest here and :func:`judge` it; returns the configurations that train
    differently. When every configuration gives the recorded bits, this machine's kind is added to
    the file's ``seen_on`` (its later checks are then exact)."""
    path = Path(digest_path)
    recorded = json.loads(path.read_text())
    reason = why_not_comparable(recorded)
    if reason:
        raise DigestPlatformError(reason)
    configs = record_configs(results_dir)
    if sorted(configs) != sorted(recorded["digests"]):
        raise ValueError(f"{path} does not cover the records of {results_dir}: rewrite it (make digest)")
    kind, seen = machine_kind(), recorded.get("seen_on", [])
    failed, other_bits = judge(recorded["digests"], compute_digests(configs), kind in seen)
    if not failed and not other_bits and kind not in seen:
        recorded["seen_on"] = [*seen, kind]
        _write_whole(path, recorded)
    return failed


def _write_whole(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _child(todo: Path, done: Path) -> None:
    """The pinned process: refuses to run unpinned, then digests and writes ``{name: digest}``."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        raise SystemExit(f"the digest's kernels are pinned to AVX2, but ATen dispatches {capability} here")
    done.write_text(json.dumps(_digests_here(json.loads(todo.read_text()))))


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
