"""Difficulty levels of the synthetic set: level 0 stays byte for byte, the new knobs and the realistic preset.

The digests below were recorded with the generator as it was before the difficulty knobs existed
(every file's SHA-256, then one SHA-256 over the sorted ``path sha`` lines): level 0 must keep
writing exactly those bytes, so that every record made on today's set stays valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from canlib.data.synthetic import LEVELS, SyntheticConfig, SyntheticConfigError, make_synthetic, recorded_arguments
from canlib.data.synthetic_identity import DETAILS, GLOBAL_CUES, OUTFIT_COLORS, make_identities

#: Recorded before the change: (arguments, number of files, combined digest, meta.json's SHA-256).
LEVEL0: dict[str, tuple[dict, int, str, str]] = {
    "ids40_seed3": (
        {"ids": 40, "seed": 3},
        434,
        "1120bd33c4aa79632ec9e6604f84d927cc2475b82dfd6f8fbb3543b22c255faf",
        "a89233964941676a2f0025aaedbc0ea05cfd36b2c2a3554654b7941c80720fdc",
    ),
    "ids12_seed5": (
        {"ids": 12, "seed": 5, "images_per_id": 4},
        81,
        "962919320aba84f0a15b494e178457bfcc0214cdde78e7db00117222f79a3ee8",
        "672ee8454647364c8d542dab80ca1802c7aeceadfca17b536a654398f6b8484f",
    ),
}
#: ``meta.json`` of the committed default set (``make data``: 500 ids, seed 0), when it is there.
DATA_META_SHA256 = "1e567e03888ba14e42b1a66dd6b17a45891100dbcd957992fc60b10dc0d7e40d"
SMALL_REALISTIC = {"level": "realistic", "ids": 16, "images_per_id": 4}


def _digest(root: Path) -> tuple[int, str]:
    rows = [
        f"{p.relative_to(root).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(LEVEL0))
def test_level0_is_byte_identical_to_the_recorded_set(name: str, tmp_path: Path) -> None:
    arguments, files, digest, meta = LEVEL0[name]
    make_synthetic(tmp_path / name, **arguments)
    assert hashlib.sha256((tmp_path / name / "meta.json").read_bytes()).hexdigest() == meta
    assert _digest(tmp_path / name) == (files, digest)


def test_level0_by_name_and_by_the_cli_write_the_same_bytes(tmp_path: Path) -> None:
    from canlib import cli

    arguments, files, digest, _ = LEVEL0["ids12_seed5"]
    make_synthetic(tmp_path / "named", level="0", **arguments)
    assert _digest(tmp_path / "named") == (files, digest)
    command = ["make-synthetic", "--out", str(tmp_path / "cli"), "--ids", "12", "--seed", "5", "--images-per-id", "4"]
    assert cli.main([*command, "--level", "0"]) == 0
    assert _digest(tmp_path / "cli") == (files, digest)


def test_level0_records_no_new_argument() -> None:
    level0 = recorded_arguments(SyntheticConfig())
    assert "level" not in level0 and "global_lookalike_share" not in level0 and len(level0) == 20
    meta = Path(__file__).resolve().parents[1] / "data" / "synthetic" / "meta.json"
    if meta.is_file() and hashlib.sha256(meta.read_bytes()).hexdigest() == DATA_META_SHA256:
        assert json.loads(meta.read_text())["arguments"] == level0
    assert recorded_arguments(SyntheticConfig(viewpoint=0.5))["viewpoint"] == 0.5  # a knob set at level 0 shows
    assert recorded_arguments(SyntheticConfig(camera_seed=0))["camera_seed"] == 0
    realistic = recorded_arguments(SyntheticConfig(level="realistic"))
    assert realistic["level"] == "realistic" and len(realistic) == len(dataclasses.fields(SyntheticConfig))


def test_realistic_is_deterministic_per_seed(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "a", seed=101, **SMALL_REALISTIC)
    make_synthetic(tmp_path / "b", seed=101, workers=2, **SMALL_REALISTIC)
    make_synthetic(tmp_path / "c", seed=102, **SMALL_REALISTIC)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["arguments"]["level"] == "realistic"
    assert SyntheticConfig(**meta["arguments"]) == SyntheticConfig(seed=101, **SMALL_REALISTIC)


def test_the_preset_applies_and_explicit_knobs_override_it() -> None:
    preset = LEVELS["realistic"]
    assert set(preset.knobs) == set(preset.reasons) and preset.knobs["global_lookalike_share"] >= 0.5
    cfg = SyntheticConfig(level="realistic", viewpoint=0.0, ids=20)
    assert cfg.viewpoint == 0.0 and cfg.ids == 20 and cfg.box_jitter == preset.knobs["box_jitter"]
    assert dataclasses.replace(cfg, seed=4).viewpoint == 0.0  # replace keeps what was explicit
    recorded = recorded_arguments(cfg)
    assert SyntheticConfig(**recorded) == cfg  # what meta.json records rebuilds the configuration


def _differing(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]} - {"pid"}


def test_global_lookalikes_differ_globally_and_local_ones_locally() -> None:
    identities, groups = make_identities(list(range(1, 121)), 7, 1.0, 4, global_share=0.5)
    by_pid = {i.pid: i.to_json() for i in identities}
    kinds = {by_pid[g[0]]["detail"] for g in groups}
    assert kinds & set(GLOBAL_CUES) and kinds & set(DETAILS)
    n_global = sum(by_pid[g[0]]["detail"] in GLOBAL_CUES for g in groups)
    assert 0.3 < n_global / len(groups) < 0.7
    for g in groups:
        cue = by_pid[g[0]]["detail"]
        for a in g:
            for b in g:
                if a >= b:
                    continue
                diff = _differing(by_pid[a], by_pid[b])
                if cue == "build":
                    assert diff == {"height", "width"}, diff
                elif cue in ("tone", "tint"):  # the whole outfit: top and bottom, never a part alone
                    assert {"upper", "lower"} <= diff <= set(OUTFIT_COLORS), diff
                else:  # a local detail: the outfit's top and bottom colours are shared
                    assert not diff & {"upper", "lower", "height", "width"} or cue == "lower", (cue, diff)


def test_global_share_zero_leaves_the_identities_as_they_were() -> None:
    before = make_identities(list(range(1, 41)), 3, 0.6, 4)
    assert make_identities(list(range(1, 41)), 3, 0.6, 4, global_share=0.0) == before
    with_global = make_identities(list(range(1, 41)), 3, 0.6, 4, global_share=1.0)
    assert with_global[1] == before[1]  # the same groups; only their members' differences change


@pytest.mark.parametrize(
    ("knobs", "words"),
    [
        ({"ids": 3}, "--ids must be >= 4; got 3"),
        ({"global_lookalike_share": 1.5}, "--global-lookalike-share must be <= 1.0; got 1.5"),
        ({"pose_strength": -1.0}, "--pose-strength must be >= 0.0; got -1.0"),
        ({"level": "hard"}, "--level must be '0' or 'realistic'; got 'hard'"),
        ({"min_cameras": 4, "max_cameras": 3}, "--min-cameras (4) must be <= --max-cameras (3)"),
        ({"colour": 1}, "unknown argument --colour"),
    ],
)
def test_knobs_are_refused_in_one_line_naming_the_argument(knobs: dict, words: str) -> None:
    with pytest.raises(SyntheticConfigError) as refused:
        SyntheticConfig(**knobs)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_cli_refuses_a_bad_knob_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from canlib import cli

    assert cli.main(["make-synthetic", "--out", str(tmp_path / "x"), "--viewpoint", "2"]) == 2
    assert "--viewpoint must be <= 1.0; got 2.0" in caplog.text
    assert not (tmp_path / "x").exists()


def test_the_camera_seed_keeps_the_cameras_and_redraws_the_people(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "a", ids=12, seed=5, images_per_id=4)
    make_synthetic(tmp_path / "b", ids=12, seed=6, images_per_id=4, camera_seed=5)
    make_synthetic(tmp_path / "c", ids=12, seed=5, images_per_id=4, camera_seed=5)
    a, b = (json.loads((tmp_path / x / "meta.json").read_text()) for x in "ab")
    assert a["cameras"] == b["cameras"]
    people = sorted(p.name for p in (tmp_path / "a" / "query").glob("*.jpg"))
    assert any(
        (tmp_path / "a" / "query" / n).read_bytes() != (tmp_path / "b" / "query" / n).read_bytes()
        for n in people
        if (tmp_path / "b" / "query" / n).is_file()
    ) or people != sorted(p.name for p in (tmp_path / "b" / "query").glob("*.jpg"))
    assert _digest(tmp_path / "c")[0] == _digest(tmp_path / "a")[0]  # camera_seed = seed: the same images
    assert all(
        (tmp_path / "a" / p.relative_to(tmp_path / "c")).read_bytes() == p.read_bytes()
        for p in (tmp_path / "c").rglob("*.jpg")
    )
