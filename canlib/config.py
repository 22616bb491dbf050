"""Configuration: the schema, the YAML profiles in ``configs/`` and ``key=value`` overrides.

Configuration stays at the edges: only the builders in :mod:`canlib.engine.build` read
these dictionaries; every module takes plain arguments. Each key the paper leaves open
has a documented default here (see ``DEFAULTS``) and in the book.

A profile file may name another with ``base: other.yaml`` (resolved relative to the
file); the child's keys are merged over the base's, recursively.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

#: Every key a configuration may hold, with its default. The defaults are the paper's
#: recipe (Section 4.5) where it speaks; the comments mark our choices where it is silent.
DEFAULTS: dict[str, Any] = {
    "profile": "paper",
    "seed": 0,
    "data": {
        "dataset": "market1501",
        "root": None,  # given by --data-root
        "options": {},  # passed to canlib.data.load_dataset (e.g. variant: labeled)
        "height": 384,  # Section 4.5: 384x128
        "width": 128,
        "p": 8,  # Section 4.5: 8 ids x 4 images = 32
        "k": 4,
        # Silent: what one "epoch" of the 600 is. "ids": every identity once (P x K images
        # per batch, #ids / P batches); "images": about every image once (the common libraries).
        "epoch": "ids",
        "num_workers": 4,
        # The paper mentions only resizing: augmentation is off in the paper profile.
        "flip": False,
        "pad": 0,
        "random_erasing": 0.0,
        "normalize": True,  # ImageNet mean/std (the backbone's pre-training statistics)
        "test_batch_size": 128,
    },
    "model": {
        "backbone": "resnet50",  # Section 3.2.1
        "backbone_kwargs": {},
        "pretrained": "imagenet",  # silent in the paper; standard for every compared method
        "parts": [1, 3, 5, 7],  # Section 3.2.2
        "collaborative": True,
        "embed_dim": 256,  # Section 3.2.3
        "pooling": "paper",  # equation (1); "adaptive" = PyTorch's adaptive pooling
        "embed_bn": True,  # silent: BN after the 1x1 embedding convolution
        "descriptor_norm": "none",  # silent: raw concatenation, cosine over the whole vector
        "last_stride": 1,
    },
    "loss": {
        "ce_weight": 1.0,  # equation (5): unit weights for CE and triplet
        "ce_scale": 30.0,  # silent: scale of the cosine logits
        "label_smoothing": 0.0,  # silent: none
        "triplet_weight": 1.0,
        "triplet_margin": 0.3,  # silent: the strong-baseline margin
        "triplet_squared": True,  # equation (7) squares the distances
        "center_weight": 0.0005,  # Section 4.5
        "center_squared": True,  # Wen et al.'s 1/2 squared distance
        "clustering_features": "all",  # Table 4, last row: global and local features
        "feature_reduction": "mean",  # silent: terms averaged over the features they see
    },
    "optim": {
        "lr": 3.0e-4,  # Section 4.5
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "weight_decay": 0.0,  # Adam's default parameters
        "milestones": [250, 350, 450],
        "gamma": 0.1,
        "epochs": 600,
        "center_lr": 0.5,  # silent: the centres' own SGD, as in the strong baseline
    },
    "train": {
        "amp": "auto",  # bf16 autocast on CUDA when supported; off on CPU
        "channels_last": "auto",  # on for CUDA
        "deterministic": True,  # deterministic algorithms (exact resume on CPU)
        "eval_every": 0,  # evaluate every N epochs (0: only at the end)
        "checkpoint_every": 1,  # epochs between checkpoints (the last is always kept)
        "progress": True,  # tqdm progress bars
        "max_batches_per_epoch": None,  # cap for smoke tests
    },
    "eval": {
        "metric": "cosine",  # Section 4.5
        "ap": "step",  # the common libraries' AP; "trapezoid" = the Market kit's
        "max_rank": 50,
        "flip_tta": False,  # an option beyond the paper
        "rerank": False,  # the paper does not re-rank
        "chunk_size": 2048,
    },
}


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


def _merge(base: dict[str, Any], update: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys are errors."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown configuration key '{where}'; known keys here: {sorted(base)}")
        if isinstance(base[key], dict) and key not in ("backbone_kwargs", "options"):
            if not isinstance(value, Mapping):
                raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_profile(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"profile inheritance loops through {path}")
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    base_name = raw.pop("base", None)
    if base_name is None:
        return raw
    base = _read_profile(path.parent / base_name, seen + (path,))
    return _deep_update(base, raw)


def _deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"optim.lr=1e-4"`` into (["optim", "lr"], 0.0001), parsing the value as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=1e-4)")
    key, value = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{text}' has an empty key")
    parsed = yaml.safe_load(value) if value.strip() else None
    # YAML 1.1 reads "3e-4" as a string; accept it as a float as a user would expect.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return keys, parsed


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Resolve a profile: ``DEFAULTS`` <- the YAML file (and its bases) <- ``key=value`` overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = _merge(cfg, _read_profile(Path(path)))
    for item in overrides:
        keys, value = parse_override(item)
        update: dict[str, Any] = {keys[-1]: value}
        for key in reversed(keys[:-1]):
            update = {key: update}
        cfg = _merge(cfg, update)
    validate(cfg)
    return cfg


def validate(cfg: Mapping[str, Any]) -> None:
    """Check the values that would otherwise fail deep inside training."""
    parts = cfg["model"]["parts"]
    if not parts or any(int(n) < 1 for n in parts):
        raise ConfigError(f"model.parts must be positive integers, got {parts}")
    if cfg["model"]["pooling"] not in ("paper", "adaptive"):
        raise ConfigError("model.pooling must be 'paper' or 'adaptive'")
    if cfg["loss"]["clustering_features"] not in ("all", "global"):
        raise ConfigError("loss.clustering_features must be 'all' or 'global'")
    if cfg["eval"]["ap"] not in ("step", "trapezoid"):
        raise ConfigError("eval.ap must be 'step' or 'trapezoid'")
    if int(cfg["data"]["p"]) < 2 or int(cfg["data"]["k"]) < 2:
        raise ConfigError("data.p and data.k must be at least 2 for the batch-hard triplet loss")
    if cfg["data"]["epoch"] not in ("ids", "images"):
        raise ConfigError("data.epoch must be 'ids' or 'images'")
    if int(cfg["optim"]["epochs"]) < 1:
        raise ConfigError("optim.epochs must be at least 1")


def config_hash(cfg: Mapping[str, Any], exclude: Iterable[str] = ("data.root", "train.progress")) -> str:
    """A short, stable hash of a configuration (ignoring keys that do not change the result)."""
    cfg = copy.deepcopy(dict(cfg))
    for dotted in exclude:
        node: Any = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key, {})
        if isinstance(node, dict):
            node.pop(leaf, None)
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write a resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
