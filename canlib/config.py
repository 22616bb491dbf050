"""Configuration: the schema, the YAML profiles in ``configs/`` and ``key=value`` overrides.

Configuration stays at the edges: :func:`load_config` resolves a profile into a plain
dictionary (what a run writes to ``config.yaml`` and what :func:`config_hash` hashes), and
typed, frozen sections are read from that dictionary (:class:`RunSections`, one dataclass per
section: :class:`DataSection`, :class:`ModelSection`, ...) for the builders in
:mod:`canlib.engine.build` and the trainer; every module below them takes plain arguments.
Each key the paper leaves open has a documented default here (see ``DEFAULTS``) and in the book.

A profile file may name another with ``base: other.yaml`` (resolved relative to the
file); the child's keys are merged over the base's, recursively.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

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
    base = _read_profile(path.parent / str(base_name), (*seen, path), named_by=path)
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
        with contextlib.suppress(ValueError):
            parsed = float(parsed)
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
    from canlib.data.sampler import EPOCH_MODES
    from canlib.engine.trainer import AMP_MODES, CHANNELS_LAST_MODES
    from canlib.losses import CLUSTERING_FEATURES, CLUSTERING_INPUTS, FEATURE_REDUCTIONS
    from canlib.metrics import AP_VARIANTS, METRICS
    from canlib.model import DESCRIPTOR_NORMS, EMBED_BN_MODES
    from canlib.pooling import POOLING_MODES

    del DATASETS  # the names include the aliases: dataset_names()
    return {
        "data.dataset": dataset_names(),
        "data.epoch": EPOCH_MODES,
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
        "train.channels_last": CHANNELS_LAST_MODES,
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
            with contextlib.suppress(ValueError):
                cfg[key] = float(value)
        elif isinstance(default, list) and default and isinstance(default[0], float) and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    with contextlib.suppress(ValueError):
                        value[i] = float(item)


def _leaves(cfg: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    for key, default in defaults.items():
        dotted = f"{prefix}{key}"
        if isinstance(default, dict) and dotted not in _FREE_KEYS:
            if isinstance(cfg.get(key), Mapping):
                yield from _leaves(cfg[key], default, dotted + ".")
        elif key in cfg:
            yield dotted, cfg[key], default


def _parts_problem(parts: Any) -> str | None:
    if (
        not isinstance(parts, list)
        or not parts
        or len(set(map(str, parts))) != len(parts)
        or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in parts)
    ):
        return f"model.parts must be a list of distinct positive integers such as [1, 3, 5, 7]; got {parts!r}"
    return None


def _betas_problem(betas: Any) -> str | None:
    if not isinstance(betas, list) or (len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas)):
        return f"optim.betas must be two numbers in [0, 1); got {betas!r}"
    return None


def _milestones_problem(milestones: Any) -> str | None:
    if not isinstance(milestones, list) or any(
        not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in milestones
    ):
        return f"optim.milestones must be a list of positive integers (epochs); got {milestones!r}"
    return None


#: Checks of list-valued keys beyond their element type (these keys skip the check by their default's type).
_LIST_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model.parts": _parts_problem,
    "optim.betas": _betas_problem,
    "optim.milestones": _milestones_problem,
}


def _problems(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Every problem of ``cfg`` against the schema ``defaults`` (all of ``DEFAULTS`` or some of its sections)."""
    choices = allowed_values()
    problems = [
        p
        for key, value, default in _leaves(cfg, defaults)
        if key not in _LIST_CHECKS and (p := _check_value(key, value, default, choices)) is not None
    ]
    for key, check in _LIST_CHECKS.items():
        section, name = key.split(".")
        if section in defaults and (p := check(cfg[section][name])) is not None:
            problems.append(p)
    return problems


def _raise_problems(problems: list[str]) -> None:
    """One :class:`ConfigError` naming every problem (nothing when there is none)."""
    if len(problems) == 1:
        raise ConfigError(f"configuration: {problems[0]}")
    if problems:
        raise ConfigError(f"configuration: {len(problems)} problems: " + "; ".join(problems))


