"""The training digest: does the checked-out code train every recorded configuration as before?

Every distinct configuration the committed records use (the ``config.yaml`` of each run under
``results/ablations``, ``results/decisions``, their ``-v2`` "before" and ``results/pretrained``) is shortened to a
bit-exact training of a few steps (:data:`SHORT`: two epochs of two batches, a learning-rate
step after the first, seed 0, one thread) on a tiny synthetic set drawn here, and what it
produces (the log without timings, the metrics, every tensor of the final weights) is hashed
into one SHA-256. ``results/training-digest.json`` holds these digests with the torch version and
CPU capability they were made on; ``tests/test_digest.py`` recomputes and compares them.
"""

from __future__ import annotations

import hashlib
import json
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


def platform_key() -> dict[str, str]:
    """What bit-exactness is promised on: the torch version and the CPU's vector capability."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def short_config(path: Path) -> dict[str, Any]:
    """A record's ``config.yaml`` as a short training on the tiny set (validation: 2 of its 9 ids)."""
    data = yaml.safe_load(path.read_text())["data"]
    scaled = [f"data.p={min(data['p'], 4)}", f"data.val_ids={min(data['val_ids'], 2)}"]
    if data.get("val_gallery_ids"):  # new gallery people: a few, drawn for the tiny set
        scaled.append(f"data.val_gallery_ids={min(data['val_gallery_ids'], 3)}")
    return load_config(path, [*SHORT, *scaled])


def record_configs(results_dir: str | Path = "results") -> dict[str, dict[str, Any]]:
    """The short configurations of the records, each named by the hashes of the records it stands for."""
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    found = (
        p
        for folder in RECORD_DIRS
        for depth in ("*", "*/*")
        for p in Path(results_dir, folder).glob(f"{depth}/config.yaml")
    )
    for path in sorted(found):  # a grid's records, flat (the first grids) or in <profile>-<dataset>/
        short = short_config(path)
        groups.setdefault(config_hash(short), ([], short))[0].append(config_hash(yaml.safe_load(path.read_text())))
    return {" ".join(sorted(names)): short for names, short in groups.values()}


def run_digest(run_dir: Path) -> str:
    """One SHA-256 of a finished run: its log (without timings), metrics and final model weights
    (JSON's float repr round-trips every bit; each tensor is hashed with its dtype and shape)."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    h = hashlib.sha256(json.dumps([{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]).encode())
    h.update(json.dumps(json.loads((run_dir / "metrics.json").read_text()), sort_keys=True).encode())
    for key, t in sorted(load_checkpoint(checkpoint_path(run_dir))["model"].items()):
        h.update(
            f"{key} {t.dtype} {tuple(t.shape)}".encode() + t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return h.hexdigest()


def compute_digests(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Train each short configuration on a freshly drawn tiny set, one thread; ``{name: digest}``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="canlib-digest-") as tmp:
            make_synthetic(Path(tmp) / "data", **DATA)
            out = {}
            for i, (name, cfg) in enumerate(configs.items()):
                train({**cfg, "data": {**cfg["data"], "root": f"{tmp}/data"}}, Path(tmp) / str(i), device="cpu")
                out[name] = run_digest(Path(tmp) / str(i))
            return out
    finally:
        torch.set_num_threads(threads)


def write_digest(results_dir: str | Path = "results", out_path: str | Path | None = None) -> dict[str, Any]:
    """Recompute the digest of every recorded configuration and write it (``make digest``)."""
    data = {**platform_key(), "digests": compute_digests(record_configs(results_dir))}
    Path(out_path or Path(results_dir) / "training-digest.json").write_text(json.dumps(data, indent=1) + "\n")
    return data
