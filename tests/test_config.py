"""Profiles, inheritance and overrides (canlib.config)."""

from pathlib import Path

import pytest

from canlib.config import DEFAULTS, ConfigError, config_hash, config_value, load_config, parse_override

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
    with pytest.raises(ConfigError, match="optim.learning_rate"):
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
    with pytest.raises(KeyError, match="loss.no_such_key"):
        config_value(DEFAULTS, "loss.no_such_key")
    with pytest.raises(KeyError, match="missing 'x'"):
        config_value(DEFAULTS, "loss.ce_scale.x")
