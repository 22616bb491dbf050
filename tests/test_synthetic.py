"""The synthetic data set: determinism, Market-1501 names, structure, and that the readers accept it."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from canlib.data import load_dataset
from canlib.data.synthetic import make_synthetic, sample_grid
from canlib.data.synthetic_identity import make_identities

SMALL = {"ids": 24, "images_per_id": 6, "hard_negative_fraction": 0.5}
NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "a"
    make_synthetic(root, seed=3, **SMALL)
    return root


def _records(root: Path) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(p.name for p in (root / sub).iterdir())
        assert all(NAME.match(n) for n in names), [n for n in names if not NAME.match(n)][:3]
        out[sub] = [(int(NAME.match(n).group(1)), int(NAME.match(n).group(2))) for n in names]
    return out


def test_byte_identical_and_seed_dependent(small_set: Path, tmp_path: Path) -> None:
    make_synthetic(tmp_path / "b", seed=3, workers=2, **SMALL)  # workers do not change the output
    assert _hashes(small_set) == _hashes(tmp_path / "b")
    make_synthetic(tmp_path / "c", seed=4, **SMALL)
    a, c = _hashes(small_set), _hashes(tmp_path / "c")
    assert a != c
    assert len(set(a.values()) & set(c.values())) == 0


def test_refuses_to_overwrite(small_set: Path) -> None:
    with pytest.raises(FileExistsError):
        make_synthetic(small_set, seed=3, **SMALL)


def test_structure(small_set: Path) -> None:
    rec = _records(small_set)
    train_ids = {p for p, _ in rec["bounding_box_train"]}
    test_ids = {p for p, _ in rec["query"]}
    gallery_ids = {p for p, _ in rec["bounding_box_test"]}
    assert train_ids.isdisjoint(test_ids) and train_ids.isdisjoint(gallery_ids)
    assert 0 in gallery_ids and -1 in gallery_ids  # distractors and junk
    assert 0 not in train_ids | test_ids and -1 not in train_ids | test_ids
    assert gallery_ids - {0, -1} == test_ids
    queries = defaultdict(list)
    for pid, cam in rec["query"]:
        queries[pid].append(cam)
    for pid, cams in queries.items():
        assert len(cams) == len(set(cams)) >= 2  # one query per camera, at least two cameras
        gallery_cams = {c for p, c in rec["bounding_box_test"] if p == pid}
        for cam in cams:
            assert gallery_cams - {cam}, f"query of id {pid} in camera {cam} has no cross-camera match"
    img = Image.open(next((small_set / "query").iterdir()))
    assert img.size == (64, 128) and img.mode == "RGB" and not img.info.get("exif")


def test_meta_and_groups(small_set: Path) -> None:
    meta = json.loads((small_set / "meta.json").read_text())
    assert meta["version"] and meta["arguments"]["seed"] == 3 and meta["arguments"]["ids"] == 24
    assert set(meta["train_pids"]).isdisjoint(meta["test_pids"])
    assert meta["groups"], "hard-negative groups expected"
    for g in meta["groups"]:  # a group stays on one side of the split
        assert set(g["pids"]) <= set(meta["train_pids"]) or set(g["pids"]) <= set(meta["test_pids"])
    assert (small_set / "README.txt").read_text().startswith("Synthetic")


def test_hard_negatives_differ_in_exactly_one_detail() -> None:
    identities, groups = make_identities(list(range(1, 41)), seed=0, hard_negative_fraction=1.0, group_size=3)
    assert sum(len(g) for g in groups) >= 38
    fields = {
        "shoes": {"shoes"},
        "logo": {"logo", "logo_color"},
        "belt": {"belt"},
        "bag": {"bag", "bag_color"},
        "headwear": {"headwear", "headwear_color", "hair_style"},
        "lower": {"lower"},
        "pattern": {"upper_pattern"},
    }
    by_pid = {i.pid: i.to_json() for i in identities}
    for g in groups:
        detail = by_pid[g[0]]["detail"]
        for a in g:
            for b in g:
                if a < b:
                    diff = {k for k in by_pid[a] if by_pid[a][k] != by_pid[b][k]} - {"pid"}
                    assert diff and diff <= fields[detail] | {"shoes"}, (detail, diff)


def test_loads_as_synthetic_and_folder(small_set: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counts match meta.json: no warning
        ds = load_dataset("synthetic", small_set)
    folder = load_dataset("folder", small_set)
    meta = json.loads((small_set / "meta.json").read_text())
    assert ds.num_train_pids == folder.num_train_pids == len(meta["train_pids"])
    assert sorted({p for _, p, _ in ds.train}) == list(range(ds.num_train_pids))
    assert all(p != -1 for _, p, _ in ds.gallery)
    assert ds.num_train_cams <= 6


def test_sample_grid(small_set: Path) -> None:
    grid = sample_grid(small_set, rows=4, scale=1)
    assert isinstance(grid, Image.Image) and grid.width > 6 * 64 and grid.height >= 4 * 128


def test_cli_help_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from canlib import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["make-synthetic", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--out", "--ids", "--seed", "--hard-negative-fraction", "--occlusion", "--misalignment", "--cameras"):
        assert opt in help_text
    out = tmp_path / "cli"
    assert (
        cli.main(
            [
                "make-synthetic",
                "--out",
                str(out),
                "--ids",
                "8",
                "--images-per-id",
                "4",
                "--cameras",
                "3",
                "--height",
                "64",
                "--width",
                "32",
                "--grid",
                str(tmp_path / "grid.png"),
            ]
        )
        == 0
    )
    assert Image.open(next((out / "query").iterdir())).size == (32, 64)
    assert json.loads((out / "meta.json").read_text())["statistics"]["cameras"] <= 3
    assert (tmp_path / "grid.png").is_file()
