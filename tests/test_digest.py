"""The checked-out code trains every recorded configuration as the records' code did (``make digest``
wrote ``results/training-digest.json``); bit-exact on the platform that wrote it only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from canlib.lab.digest import compute_digests, platform_key, record_configs

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDED = json.loads((RESULTS / "training-digest.json").read_text())


CONFIGS = record_configs(RESULTS)


@pytest.fixture(scope="module")
def first() -> tuple[dict[str, Any], str]:
    name = next(iter(CONFIGS))
    return CONFIGS[name], compute_digests({name: CONFIGS[name]})[name]


def test_the_digest_covers_exactly_the_recorded_configurations() -> None:
    assert sorted(RECORDED["digests"]) == sorted(CONFIGS), "records changed: rewrite the digest (make digest)"


def test_the_code_trains_every_recorded_configuration_as_before() -> None:
    if platform_key() != {k: RECORDED[k] for k in platform_key()}:
        pytest.skip(f"digest made on {RECORDED['torch']}/{RECORDED['cpu_capability']}, not {platform_key()}")
    now = compute_digests(CONFIGS)
    changed = [name for name in CONFIGS if now[name] != RECORDED["digests"].get(name)]
    assert not changed, f"these configurations train differently now (record hashes): {changed}"


def test_the_same_configuration_digests_identically_twice(first: tuple[dict[str, Any], str]) -> None:
    cfg, digest = first
    assert compute_digests({"again": cfg})["again"] == digest


@pytest.mark.parametrize("change", [("loss", "triplet_weight", 0.5), ("model", "pooling", "adaptive")])
def test_a_training_relevant_change_changes_the_digest(first: tuple[dict[str, Any], str], change: tuple) -> None:
    (cfg, digest), (section, key, value) = first, change
    assert cfg[section][key] != value
    assert compute_digests({"changed": {**cfg, section: {**cfg[section], key: value}}})["changed"] != digest
