"""Profiles, inheritance and overrides (canlib.config)."""

import copy
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from canlib.config import (
    DEFAULTS,
    SECTIONS,
    ConfigError,
    DataSection,
    EvalSection,
    LossSection,
    ModelSection,
    config_hash,
    config_value,
    load_config,
    parse_override,
    section,
    sections,
)
from canlib.data.cache import CACHE_MODES
from canlib.data.sampler import EPOCH_MODES
from canlib.engine.evaluate import evaluate_model
from canlib.losses import CLUSTERING_INPUTS, FEATURE_REDUCTIONS, CANLoss
from canlib.metrics import AP_VARIANTS, METRICS
from canlib.model import CAN, DESCRIPTOR_NORMS
from canlib.pooling import POOLING_MODES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_paper_profile_is_the_papers_recipe():
    cfg = load_config(CONFIGS / "paper-market1501.yaml")
    assert (cfg["data"]["height"], cfg["data"]["width"]) == (384, 128)
    assert (cfg["data"]["p"], cfg["data"]["k"]) == (8, 4)
    assert cfg["model"]["backbone"] == "resnet50" and cfg["model"]["last_stride"] == 1
    assert cfg["model"]["parts"] == [1, 3, 5, 7] and cfg["model"]["collaborative"] is True
    assert cfg["model"]["embed_dim"] == 256 and cfg["model"]["pooling"] == "paper"
    o = cfg["optim"]
    assert o["lr"] == pytest.approx(3e-4) and o["betas"] == [0.9, 0.999] and o["eps"] == pytest.approx(1e-8)
    assert o["milestones"] == [250, 350, 450] and o["gamma"] == pytest.approx(0.1) and o["epochs"] == 600
    assert cfg["loss"]["center_weight"] == pytest.approx(0.0005)
    assert cfg["loss"]["clustering_features"] == "all"
    assert cfg["eval"]["metric"] == "cosine"


@pytest.mark.parametrize("name", ["dukemtmc", "cuhk03np", "msmt17"])
def test_dataset_variants_inherit_the_recipe(name):
    base = load_config(CONFIGS / "paper-market1501.yaml")
    cfg = load_config(CONFIGS / f"paper-{name}.yaml")
    assert cfg["data"]["dataset"] == name
    assert cfg["optim"] == base["optim"] and cfg["model"] == base["model"] and cfg["loss"] == base["loss"]


def test_every_profile_loads():
    for path in CONFIGS.glob("*.yaml"):
        load_config(path)


