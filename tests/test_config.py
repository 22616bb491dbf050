"""Profiles, inheritance and overrides (canlib.config)."""

import ast
import copy
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest
import yaml

import canlib.config
from canlib.config import (
    DEFAULTS,
    ConfigError,
    DataSection,
    EvalSection,
    LossSection,
    ModelSection,
    OptimSection,
    RunSections,
    TrainSection,
    config_hash,
    config_value,
    dump_config,
    flatten_config,
    load_config,
)
from canlib.data.cache import CACHE_MODES
from canlib.data.sampler import EPOCH_MODES
from canlib.engine.evaluate import evaluate_model
from canlib.engine.trainer import AMP_MODES, CHANNELS_LAST_MODES
from canlib.losses import CLUSTERING_FEATURES, CLUSTERING_INPUTS, FEATURE_REDUCTIONS, CANLoss
from canlib.metrics import AP_VARIANTS, METRICS
from canlib.model import CAN, CLASSIFIERS, DESCRIPTOR_NORMS, EMBED_BN_MODES
from canlib.pooling import POOL_OPS, POOLING_MODES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SECTIONS = {"data": DataSection, "model": ModelSection, "loss": LossSection, "optim": OptimSection}
SECTIONS |= {"train": TrainSection, "eval": EvalSection}


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


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_loads_validates_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    sections = RunSections.from_config(cfg)  # every section typed and range-checked
    assert sections.data.dataset and cfg["profile"] in ("paper", "cpu", "smoke", "pretrain", "bot")
    dump_config(cfg, tmp_path / "config.yaml")  # what a run folder records loads back to the same run
    assert config_hash(load_config(tmp_path / "config.yaml")) == config_hash(cfg)


def test_overrides_parse_yaml_values():
    cfg = load_config(
        CONFIGS / "smoke.yaml",
        ["model.parts=[1,2,3]", "optim.lr=1e-3", "loss.clustering_features=global", "model.collaborative=false"],
    )
    assert cfg["model"]["parts"] == [1, 2, 3] and cfg["optim"]["lr"] == pytest.approx(1e-3)
    assert cfg["model"]["collaborative"] is False and cfg["loss"]["clustering_features"] == "global"
    assert load_config(None, ["model.pretrained="])["model"]["pretrained"] is None  # an empty value is null
    assert load_config(None, ["optim.betas=[0, 0.5]"])["optim"]["betas"] == [0.0, 0.5]