def validate(cfg: dict[str, Any]) -> None:
    """Check every value against its default's type, the modules' choices and its range.

    All problems are reported in one :class:`ConfigError`, each naming its key. Numbers
    written as ``1e-4`` (text to YAML 1.1) are turned into floats first.
    """
    _coerce_numbers(cfg, DEFAULTS)
    _raise_problems(_problems(cfg, DEFAULTS))


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


# ---------------------------------------------------------------------------------------------- typed sections
_S = TypeVar("_S", bound="Section")


def _typed(value: Any, default: Any) -> Any:
    """A configuration value as its section field holds it: floats where the default is a float (an
    integer such as ``ce_weight: 1`` becomes ``1.0``), tuples for lists, a copy of a free mapping.
    Anything else, and any value of the wrong kind (left for the check to name), is kept as it is."""
    if isinstance(default, bool):
        return value
    if isinstance(default, float):
        return float(value) if _is_number(value) else value
    if isinstance(default, list) and isinstance(value, list):
        element = default[0] if default else None
        if isinstance(element, float):
            return tuple(float(v) if _is_number(v) else v for v in value)
        return tuple(value)
    if isinstance(default, dict) and isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    return value


def _plain(value: Any) -> Any:
    """A field value as the configuration dictionary spells it (tuples become lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Section:
    """What every section shares: reading it from a configuration dictionary, and the checks.

    A section's fields are its keys in ``DEFAULTS`` (same names, same order), which are the
    arguments of the constructors it feeds. Constructing one checks every value exactly as
    :func:`validate` does (the same messages: types from ``DEFAULTS``, choices from the modules'
    constants through :func:`allowed_values`, ranges), so a section never holds a value that
    :func:`load_config` would refuse.
    """

    #: The section's key in the configuration (``"model"`` for ``cfg["model"]``).
    KEY: ClassVar[str]

    def __post_init__(self) -> None:
        _raise_problems(_problems({self.KEY: self.as_config()}, {self.KEY: DEFAULTS[self.KEY]}))

    def as_config(self) -> dict[str, Any]:
        """The section as the configuration dictionary holds it (``cfg[KEY]``, tuples as lists)."""
        return {key: _plain(getattr(self, key)) for key in DEFAULTS[self.KEY]}

    @classmethod
    def from_config(cls: type[_S], cfg: Mapping[str, Any]) -> _S:
        """The section of a configuration dictionary (a whole one, as :func:`load_config` returns).

        Keys the dictionary lacks take their default (a run recorded before they existed); an
        unknown key or a bad value is a :class:`ConfigError` naming it. The dictionary is not changed.
        """
        given = cfg.get(cls.KEY)
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"'{cls.KEY}' must be a mapping, got {given!r}")
        defaults = DEFAULTS[cls.KEY]
        values = _merge(defaults, given, cls.KEY + ".")
        _coerce_numbers(values, defaults)
        return cls(**{key: _typed(values[key], defaults[key]) for key in defaults})


@dataclasses.dataclass(frozen=True)
class DataSection(Section):
    """``data``: :func:`canlib.data.load_dataset` (``dataset``, ``root``, ``options``), the loaders of
    :func:`canlib.data.build_train_loader` and :func:`canlib.data.build_test_loaders` (size, P x K,
    ``epoch``, workers, augmentation, ``test_batch_size``), :func:`canlib.data.split.hold_out_validation`
    (``val_ids``, ``val_seed``), the trainer's image check (``verify_images``) and the training image
    cache (``cache``, :data:`canlib.data.cache.CACHE_MODES`)."""

    KEY: ClassVar[str] = "data"
    dataset: str
    root: str | None
    options: dict[str, Any]
    height: int
    width: int
    p: int
    k: int
    epoch: str
    num_workers: int
    flip: bool
    pad: int
    random_erasing: float
    normalize: bool
    val_ids: int
    val_seed: int
    test_batch_size: int
    verify_images: bool
    cache: str


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
    """``model``: the arguments of :class:`canlib.model.CAN` (but ``num_classes``, the data's)."""

    KEY: ClassVar[str] = "model"
    backbone: str
    backbone_kwargs: dict[str, Any]
    pretrained: str | None
    parts: tuple[int, ...]
    collaborative: bool
    embed_dim: int
    pooling: str
    embed_bn: str | bool
    descriptor_norm: str
    last_stride: int
    layer3_stride: int


@dataclasses.dataclass(frozen=True)
class LossSection(Section):
    """``loss``: the weights and choices of :class:`canlib.losses.CANLoss` (its sizes come from the model)."""

    KEY: ClassVar[str] = "loss"
    ce_weight: float
    ce_scale: float
    label_smoothing: float
    triplet_weight: float
    triplet_margin: float
    triplet_squared: bool
    center_weight: float
    center_squared: bool
    clustering_features: str
    feature_reduction: str
    clustering_input: str


@dataclasses.dataclass(frozen=True)
class OptimSection(Section):
    """``optim``: Adam (``lr``, ``betas``, ``eps``, ``weight_decay``), the step schedule
    (``milestones``, ``gamma``), the run's length (``epochs``) and the centres' SGD (``center_lr``)."""

    KEY: ClassVar[str] = "optim"
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    milestones: tuple[int, ...]
    gamma: float
    epochs: int
    center_lr: float


@dataclasses.dataclass(frozen=True)
class TrainSection(Section):
    """``train``: how the trainer runs (precision, memory format, checkpoints, evaluations, DDP)."""

    KEY: ClassVar[str] = "train"
    amp: str | bool | None
    channels_last: str | bool
    deterministic: bool
    eval_every: int
    checkpoint_every: int
    progress: bool
    max_batches_per_epoch: float | None  # a number > 0: its integer part caps the batches of an epoch
    compile: bool
    sync_bn: bool


@dataclasses.dataclass(frozen=True)
class EvalSection(Section):
    """``eval``: the arguments of :func:`canlib.engine.evaluate.evaluate_model` that a configuration sets."""

    KEY: ClassVar[str] = "eval"
    metric: str
    ap: str
    max_rank: int
    flip_tta: bool
    rerank: bool
    chunk_size: int


#: The section classes, in the order of ``DEFAULTS``.
SECTIONS: tuple[type[Section], ...] = (DataSection, ModelSection, LossSection, OptimSection, TrainSection, EvalSection)


@dataclasses.dataclass(frozen=True)
class RunSections:
    """Everything a training run reads, typed: the top-level keys and one frozen section each.

    ``config`` is the resolved dictionary the sections were read from, unchanged (a copy): a run
    writes it to ``config.yaml``, hashes it (:func:`config_hash`) and records it, so typing the
    sections changes no file and no hash.
    """

    profile: str
    seed: int
    data: DataSection
    model: ModelSection
    loss: LossSection
    optim: OptimSection
    train: TrainSection
    eval: EvalSection
    config: Mapping[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RunSections:
        """The sections of a configuration dictionary (see :meth:`Section.from_config`)."""
        top = {key: cfg.get(key, DEFAULTS[key]) for key in ("profile", "seed")}
        _raise_problems(_problems(top, {key: DEFAULTS[key] for key in top}))
        return cls(
            profile=top["profile"],
            seed=top["seed"],
            data=DataSection.from_config(cfg),
            model=ModelSection.from_config(cfg),
            loss=LossSection.from_config(cfg),
            optim=OptimSection.from_config(cfg),
            train=TrainSection.from_config(cfg),
            eval=EvalSection.from_config(cfg),
            config=copy.deepcopy(dict(cfg)),
        )


def sections(cfg: Mapping[str, Any]) -> RunSections:
    """``RunSections.from_config(cfg)``: every section of a configuration dictionary, typed."""
    return RunSections.from_config(cfg)


def section(cfg: Mapping[str, Any], kind: type[_S]) -> _S:
    """One typed section of a configuration dictionary: ``section(cfg, ModelSection).parts``."""
    return kind.from_config(cfg)