def test_overrides_parse_yaml_values():
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], pytest.approx(3e-4))
    assert parse_override("model.parts=[1,2,3]") == (["model", "parts"], [1, 2, 3])
    assert parse_override("model.collaborative=false") == (["model", "collaborative"], False)
    cfg = load_config(
        CONFIGS / "smoke.yaml", ["model.parts=[1,2,3]", "optim.lr=1e-3", "loss.clustering_features=global"]
    )
    assert cfg["model"]["parts"] == [1, 2, 3] and cfg["optim"]["lr"] == pytest.approx(1e-3)


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        load_config(None, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="pooling"):
        load_config(None, ["model.pooling=bilinear"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(CONFIGS / "nope.yaml")


def test_hash_ignores_data_root_but_not_the_recipe():
    a = load_config(None, ["data.root=/a"])
    b = load_config(None, ["data.root=/b"])
    c = load_config(None, ["optim.lr=1e-3"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_hash(DEFAULTS) == config_hash(load_config(None))


def test_config_value_reads_dotted_keys_and_names_missing_ones():
    assert config_value(DEFAULTS, "loss.ce_scale") == DEFAULTS["loss"]["ce_scale"]
    assert config_value(load_config(overrides=["loss.ce_scale=64"]), "loss.ce_scale") == 64
    with pytest.raises(KeyError, match=r"loss\.no_such_key"):
        config_value(DEFAULTS, "loss.no_such_key")
    with pytest.raises(KeyError, match="missing 'x'"):
        config_value(DEFAULTS, "loss.ce_scale.x")


# ---------------------------------------------------------------- typed sections
def _profiles() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", _profiles(), ids=lambda p: p.name)
def test_sections_round_trip_every_profile(path):
    cfg = load_config(path)
    before = copy.deepcopy(cfg)
    run = sections(cfg)
    assert cfg == before  # reading the sections changes nothing
    assert (run.profile, run.seed) == (cfg["profile"], cfg["seed"])
    for kind in SECTIONS:
        typed = getattr(run, kind.KEY)
        assert isinstance(typed, kind) and section(cfg, kind) == typed
        assert [f.name for f in dataclasses.fields(typed)] == list(cfg[kind.KEY])
        for name, value in cfg[kind.KEY].items():  # every field equals its dictionary value
            field = getattr(typed, name)
            assert (list(field) if isinstance(field, tuple) else field) == value, f"{kind.KEY}.{name}"
        assert typed.as_config() == cfg[kind.KEY]
    # The dictionary the run writes and hashes is the one it was given.
    assert run.config == cfg and run.config is not cfg
    assert config_hash(run.config) == config_hash(cfg)


def test_section_fields_are_the_arguments_they_feed():
    def arguments(fn) -> set[str]:
        return set(inspect.signature(fn).parameters)

    assert {f.name for f in dataclasses.fields(ModelSection)} <= arguments(CAN)
    assert {f.name for f in dataclasses.fields(LossSection)} <= arguments(CANLoss)
    assert {f.name for f in dataclasses.fields(EvalSection)} <= arguments(evaluate_model)
    for kind in SECTIONS:
        assert [f.name for f in dataclasses.fields(kind)] == list(DEFAULTS[kind.KEY]), kind.KEY


def test_sections_hold_typed_values():
    run = sections(load_config(CONFIGS / "smoke.yaml", ["loss.ce_weight=2", "optim.betas=[0, 0.5]"]))
    assert run.loss.ce_weight == 2.0 and isinstance(run.loss.ce_weight, float)  # as float() in the builders
    assert run.optim.betas == (0.0, 0.5) and all(isinstance(b, float) for b in run.optim.betas)
    assert run.model.parts == (1, 3, 5, 7) and run.optim.milestones == (1,)
    # A dictionary written before a key existed: the key's default; an unknown key is named.
    old = load_config(CONFIGS / "smoke.yaml")
    del old["data"]["cache"]
    assert section(old, DataSection).cache == DEFAULTS["data"]["cache"]
    with pytest.raises(ConfigError, match=r"unknown configuration key 'model\.branches'"):
        section({"model": {"branches": 3}}, ModelSection)


@pytest.mark.parametrize(
    "kind, key, value, allowed",
    [
        (ModelSection, "pooling", "max", POOLING_MODES),
        (ModelSection, "descriptor_norm", "l2", DESCRIPTOR_NORMS),
        (LossSection, "clustering_input", "logits", CLUSTERING_INPUTS),
        (LossSection, "feature_reduction", "max", FEATURE_REDUCTIONS),
        (EvalSection, "ap", "interpolated", AP_VARIANTS),
        (EvalSection, "metric", "manhattan", METRICS),
        (DataSection, "cache", "disk", CACHE_MODES),
        (DataSection, "epoch", "steps", EPOCH_MODES),
    ],
)
def test_an_invalid_section_value_names_the_allowed_values(kind, key, value, allowed):
    message = re.escape(f"{kind.KEY}.{key} must be one of {', '.join(allowed)}; got {value!r}")
    good = section(DEFAULTS, kind)
    with pytest.raises(ConfigError, match=message):  # built directly
        dataclasses.replace(good, **{key: value})
    with pytest.raises(ConfigError, match=message):  # read from a dictionary
        section({kind.KEY: {key: value}}, kind)
    with pytest.raises(ConfigError, match=message):  # the same words as load_config's
        load_config(None, [f"{kind.KEY}.{key}={value}"])


def test_sections_check_types_and_ranges_as_load_config_does():
    data = section(DEFAULTS, DataSection)
    with pytest.raises(ConfigError, match=r"data\.p must be >= 2"):
        dataclasses.replace(data, p=1)
    with pytest.raises(ConfigError, match=r"2 problems: data\.height must be an integer; got 2\.5; data\.flip"):
        dataclasses.replace(data, height=2.5, flip="yes")
    with pytest.raises(ConfigError, match=r"model\.parts must be a list of distinct positive integers"):
        dataclasses.replace(section(DEFAULTS, ModelSection), parts=(1, 1))
    with pytest.raises(ConfigError, match=r"seed must be an integer"):
        sections({**DEFAULTS, "seed": "zero"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.p = 4  # type: ignore[misc]