def test_yaml_1_1_exponents_are_numbers(tmp_path):
    """YAML 1.1 reads "3e-4" (no dot) as a string; in a file and in an override it is a float."""
    profile = tmp_path / "p.yaml"
    profile.write_text("optim:\n  lr: 3e-4\n  betas: [0.9, 1e-3]\n")
    cfg = load_config(profile, ["optim.eps=1e-6"])
    assert cfg["optim"]["lr"] == pytest.approx(3e-4) and isinstance(cfg["optim"]["lr"], float)
    assert cfg["optim"]["betas"] == [0.9, pytest.approx(1e-3)] and cfg["optim"]["eps"] == pytest.approx(1e-6)


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(
        ConfigError, match=r"unknown configuration key 'optim\.learning_rate'; known keys here: \['betas'"
    ):
        load_config(None, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match=r"unknown configuration key 'models'; known keys here: \['data', 'eval'"):
        load_config(None, ["models.parts=[1]"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="empty key"):
        load_config(None, ["=3"])
    with pytest.raises(ConfigError, match=r"model\.pooling must be one of paper, adaptive; got 'bilinear'"):
        load_config(None, ["model.pooling=bilinear"])
    with pytest.raises(ConfigError, match=r"model must be a mapping; got 3"):
        load_config(None, ["model=3"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(CONFIGS / "nope.yaml")


def test_a_yaml_syntax_error_names_the_line_and_column(tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text("optim:\n  lr: [0.1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: YAML syntax error at line 3, column 9") as info:
        load_config(profile)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"override 'model\.parts=\[1,3': the value is not valid YAML"):
        load_config(None, ["model.parts=[1,3"])
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_base_inheritance_merges_recursively_and_refuses_loops(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "profile: base\noptim:\n  lr: 0.01\n  epochs: 5\nmodel:\n  backbone_kwargs: {a: 1}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim:\n  epochs: 7\nmodel:\n  backbone_kwargs: {b: 2}\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.epochs=9"])
    assert (cfg["profile"], cfg["optim"]["lr"], cfg["optim"]["epochs"]) == ("base", 0.01, 9)
    assert cfg["model"]["backbone_kwargs"] == {"a": 1, "b": 2}
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone\.yaml \(named by 'base:' in"):
        load_config(tmp_path / "orphan.yaml")


def test_hash_ignores_data_root_but_not_the_recipe():
    a = load_config(None, ["data.root=/a"])
    b = load_config(None, ["data.root=/b"])
    c = load_config(None, ["optim.lr=1e-3"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_hash(DEFAULTS) == config_hash(load_config(None))
    # The same resolved values hash the same: an integer where the schema holds a number is that number.
    assert config_hash(load_config(None, ["loss.ce_weight=1"])) == config_hash(load_config(None))


def _records() -> list[Path]:
    from canlib.lab.digest import RECORD_DIRS

    found = [p for d in RECORD_DIRS for p in (ROOT / "results" / d).glob("**/config.yaml")]
    return sorted(found)


@pytest.mark.parametrize("path", _records(), ids=lambda p: str(p.parent.relative_to(ROOT / "results")))
def test_every_committed_record_loads_with_its_hash(path):
    """The grid finds records by hash (canlib.lab.records.recorded_run): loading a record's config.yaml
    through the schema gives back the very dictionary it holds, so the hash it is named by; keys added
    to the schema since are only ones the hash leaves out (config_hash's exclude, LATER_KEYS)."""
    raw = yaml.safe_load(path.read_text())
    cfg = load_config(path)
    flat, recorded = flatten_config(cfg), flatten_config(raw)
    assert {k: flat.get(k) for k in recorded} == recorded  # every recorded value, given back
    unhashed = set(inspect.signature(config_hash).parameters["exclude"].default) | set(canlib.config.LATER_KEYS)
    assert set(flat) - set(recorded) <= unhashed
    assert config_hash(cfg) == config_hash(raw)
    if re.fullmatch(r"[0-9a-f]{12}", path.parent.name):  # a grid's record, found by its hash
        assert config_hash(cfg) == path.parent.name


def test_the_grid_resolves_to_its_committed_records():
    from canlib.lab.rows import ablation_rows, resolve

    recorded = {p.name for p in (ROOT / "results" / "ablations" / "cpu-synthetic").iterdir()}
    rows = ablation_rows(("Table 2", "Table 3", "Table 4", "Controls"))  # what make ablations runs
    runs = [resolve(CONFIGS / "cpu.yaml", row, seed, "anywhere") for row in rows for seed in (0, 1, 2)]
    assert len(runs) == 57 and all(config_hash(cfg) in recorded for cfg in runs)  # rows may share a run


def test_config_value_reads_dotted_keys_and_names_missing_ones():
    assert config_value(DEFAULTS, "loss.ce_scale") == DEFAULTS["loss"]["ce_scale"]
    assert config_value(load_config(overrides=["loss.ce_scale=64"]), "loss.ce_scale") == 64
    with pytest.raises(KeyError, match=r"loss\.no_such_key"):
        config_value(DEFAULTS, "loss.no_such_key")
    with pytest.raises(KeyError, match="missing 'x'"):
        config_value(DEFAULTS, "loss.ce_scale.x")


# ---------------------------------------------------------------- the schema
def test_the_configuration_imports_nothing_else_from_canlib():
    tree = ast.parse(Path(canlib.config.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "canlib"]


def test_defaults_are_the_schema_and_every_key_is_documented():
    assert RunSections().config == DEFAULTS and list(DEFAULTS) == [f.name for f in dataclasses.fields(RunSections)]
    for key, kind in SECTIONS.items():
        assert list(DEFAULTS[key]) == [f.name for f in dataclasses.fields(kind)]
        for name, info in kind.__pydantic_fields__.items():
            assert info.description, f"{key}.{name} has no docstring"
    assert DEFAULTS["model"]["parts"] == [1, 3, 5, 7] and DEFAULTS["loss"]["center_weight"] == 0.0005


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_sections_round_trip_every_profile(path):
    cfg = load_config(path)
    before = copy.deepcopy(cfg)
    run = RunSections.from_config(cfg)
    assert cfg == before  # reading the sections changes nothing
    assert (run.profile, run.seed) == (cfg["profile"], cfg["seed"])
    for key, kind in SECTIONS.items():
        typed = getattr(run, key)
        assert isinstance(typed, kind)
        for name, value in cfg[key].items():  # every field equals its dictionary value
            field = getattr(typed, name)
            assert (list(field) if isinstance(field, tuple) else field) == value, f"{key}.{name}"
    assert run.config == cfg and run.config is not cfg and config_hash(run.config) == config_hash(cfg)


def test_section_fields_are_the_arguments_they_feed():
    def arguments(fn) -> set[str]:
        return set(inspect.signature(fn).parameters)

    assert {f.name for f in dataclasses.fields(ModelSection)} <= arguments(CAN)
    assert {f.name for f in dataclasses.fields(LossSection)} <= arguments(CANLoss)
    assert {f.name for f in dataclasses.fields(EvalSection)} <= arguments(evaluate_model)


def test_sections_hold_typed_values():
    run = RunSections.from_config(load_config(CONFIGS / "smoke.yaml", ["loss.ce_weight=2", "optim.betas=[0, 0.5]"]))
    assert run.loss.ce_weight == 2.0 and isinstance(run.loss.ce_weight, float)
    assert run.optim.betas == (0.0, 0.5) and all(isinstance(b, float) for b in run.optim.betas)
    assert run.model.parts == (1, 3, 5, 7) and run.optim.milestones == (1,)
    assert load_config(None, ["optim.betas=[0.9, 0.9]"])["optim"]["betas"] == [0.9, 0.9]
    with pytest.raises(ConfigError, match=r"unknown configuration key 'model\.branches'"):
        RunSections.from_config({"model": {"branches": 3}})


def test_a_data_set_name_is_checked_by_the_builder_naming_the_key(tmp_path):
    """The data sets are an open registry (with aliases): the builder names the key and the known names."""
    from canlib.engine.build import build_dataset

    data = RunSections.from_config(load_config(None, ["data.dataset=imagenet", f"data.root={tmp_path}"])).data
    with pytest.raises(
        ConfigError, match=r"^configuration: data\.dataset must be one of .*market1501.*; got 'imagenet'$"
    ):
        build_dataset(data)


def _allowed(kind, name) -> tuple:
    """The values a field's type allows (its Literal, with bool and None when the union has them)."""

    def values(t):
        if t is bool:
            return (True, False)
        if t is type(None):
            return (None,)
        args = typing.get_args(t)
        return args if typing.get_origin(t) is typing.Literal else tuple(v for a in args for v in values(a))

    return values(kind.__pydantic_fields__[name].annotation)


@pytest.mark.parametrize(
    "kind, key, value, allowed",
    [
        (ModelSection, "pooling", "max", POOLING_MODES),
        (ModelSection, "embed_bn", "batch", EMBED_BN_MODES),
        (ModelSection, "descriptor_norm", "l2", DESCRIPTOR_NORMS),
        (ModelSection, "pool_ops", "sum", POOL_OPS),
        (ModelSection, "classifier", "arcface", CLASSIFIERS),
        (LossSection, "clustering_input", "logits", CLUSTERING_INPUTS),
        (LossSection, "clustering_features", "local", CLUSTERING_FEATURES),
        (LossSection, "feature_reduction", "max", FEATURE_REDUCTIONS),
        (EvalSection, "ap", "interpolated", AP_VARIANTS),
        (EvalSection, "metric", "manhattan", METRICS),
        (DataSection, "cache", "disk", CACHE_MODES),
        (DataSection, "epoch", "steps", EPOCH_MODES),
    ],
)
def test_the_schemas_choices_are_the_modules_and_a_bad_one_is_named(kind, key, value, allowed):
    """The schema spells each module's choices as a Literal (it imports no module): they must agree."""
    assert set(_allowed(kind, key)) == set(allowed)
    section = {v: k for k, v in SECTIONS.items()}[kind]
    message = re.escape(f"{section}.{key} must be one of {', '.join(_allowed(kind, key))}; got {value!r}")
    with pytest.raises(ConfigError, match=message):  # built directly
        dataclasses.replace(kind(), **{key: value})
    with pytest.raises(ConfigError, match=message):  # read from a dictionary
        RunSections.from_config({section: {key: value}})
    with pytest.raises(ConfigError, match=message):  # the same words as load_config's
        load_config(None, [f"{section}.{key}={value}"])


def test_the_trainers_modes_are_the_schemas():
    assert set(_allowed(TrainSection, "amp")) == set(AMP_MODES)
    assert set(_allowed(TrainSection, "channels_last")) == set(CHANNELS_LAST_MODES)


def test_sections_check_types_and_ranges_as_load_config_does():
    data = DataSection()
    with pytest.raises(ConfigError, match=r"data\.p must be >= 2; got 1"):
        dataclasses.replace(data, p=1)
    with pytest.raises(ConfigError, match=r"2 problems: data\.height must be an integer; got 2\.5; data\.flip"):
        dataclasses.replace(data, height=2.5, flip="yes")
    with pytest.raises(ConfigError, match=r"model\.parts must be a list of distinct positive integers"):
        dataclasses.replace(ModelSection(), parts=(1, 1))
    with pytest.raises(ConfigError, match=r"optim\.betas must be two numbers in \[0, 1\)"):
        load_config(None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"train\.max_batches_per_epoch must be a number > 0 \(or null\); got 0"):
        load_config(None, ["train.max_batches_per_epoch=0"])
    with pytest.raises(ConfigError, match=r"seed must be an integer"):
        RunSections.from_config({**DEFAULTS, "seed": "zero"})
    with pytest.raises(ConfigError, match=r"model\.embed_bn must be one of shared, per_feature, none; got True"):
        load_config(None, ["model.embed_bn=true"])  # the booleans of the first records are gone
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.p = 4  # type: ignore[misc]


def test_a_key_added_later_is_hashed_only_off_its_neutral_value(monkeypatch):
    from canlib import config as config_mod

    base = load_config(None)
    monkeypatch.setitem(config_mod.LATER_KEYS, "optim.lr", base["optim"]["lr"])
    assert config_hash(base) == config_hash({**base, "optim": {k: v for k, v in base["optim"].items() if k != "lr"}})
    assert config_hash(load_config(None, ["optim.lr=0.5"])) != config_hash(base)
