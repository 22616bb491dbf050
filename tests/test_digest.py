"""The checked-out code trains every recorded configuration as the records' code did (``make digest``
wrote ``results/training-digest.json``): bit for bit on the machine kinds the file lists in
``seen_on``, and within ``canlib.lab.digest.RTOL`` of the recorded behaviour on any other x86-64
machine with AVX2 (the digest trains with its CPU kernels pinned: ``PINNED_KERNELS``).

A machine that cannot judge the digest (another torch build, no AVX2) skips here and fails in CI,
where a skip would certify nothing."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from canlib.lab import digest as digest_mod
from canlib.lab.digest import compute_digests, judge, machine_kind, record_configs, why_not_comparable

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDED = json.loads((RESULTS / "training-digest.json").read_text())
CONFIGS = record_configs(RESULTS)
EXACT = machine_kind() in RECORDED.get("seen_on", [])
#: The configurations in this many parts, so that pytest-xdist's workers share them.
SHARDS = 4
#: The sensitivity checks' configuration: Part-1,3,5,7 with CA, where equation (1) and adaptive
#: pooling give different stripes (on Part-1,2,3,4 they coincide and only the bits would differ).
SENSITIVE = next(n for n, c in CONFIGS.items() if list(c["model"]["parts"]) == [1, 3, 5, 7])


def _judgeable() -> None:
    reason = why_not_comparable(RECORDED)
    if reason is None:
        return
    advice = "run the tests on an x86-64 machine with AVX2 and the pinned torch, or rewrite the digest there"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI cannot certify the records here ({advice})")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sensitive() -> dict[str, Any]:
    """One configuration, twice, and two one-value changes of it, digested in one child."""
    _judgeable()
    cfg = CONFIGS[SENSITIVE]
    weight = {**cfg, "loss": {**cfg["loss"], "triplet_weight": 0.5}}
    pooling = {**cfg, "model": {**cfg["model"], "pooling": "adaptive"}}
    assert cfg["loss"]["triplet_weight"] != 0.5 and cfg["model"]["pooling"] != "adaptive"
    return compute_digests({"once": cfg, "twice": cfg, "weight": weight, "pooling": pooling})


def test_the_digest_covers_exactly_the_recorded_configurations() -> None:
    assert sorted(RECORDED["digests"]) == sorted(CONFIGS), "records changed: rewrite the digest (make digest)"


@pytest.mark.parametrize("shard", range(SHARDS))
def test_the_code_trains_every_recorded_configuration_as_before(shard: int) -> None:
    _judgeable()
    names = list(CONFIGS)[shard::SHARDS]
    failed, other_bits = judge(RECORDED["digests"], compute_digests({n: CONFIGS[n] for n in names}), EXACT)
    assert not failed, "these configurations train differently now (record hashes): " + json.dumps(failed)[:3000]
    if other_bits:  # a machine kind the bits were not made on: the behaviour held, the bits did not
        warnings.warn(
            f"{len(other_bits)} configurations within tolerance, not bit for bit, on {machine_kind()}", stacklevel=1
        )


def test_the_same_configuration_digests_identically_twice_and_as_recorded(sensitive: dict[str, Any]) -> None:
    assert sensitive["once"] == sensitive["twice"]
    failed, _ = judge({"once": RECORDED["digests"][SENSITIVE]}, {"once": sensitive["once"]}, EXACT)
    assert not failed


@pytest.mark.parametrize("change", ["weight", "pooling"])
@pytest.mark.parametrize("exact", [True, False], ids=["bits", "behaviour"])
def test_a_training_relevant_change_fails_the_check(sensitive: dict[str, Any], change: str, exact: bool) -> None:
    """Both checks fail a one-value change: the bits and, on another machine kind, the behaviour."""
    failed, _ = judge({"once": sensitive["once"]}, {"once": sensitive[change]}, exact)
    assert "once" in failed


def test_a_child_whose_kernels_are_not_pinned_refuses_to_digest(monkeypatch) -> None:
    """The child checks that the pin took: a child left on other kernels digests nothing."""
    _judgeable()
    pins = {**digest_mod.PINNED_KERNELS, "ATEN_CPU_CAPABILITY": "default"}
    monkeypatch.setattr(digest_mod, "PINNED_KERNELS", pins)
    with pytest.raises(RuntimeError, match="pinned to AVX2, but ATen dispatches DEFAULT"):
        compute_digests({SENSITIVE: CONFIGS[SENSITIVE]})


def test_bits_that_differ_pass_only_off_the_seen_kinds_and_only_within_tolerance() -> None:
    fp = {"epoch1.loss_ce": 5.0, "weights.stem.conv1": 3.0}
    recorded = {"a": {"bits": "x", "fingerprint": fp}}
    close = {"a": {"bits": "y", "fingerprint": {**fp, "epoch1.loss_ce": 5.0 * (1 + 1e-6)}}}
    far = {"a": {"bits": "y", "fingerprint": {**fp, "epoch1.loss_ce": 5.0 * (1 + 1e-3)}}}
    assert judge(recorded, close, exact=False) == ({}, ["a"])
    assert "a" in judge(recorded, close, exact=True)[0]
    assert "epoch1.loss_ce" in judge(recorded, far, exact=False)[0]["a"][0]


def test_a_results_folder_without_records_is_refused_and_nothing_is_written(tmp_path) -> None:
    out = tmp_path / "digest.json"
    out.write_text("{}\n")
    with pytest.raises(ValueError, match="no recorded runs"):
        digest_mod.write_digest(tmp_path / "results-typo", out)
    assert out.read_text() == "{}\n"


def test_adding_digests_only_the_new_configurations_and_only_on_a_seen_kind(tmp_path, monkeypatch) -> None:
    names = sorted(CONFIGS)[:2]
    digested: list[list[str]] = []
    monkeypatch.setattr(digest_mod, "record_configs", lambda _: {n: CONFIGS[n] for n in names})
    monkeypatch.setattr(
        digest_mod, "compute_digests", lambda c: digested.append(sorted(c)) or {n: {"bits": n} for n in c}
    )
    monkeypatch.setattr(digest_mod, "why_not_comparable", lambda _: None)
    monkeypatch.setattr(digest_mod, "machine_kind", lambda: "CPU X (AVX2)")
    path = tmp_path / "digest.json"
    path.write_text(json.dumps({"seen_on": ["CPU X (AVX2)"], "digests": {names[0]: {"bits": "kept"}, "gone": {}}}))
    assert digest_mod.add_to_digest(path, tmp_path) == [names[1]] and digested == [[names[1]]]
    assert json.loads(path.read_text())["digests"] == {names[0]: {"bits": "kept"}, names[1]: {"bits": names[1]}}
    monkeypatch.setattr(digest_mod, "machine_kind", lambda: "CPU Y (AVX512)")
    with pytest.raises(digest_mod.DigestPlatformError, match="not among its seen_on"):
        digest_mod.add_to_digest(path, tmp_path)
