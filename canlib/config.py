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
import math
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
        # A validation split carved from the TRAINING identities: this many of them are held
        # out (0: none), with their own query/gallery. When > 0 the run trains on the rest and
        # is evaluated on the validation split; the test split is never read.
        "val_ids": 0,
        "val_seed": 0,  # which identities are held out
        "test_batch_size": 128,
        # Decode every image once before training (seconds), so that a corrupt file stops the
        # run at once rather than at the final evaluation; false skips the check.
        "verify_images": True,
        # Not in the paper (speed only): "memory" / "device" decode and resize each training
        # image once into a uint8 cache (host memory / the GPU when it fits) and augment batches
        # on the device (canlib.data.cache); "none" reads the files every epoch.
        "cache": "none",
    },
    "model": {
        "backbone": "resnet50",  # Section 3.2.1
        "backbone_kwargs": {},
        "pretrained": "imagenet",  # silent in the paper; standard for every compared method
        "parts": [1, 3, 5, 7],  # Section 3.2.2
        "collaborative": True,
        "embed_dim": 256,  # Section 3.2.3
        "pooling": "paper",  # equation (1); "adaptive" = PyTorch's adaptive pooling
        # Silent: what follows the 1x1 embedding convolution: "shared" (one BN over all
        # features), "per_feature" (one BN each) or "none" (the literal reading).
        "embed_bn": "shared",
        "descriptor_norm": "none",  # silent: raw concatenation, cosine over the whole vector
        "last_stride": 1,
        # 2 as in ResNet50; the cpu proxy sets 1 so that 192x64 gives the paper's 24x8 map.
        "layer3_stride": 2,
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
        # Silent: the tensor the triplet and center losses see: "post_bn" (the features the
        # classifier and the test descriptor see) or "pre_bn" (BNNeck, Luo et al. 2019).
        "clustering_input": "post_bn",
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
        "compile": False,  # speed only: torch.compile the training model (off: eager)
        # Multi-process runs (torchrun) only: BatchNorm statistics over the global batch instead
        # of each process's shard (nn.SyncBatchNorm; canlib's gloo version on the CPU).
        "sync_bn": False,
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


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` from a YAML error (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def _read_profile(path: Path, seen: tuple[Path, ...] = (), named_by: Path | None = None) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"profile inheritance loops through {path}")
    if not path.is_file():
        where = f" (named by 'base:' in {named_by})" if named_by is not None else ""
        raise ConfigError(f"configuration file not found: {path}{where}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error at {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    base_name = raw.pop("base", None)
    if base_name is None:
        return raw
    base = _read_profile(path.parent / str(base_name), seen + (path,), named_by=path)
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
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({_yaml_problem(exc)})") from None
    # YAML 1.1 reads "3e-4" as a string; accept it as a float as a user would expect.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return keys, parsed


def config_value(cfg: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key such as ``"loss.ce_scale"``; ``KeyError`` naming the key if absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"no configuration key '{key}' (missing '{part}')")
        node = node[part]
    return node


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


#: Keys whose value may be anything of its kind (passed through to a constructor).
_FREE_KEYS = ("model.backbone_kwargs", "data.options")
#: Keys checked by :func:`_list_problems` rather than by their default's type.
_LIST_KEYS = ("model.parts", "optim.betas", "optim.milestones")
#: Keys that may be null although their default is not.
_NULLABLE_KEYS = ("model.pretrained",)
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v <= 1, "in [0, 1]")
_AT_LEAST_2 = (lambda v: v >= 2, ">= 2 (the batch-hard triplet loss needs 2 ids and 2 images of each)")
#: Ranges of numeric keys (a key absent from the configuration is skipped).
_LIMITS: dict[str, tuple[Any, str]] = {
    "data.height": _POSITIVE,
    "data.width": _POSITIVE,
    "data.p": _AT_LEAST_2,
    "data.k": _AT_LEAST_2,
    "data.num_workers": _NON_NEGATIVE,
    "data.pad": _NON_NEGATIVE,
    "data.random_erasing": _FRACTION,
    "data.test_batch_size": _POSITIVE,
    "data.val_ids": _NON_NEGATIVE,
    "model.embed_dim": _POSITIVE,
    "model.last_stride": _POSITIVE,
    "loss.ce_weight": _NON_NEGATIVE,
    "loss.ce_scale": _POSITIVE,
    "loss.triplet_weight": _NON_NEGATIVE,
    "loss.triplet_margin": _NON_NEGATIVE,
    "loss.center_weight": _NON_NEGATIVE,
    "loss.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.lr": _POSITIVE,
    "optim.eps": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.gamma": _POSITIVE,
    "optim.epochs": _POSITIVE,
    "optim.center_lr": _NON_NEGATIVE,
    "train.eval_every": _NON_NEGATIVE,
    "train.checkpoint_every": _POSITIVE,
    "train.max_batches_per_epoch": _POSITIVE,
    "eval.max_rank": _POSITIVE,
    "eval.chunk_size": _POSITIVE,
}


def allowed_values() -> dict[str, tuple[Any, ...]]:
    """The values of each choice key, read from the modules that define them."""
    from canlib.data.cache import CACHE_MODES
    from canlib.data.datasets import DATASETS, dataset_names
    from canlib.engine.trainer import AMP_MODES
    from canlib.losses import CLUSTERING_FEATURES, CLUSTERING_INPUTS, FEATURE_REDUCTIONS
    from canlib.metrics import AP_VARIANTS, METRICS
    from canlib.model import DESCRIPTOR_NORMS, EMBED_BN_MODES
    from canlib.pooling import POOLING_MODES

    del DATASETS  # the names include the aliases: dataset_names()
    return {
        "data.dataset": dataset_names(),
        "data.epoch": ("ids", "images"),  # PKSampler's two epochs
        "data.cache": CACHE_MODES,
        "model.pooling": POOLING_MODES,
        "model.descriptor_norm": DESCRIPTOR_NORMS,
        "model.embed_bn": (*EMBED_BN_MODES, True, False),  # booleans: configurations written before the modes
        "loss.clustering_features": CLUSTERING_FEATURES,
        "loss.clustering_input": CLUSTERING_INPUTS,
        "loss.feature_reduction": FEATURE_REDUCTIONS,
        "eval.metric": METRICS,
        "eval.ap": AP_VARIANTS,
        "train.amp": AMP_MODES,
        "train.channels_last": ("auto", True, False),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_problem(value: Any, default: Any) -> str | None:
    """What ``value`` should be, given the type of its ``default`` (None when it fits)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if _is_number(value) and isinstance(value, int) else "an integer"
    if isinstance(default, float):
        return None if _is_number(value) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, dict):
        return None if isinstance(value, Mapping) else "a mapping"
    if isinstance(default, list):
        element = default[0] if default else None
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings"}
        bad_item = element is not None and isinstance(value, list) and any(_type_problem(v, element) for v in value)
        if not isinstance(value, list) or bad_item:
            return f"a list of {plural.get(_type_problem(None, element) or '', 'values')}"
    return None


def _show(value: Any) -> str:
    """A choice as YAML spells it (true, null)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def _check_value(key: str, value: Any, default: Any, choices: Mapping[str, tuple[Any, ...]]) -> str | None:
    """One problem with ``key``'s value, or None."""
    if key in choices:
        if key == "data.dataset" and isinstance(value, str):
            value = value.lower()  # load_dataset ignores case
        if not any(_same(value, c) for c in choices[key]):
            return f"{key} must be one of {', '.join(map(_show, choices[key]))}; got {value!r}"
        return None
    if default is None or (value is None and key in _NULLABLE_KEYS):
        limit = _LIMITS.get(key) if value is not None else None
        if limit is not None and not (_is_number(value) and limit[0](value)):
            return f"{key} must be a number {limit[1]} (or null); got {value!r}"
        return None
    want = _type_problem(value, default)
    if want is not None:
        return f"{key} must be {want}; got {value!r}"
    limit = _LIMITS.get(key)
    if limit is not None and not limit[0](value):
        return f"{key} must be {limit[1]}; got {value!r}"
    return None


def _coerce_numbers(cfg: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Numbers written like ``1e-4`` (text to YAML 1.1) become floats where the default is a float."""
    for key, default in defaults.items():
        value = cfg.get(key)
        if isinstance(default, dict) and isinstance(value, dict):
            _coerce_numbers(value, default)
        elif isinstance(default, float) and isinstance(value, str):
            try:
                cfg[key] = float(value)
            except ValueError:
                pass
        elif isinstance(default, list) and default and isinstance(default[0], float) and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    try:
                        value[i] = float(item)
                    except ValueError:
                        pass


def _leaves(cfg: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = ""):
    for key, default in defaults.items():
        dotted = f"{prefix}{key}"
        if isinstance(default, dict) and dotted not in _FREE_KEYS:
            if isinstance(cfg.get(key), Mapping):
                yield from _leaves(cfg[key], default, dotted + ".")
        elif key in cfg:
            yield dotted, cfg[key], default


def _list_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Checks of list-valued keys beyond their element type."""
    problems = []
    parts = cfg["model"]["parts"]
    if (
        not isinstance(parts, list)
        or not parts
        or len(set(map(str, parts))) != len(parts)
        or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in parts)
    ):
        problems.append(f"model.parts must be a list of distinct positive integers such as [1, 3, 5, 7]; got {parts!r}")
    betas = cfg["optim"]["betas"]
    if not isinstance(betas, list) or (len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas)):
        problems.append(f"optim.betas must be two numbers in [0, 1); got {betas!r}")
    milestones = cfg["optim"]["milestones"]
    if not isinstance(milestones, list) or any(
        not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in milestones
    ):
        problems.append(f"optim.milestones must be a list of positive integers (epochs); got {milestones!r}")
    return problems


def validate(cfg: dict[str, Any]) -> None:
    """Check every value against its default's type, the modules' choices and its range.

    All problems are reported in one :class:`ConfigError`, each naming its key. Numbers
    written as ``1e-4`` (text to YAML 1.1) are turned into floats first.
    """
    _coerce_numbers(cfg, DEFAULTS)
    choices = allowed_values()
    problems = [
        p
        for key, value, default in _leaves(cfg, DEFAULTS)
        if key not in _LIST_KEYS and (p := _check_value(key, value, default, choices)) is not None
    ]
    problems += _list_problems(cfg)
    if len(problems) == 1:
        raise ConfigError(f"configuration: {problems[0]}")
    if problems:
        raise ConfigError(f"configuration: {len(problems)} problems: " + "; ".join(problems))


def config_hash(
    cfg: Mapping[str, Any], exclude: Iterable[str] = ("data.root", "train.progress", "data.verify_images")
) -> str:
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


def profile_path(
    profile: str, dataset: str = "synthetic", epochs: int | None = None, configs_dir: str | Path = "configs"
) -> Path:
    """The profile file the book's experiment chapters use: ``paper`` -> ``paper-<dataset>.yaml``,
    anything else -> ``<profile>.yaml``; with ``epochs``, a derived profile of another length
    (written to a temporary folder; its runs get their own hash)."""
    import tempfile

    path = Path(configs_dir) / (f"paper-{dataset}.yaml" if profile == "paper" else f"{profile}.yaml")
    if not path.is_file():
        raise ConfigError(f"no profile {path} (profile={profile!r}, dataset={dataset!r})")
    if epochs is None:
        return path
    derived = Path(tempfile.mkdtemp()) / f"{path.stem}-e{int(epochs)}.yaml"
    derived.write_text(yaml.safe_dump({"base": str(path.resolve()), "optim": {"epochs": int(epochs)}}))
    return derived


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 3e-4}}`` -> ``{"optim.lr": 3e-4}`` (free-form mappings kept whole)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in ("model.backbone_kwargs", "data.options"):
            out.update(flatten_config(value, dotted + "."))
        else:
            out[dotted] = value
    return out
