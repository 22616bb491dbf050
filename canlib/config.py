"""Configuration: one typed schema, the YAML profiles in ``configs/`` and ``key=value`` overrides.

The schema is the frozen dataclasses below (:class:`RunSections`, one section per key:
:class:`DataSection`, :class:`ModelSection`, ...). Each field holds its default, its documentation
(``Field(description=...)``: where the paper speaks, or that the default is our choice for a
silence) and, as its type, its allowed values and range. ``DEFAULTS`` is derived from it.

:func:`load_config` merges a profile (``base: other.yaml`` names the profile it extends, relative
to the file) and the overrides with OmegaConf, checks the result against the schema and returns
the plain dictionary a run writes to ``config.yaml`` and :func:`config_hash` hashes. Any problem
is one :class:`ConfigError` line naming every key at fault by its dotted name.

Why two libraries: OmegaConf merges YAML files and dotted overrides well (and reads ``3e-4`` as a
number, which YAML 1.1 does not), but its structured configs cannot type a choice (``Literal``), a
string-or-bool union (``train.amp``, ``train.channels_last``) or a range; pydantic v2 dataclasses
do (``Literal``, ``Annotated[int, Field(gt=0)]``, unions, strict types) and locate each problem.

This module imports nothing else from canlib. The choices of the modules' arguments are spelled
here as ``Literal`` types (tests/test_config.py checks them against the modules' constants, which
the modules still check themselves); a data set name, an open registry with aliases, is checked
by :func:`canlib.engine.build.build_dataset`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import AfterValidator, ConfigDict, Field, Strict, ValidationError
from pydantic.dataclasses import dataclass
from typing_extensions import dataclass_transform


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


class Want(str):
    """Field metadata: what a value must be, for the error message (instead of the type's words)."""


def _check(ok: Callable[[tuple[Any, ...]], bool]) -> AfterValidator:
    """A validator of a whole list (its words are the field's :class:`Want`)."""

    def check(values: tuple[Any, ...]) -> tuple[Any, ...]:
        if not ok(values):
            raise ValueError("refused")
        return values

    return AfterValidator(check)


Int = Annotated[int, Strict()]  # no bool, no 2.0, no "2"
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # an integer is read as a float
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Positive = Annotated[Int, Field(gt=0)]
Count = Annotated[Int, Field(ge=0)]
Weight = Annotated[Float, Field(ge=0)]
Scale = Annotated[Float, Field(gt=0)]
AtLeast2 = Annotated[Int, Field(ge=2)]  # the batch-hard triplet loss needs 2 ids and 2 images of each
Parts = Annotated[
    tuple[Positive, ...],
    Field(min_length=1),
    _check(lambda v: len(set(v)) == len(v)),
    Want("a list of distinct positive integers"),
]
Betas = Annotated[tuple[Float, Float], _check(lambda v: all(0 <= b < 1 for b in v)), Want("two numbers in [0, 1)")]
Epochs = Annotated[tuple[Positive, ...], Want("a list of positive integers (epochs)")]
Cap = Annotated[Positive | Scale | None, Want("a number > 0 (or null)")]
_T = TypeVar("_T")


def _doc(default: Any, text: str) -> Any:
    """A field: its default (``dict``: an empty mapping each) and its documentation."""
    return Field(default_factory=dict, description=text) if default is dict else Field(default, description=text)


def frozen_schema(cls: type[_T], error: Callable[[ValidationError, Any, dict[str, Any]], Exception]) -> type[_T]:
    """``cls`` as a frozen pydantic dataclass that refuses unknown fields; its constructor raises
    ``error(exc, schema, kwargs)`` in place of pydantic's ``ValidationError`` (without the chain),
    so that a bad value reads as one line of the caller's own kind."""
    schema: Any = dataclass(config=ConfigDict(extra="forbid", frozen=True))(cls)
    init = schema.__init__

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise error(exc, schema, kwargs) from None

    schema.__init__ = checked
    return schema


@dataclass_transform(field_specifiers=(dataclasses.field, Field), frozen_default=True)
def _section(key: str) -> Callable[[type[_T]], type[_T]]:
    """A frozen pydantic dataclass that refuses unknown keys; built directly (``ModelSection(...)``,
    ``dataclasses.replace``) it raises :class:`ConfigError` naming ``key.field``, as :func:`load_config` does."""

    def decorate(cls: type[_T]) -> type[_T]:
        return frozen_schema(cls, lambda exc, schema, kwargs: ConfigError(_message(exc, schema, kwargs, key)))

    return decorate


@_section("data")
class DataSection:
    """``data``: :func:`canlib.data.load_dataset`, the training and test loaders, the validation
    hold-out (:func:`canlib.data.split.hold_out_validation`), the image check and the image cache."""

    dataset: Str = _doc("market1501", "A name canlib.data.load_dataset knows (case aside).")
    root: Str | None = _doc(None, "The data set's folder (given by --data-root).")
    options: dict[str, Any] = _doc(dict, "Passed to the data set's reader (e.g. variant: labeled).")
    height: Positive = _doc(384, "Section 4.5: 384x128.")
    width: Positive = _doc(128, "Section 4.5: 384x128.")
    p: AtLeast2 = _doc(8, "Identities per batch (Section 4.5: 8 ids x 4 images = 32).")
    k: AtLeast2 = _doc(4, "Images per identity in a batch (Section 4.5).")
    epoch: Literal["ids", "images"] = _doc(
        "ids", "Silent: what one of the 600 epochs is: every identity once (#ids / P batches) or every image once."
    )
    num_workers: Count = _doc(4, "Loader worker processes.")
    flip: Bool = _doc(False, "The paper mentions only resizing: augmentation is off in the paper profile.")
    pad: Count = _doc(0, "Padding before a random crop (augmentation; 0: none).")
    random_erasing: Annotated[Float, Field(ge=0, le=1)] = _doc(0.0, "Probability of random erasing (augmentation).")
    normalize: Bool = _doc(True, "ImageNet mean/std (the backbone's pre-training statistics).")
    val_ids: Count = _doc(
        0, "Training identities held out as a validation query/gallery (0: none); the test split is then never read."
    )
    val_seed: Int = _doc(0, "Which identities are held out.")
    val_groups: Bool = _doc(
        False, "Hold out whole look-alike groups (data sets that name them: the synthetic one), as the test split does."
    )
    val_gallery_ids: Count = _doc(
        0,
        "Synthetic sets only: this many new people (never trained on, never tested) added to the validation"
        " gallery with the test gallery's share of distractor images, to hold as many people as the test gallery.",
    )
    test_batch_size: Positive = _doc(128, "Batch size of the query and gallery loaders.")
    verify_images: Bool = _doc(True, "Decode every image before training, so a corrupt file stops the run at once.")
    cache: Literal["none", "memory", "device"] = _doc(
        "none", "Not in the paper (speed): decode training images once into host / GPU memory (canlib.data.cache)."
    )


@_section("model")
class ModelSection:
    """``model``: the arguments of :class:`canlib.model.CAN` (but ``num_classes``, the data's)."""

    backbone: Str = _doc("resnet50", "Section 3.2.1 (a name for canlib.backbone.build_backbone).")
    backbone_kwargs: dict[str, Any] = _doc(dict, "Extra arguments of the backbone's constructor.")
    pretrained: Str | None = _doc(
        "imagenet",
        "Silent; standard for every compared method. imagenet-v1 / imagenet-v2: torchvision's IMAGENET1K_V1 / "
        "IMAGENET1K_V2; imagenet = imagenet-v1, the weights of the paper's time (timm: its default tag). "
        "A path: from the current folder, else the repository.",
    )
    parts: Parts = _doc((1, 3, 5, 7), "One branch per entry, 1 the global one (Section 3.2.2).")
    collaborative: Bool = _doc(True, "Collaborative attention (Table 3) or not (Table 2).")
    ca_fusion: Literal["max", "mean"] = _doc(
        "max",
        "Section 3.2.2: CA max-pools two neighbouring part blocks. mean: their average, the same slots and size "
        "(not the paper's CA: its control at equal capacity).",
    )
    embed_dim: Positive | None = _doc(
        256, "Section 3.2.3. null: no embedding layer, the pooled feature itself (the strong baseline's head)."
    )
    pooling: Literal["paper", "adaptive"] = _doc("paper", "Equation (1); adaptive = PyTorch's adaptive pooling.")
    pool_ops: Literal["max+avg", "avg", "max"] = _doc(
        "max+avg", "Section 3.2.2: max and average pooling, concatenated; avg alone is the strong baseline's."
    )
    embed_bn: Literal["shared", "per_feature", "none"] = _doc(
        "shared",
        "Silent: after the 1x1 embedding, one BN over all features, one BN each, or none (the literal reading).",
    )
    descriptor_norm: Literal["none", "per_feature"] = _doc(
        "none", "Silent: raw concatenation, cosine over the whole vector (per_feature: each feature L2-normalised)."
    )
    last_stride: Positive = _doc(1, "Section 3.2.1: layer 4 with stride 1.")
    layer3_stride: Positive = _doc(
        2, "2 as in ResNet50; the cpu proxy sets 1 so that 192x64 gives the paper's 24x8 map."
    )
    classifier: Literal["cosine", "linear"] = _doc(
        "cosine", "Section 4.5: a cosine classifier; linear: bias-free (the strong baseline's; needs loss.ce_scale 1)."
    )
    embed_bn_bias: Bool = _doc(True, "The embedding BN learns its shift; false: fixed at 0 (the BNNeck of BoT).")


@_section("loss")
class LossSection:
    """``loss``: the weights and choices of :class:`canlib.losses.CANLoss` (its sizes come from the model)."""

    ce_weight: Weight = _doc(1.0, "Equation (5): unit weights for CE and triplet.")
    ce_scale: Scale = _doc(30.0, "Silent: scale of the cosine logits.")
    label_smoothing: Annotated[Float, Field(ge=0, lt=1)] = _doc(0.0, "Silent: none.")
    triplet_weight: Weight = _doc(1.0, "Equation (5).")
    triplet_margin: Weight = _doc(0.3, "Silent: the strong-baseline margin.")
    triplet_squared: Bool = _doc(True, "Equation (7) squares the distances.")
    center_weight: Weight = _doc(0.0005, "Section 4.5.")
    center_squared: Bool = _doc(True, "Wen et al.'s 1/2 squared distance.")
    clustering_features: Literal["all", "global"] = _doc("all", "Table 4, last row: global and local features.")
    feature_reduction: Literal["mean", "sum"] = _doc("mean", "Silent: terms averaged over the features they see.")
    clustering_input: Literal["post_bn", "pre_bn"] = _doc(
        "post_bn", "Silent: what triplet and center see: the classifier's features, or pre_bn (BNNeck, Luo et al.)."
    )


@_section("optim")
class OptimSection:
    """``optim``: Adam, the step schedule, the run's length and the centres' SGD (Section 4.5)."""

    lr: Scale = _doc(3.0e-4, "Section 4.5.")
    betas: Betas = _doc((0.9, 0.999), "Adam's default parameters.")
    eps: Scale = _doc(1.0e-8, "Adam's default.")
    weight_decay: Weight = _doc(0.0, "Adam's default.")
    milestones: Epochs = _doc((250, 350, 450), "The learning rate is multiplied by gamma after these (Section 4.5).")
    gamma: Scale = _doc(0.1, "Section 4.5.")
    epochs: Positive = _doc(600, "Section 4.5.")
    warmup_epochs: Count = _doc(
        0, "Not in the paper (0: none): the lr rises linearly from warmup_factor x lr in epoch 1 to lr in this epoch."
    )
    warmup_factor: Annotated[Float, Field(gt=0, le=1)] = _doc(0.1, "The first warm-up epoch's fraction of lr.")
    center_lr: Weight = _doc(0.5, "Silent: the centres' own SGD, as in the strong baseline.")
    head_lr_mult: Scale = _doc(
        1.0,
        "Silent: the learning rate of the layers the pre-trained trunk lacks (embedding, its BN, the"
        " classifiers) is lr times this (1: one rate, the literal reading; PCB and MGN use 10).",
    )


@_section("train")
class TrainSection:
    """``train``: how the trainer runs (precision, memory format, checkpoints, evaluations, DDP)."""

    amp: Literal["auto", "off", "fp16", "bf16", "none", False] | None = _doc("auto", "auto: bf16 on CUDA; off on CPU.")
    channels_last: Literal["auto"] | Bool = _doc("auto", "The channels-last memory format (auto: on for CUDA).")
    deterministic: Bool = _doc(True, "Deterministic algorithms (exact resume on CPU).")
    eval_every: Count = _doc(0, "Evaluate every N epochs (0: only at the end).")
    checkpoint_every: Positive = _doc(1, "Epochs between checkpoints (the last is always kept).")
    progress: Bool = _doc(True, "tqdm progress bars.")
    tensorboard: Bool = _doc(
        True, "TensorBoard event files in <run>/tensorboard/ (logging only: not hashed, may change on resume)."
    )
    max_batches_per_epoch: Cap = _doc(None, "Cap for smoke tests: its integer part caps an epoch's batches.")
    compile: Bool = _doc(False, "Speed only: torch.compile the training model (off: eager).")
    sync_bn: Bool = _doc(False, "torchrun only: BatchNorm over the global batch (nn.SyncBatchNorm; gloo on CPU).")


@_section("eval")
class EvalSection:
    """``eval``: the arguments of :func:`canlib.engine.evaluate.evaluate_model` that a configuration sets."""

    metric: Literal["cosine", "euclidean", "sqeuclidean"] = _doc("cosine", "Section 4.5.")
    ap: Literal["step", "trapezoid"] = _doc("step", "The common libraries' AP; trapezoid = the Market kit's.")
    max_rank: Positive = _doc(50, "Length of the CMC curve.")
    flip_tta: Bool = _doc(False, "An option beyond the paper: average with the flipped image's descriptor.")
    rerank: Bool = _doc(False, "The paper does not re-rank.")
    chunk_size: Positive = _doc(2048, "Query rows per distance chunk (memory only).")


@_section("")
class RunSections:
    """Everything a training run reads: the top-level keys and one frozen section each."""

    profile: Str = _doc("paper", "The profile's name (recorded with the run).")
    seed: Int = _doc(0, "Seeds Python, NumPy and torch, and the PK sampler.")
    data: DataSection = dataclasses.field(default_factory=DataSection)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RunSections:
        """The typed run of a configuration dictionary; keys it lacks take their defaults."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"a configuration must be a mapping, got {cfg!r}")
        return cls(**{str(k): v for k, v in cfg.items()})

    @property
    def config(self) -> dict[str, Any]:
        """The plain dictionary a run writes to ``config.yaml`` and hashes (:func:`config_hash`)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: Every key and its default (section -> key -> default), derived from the schema.
DEFAULTS: dict[str, Any] = RunSections().config

# ------------------------------------------------------------------------------------------- error messages
_TYPE_WORDS = {"int": "an integer", "float": "a number", "finite": "a number", "bool": "true or false"}
_TYPE_WORDS |= {"string": "a string", "dict": "a mapping", "dataclass": "a mapping", "tuple": "a list"}
_TYPE_WORDS |= {"list": "a list", "missing": "a list", "too": "a list"}
_RANGES = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _show(value: Any) -> str:
    """A choice as YAML spells it (true, null)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _choices(annotation: Any) -> list[Any]:
    """Every value a ``Literal`` (or a union with bool or None) allows."""
    if annotation is bool:
        return [True, False]
    if annotation is type(None):
        return [None]
    args = get_args(annotation)
    if getattr(annotation, "__origin__", None) is Literal:
        return list(args)
    return [c for arg in args for c in _choices(arg)]


def _problem(key: str, errors: list[Any], field: Any, value: Any) -> str:
    kinds = [e["type"] for e in errors]
    if "unexpected_keyword_argument" in kinds or "extra_forbidden" in kinds:
        return f"unknown configuration key '{key}'"
    want: str | None = next((m for m in getattr(field, "metadata", ()) if isinstance(m, Want)), None)
    if want is None and "literal_error" in kinds:
        want = "one of " + ", ".join(map(_show, dict.fromkeys(_choices(field.annotation))))
    elif want is None and all(k in _RANGES for k in kinds):
        want = " and ".join(f"{_RANGES[e['type']]} {next(iter(e['ctx'].values()))}" for e in errors)
    elif want is None:
        nullable = type(None) in get_args(getattr(field, "annotation", None))
        want = _TYPE_WORDS.get(kinds[0].split("_")[0], "valid") + (" (or null)" if nullable else "")
    return f"{key} must be {want}; got {value!r}"


def _key_path(cls: type, loc: Iterable[Any]) -> tuple[str, ...]:
    """The field names an error's location starts with (its key), through the nested sections."""
    path: list[str] = []
    kind: Any = cls
    for part in loc:
        fields = getattr(kind, "__pydantic_fields__", None)
        if not isinstance(part, str) or fields is None:
            break
        path.append(part)
        kind = fields[part].annotation if part in fields else None
    return tuple(path)


def _message(exc: ValidationError, cls: type, given: Mapping[str, Any], prefix: str) -> str:
    """One line naming every key at fault in ``exc`` (``cls`` built from ``given``; ``prefix``: its key)."""
    by_key: dict[tuple[str, ...], list[Any]] = {}
    for error in exc.errors():
        by_key.setdefault(_key_path(cls, error["loc"]), []).append(error)
    problems = []
    for path, errors in by_key.items():
        parent: Any = cls
        for part in path[:-1]:
            parent = parent.__pydantic_fields__[part].annotation
        fields = getattr(parent, "__pydantic_fields__", {})
        key = ".".join(p for p in (prefix, *path) if p)
        problem = _problem(key, errors, fields.get(path[-1]) if path else None, _lookup(given, path))
        problems.append(problem + (f"; known keys here: {sorted(fields)}" if problem.startswith("unknown") else ""))
    if len(problems) == 1:
        return f"configuration: {problems[0]}"
    return f"configuration: {len(problems)} problems: " + "; ".join(problems)


def _lookup(given: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        given = given.get(part) if isinstance(given, Mapping) else getattr(given, part, None)
    return given


# ------------------------------------------------------------------------------------------ files and overrides
def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` from a YAML error (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def _read_profile(path: Path, seen: tuple[Path, ...] = (), named_by: Path | None = None) -> DictConfig:
    """A profile file merged over the profile its ``base:`` names (recursively)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"profile inheritance loops through {path}")
    if not path.is_file():
        where = f" (named by 'base:' in {named_by})" if named_by is not None else ""
        raise ConfigError(f"configuration file not found: {path}{where}")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error at {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    if len(raw) == 0:  # never silently the schema's defaults (the paper's recipe, which downloads weights)
        raise ConfigError(f"{path} is empty: a profile names at least what it changes (see configs/*.yaml)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_profile(path.parent / str(base), (*seen, path), named_by=path), raw, str(path))


def _merge(base: DictConfig, update: Any, what: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{what}: {str(exc).splitlines()[0]}") from None
    assert isinstance(merged, DictConfig)
    return merged


def _override(text: str) -> DictConfig:
    """``"optim.lr=1e-4"`` as a nested configuration (the value read as YAML; empty: null)."""
    key, equals, value = text.partition("=")
    if not equals:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=1e-4)")
    if not [k for k in key.strip().split(".") if k]:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        return OmegaConf.from_dotlist([f"{key.strip()}={value}"])
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({_yaml_problem(exc)})") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override '{text}': {str(exc).splitlines()[0]}") from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Resolve a profile: the schema's defaults <- the YAML file (and its bases) <- ``key=value`` overrides."""
    merged = _read_profile(Path(path)) if path is not None else OmegaConf.create({})
    for item in overrides:
        merged = _merge(merged, _override(item), f"override '{item}'")
    try:  # interpolations such as ``data.val_seed=${seed}`` (one validation fold per seed) resolve here
        cfg = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path or 'configuration'}: {str(exc).splitlines()[0]}") from None
    assert isinstance(cfg, dict)
    return RunSections.from_config({str(k): v for k, v in cfg.items()}).config


# ---------------------------------------------------------------------------------------------- dictionaries
def config_value(cfg: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key such as ``"loss.ce_scale"``; ``KeyError`` naming the key if absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"no configuration key '{key}' (missing '{part}')")
        node = node[part]
    return node


#: Keys added to the schema after runs were recorded, with the value that trains as the code did
#: before them. At that value a key is left out of :func:`config_hash`, so a new option does not
#: rename every recorded run; set to anything else, it is hashed like any key.
LATER_KEYS: dict[str, Any] = {
    # the proxy's schedule and validation split
    "optim.head_lr_mult": 1.0,
    "data.val_groups": False,
    "data.val_gallery_ids": 0,
    # the strong baseline's head and schedule (configs/bot-market1501.yaml, the sanity check)
    "model.pool_ops": "max+avg",
    "model.classifier": "cosine",
    "model.embed_bn_bias": True,
    "optim.warmup_epochs": 0,
    "optim.warmup_factor": 0.1,
    # collaborative attention's control at equal capacity
    "model.ca_fusion": "max",
}


def config_hash(
    cfg: Mapping[str, Any],
    exclude: Iterable[str] = ("data.root", "train.progress", "data.verify_images", "train.tensorboard"),
) -> str:
    """A short, stable hash of a resolved configuration (ignoring keys that do not change the result,
    and the :data:`LATER_KEYS` at their neutral value)."""
    plain, excluded = _plain(cfg), tuple(exclude)
    for dotted in [*excluded, *LATER_KEYS]:
        *parents, leaf = dotted.split(".")
        node = functools.reduce(lambda n, k: n.get(k, {}) if isinstance(n, dict) else {}, parents, plain)
        if isinstance(node, dict) and (dotted in excluded or node.get(leaf) == LATER_KEYS[dotted]):
            node.pop(leaf, None)
    blob = json.dumps(plain, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write a resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))


def profile_path(
    profile: str,
    dataset: str = "synthetic",
    epochs: int | None = None,
    configs_dir: str | Path = "configs",
    overrides: Iterable[str] = (),
) -> Path:
    """The profile file the book's experiment chapters use: ``paper`` -> ``paper-<dataset>.yaml``,
    anything else -> ``<profile>.yaml``; with ``epochs`` or ``key=value`` ``overrides``, a derived
    profile (written to a temporary folder; its runs get their own hash). A bad override is a
    :class:`ConfigError` naming it, at once."""
    path = Path(configs_dir) / (f"paper-{dataset}.yaml" if profile == "paper" else f"{profile}.yaml")
    if not path.is_file():
        raise ConfigError(f"no profile {path} (profile={profile!r}, dataset={dataset!r})")
    overrides = list(overrides)
    if epochs is None and not overrides:
        return path
    derived: DictConfig = OmegaConf.create({"base": str(path.resolve())})
    if epochs is not None:
        derived = _merge(derived, {"optim": {"epochs": int(epochs)}}, f"epochs={epochs}")
    for item in overrides:
        derived = _merge(derived, _override(item), f"override '{item}'")
    name = path.stem + (f"-e{int(epochs)}" if epochs is not None else "") + ("-overridden" if overrides else "")
    out = Path(tempfile.mkdtemp()) / f"{name}.yaml"
    out.write_text(yaml.safe_dump(OmegaConf.to_container(derived, resolve=False)))
    load_config(out)  # the overrides are checked now, not when a chapter first trains
    return out


#: Keys whose value is a free mapping (passed whole to a constructor), not a section.
_FREE_KEYS = ("model.backbone_kwargs", "data.options")


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 3e-4}}`` -> ``{"optim.lr": 3e-4}`` (free-form mappings kept whole)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in _FREE_KEYS:
            out.update(flatten_config(value, dotted + "."))
        else:
            out[dotted] = value
    return out
