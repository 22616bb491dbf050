"""The code fingerprint: which edits make recorded runs stale and which do not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from canlib.engine.record import PACKAGE_DIR, TRAINING_SOURCES, code_fingerprint, training_source_files


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    dest = tmp_path / "canlib"
    shutil.copytree(PACKAGE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_fingerprint_matches_the_installed_package(package: Path) -> None:
    assert code_fingerprint(package) == code_fingerprint()


def test_every_listed_source_exists() -> None:
    files = training_source_files()
    names = {p.relative_to(PACKAGE_DIR).as_posix() for p in files}
    assert {"model.py", "losses.py", "engine/trainer.py", "data/sampler.py", "metrics/reid.py"} <= names
    assert "paper.py" not in names and "lab/grid.py" not in names
    assert len(TRAINING_SOURCES) <= len(files)


@pytest.mark.parametrize("name", ["paper.py", "complexity.py", "lab/grid.py", "cli.py", "__main__.py"])
def test_code_outside_training_does_not_change_it(package: Path, name: str) -> None:
    before = code_fingerprint(package)
    with (package / name).open("a") as fh:
        fh.write("\nUNRELATED_CONSTANT = 1\n")
    assert code_fingerprint(package) == before


def test_prose_does_not_change_it_but_code_does(package: Path) -> None:
    before = code_fingerprint(package)
    path = package / "losses.py"
    source = path.read_text()
    first_doc_end = source.index('"""', 3)
    path.write_text(source[:first_doc_end] + " More words." + source[first_doc_end:] + "\n# a comment\n")
    assert code_fingerprint(package) == before
    path.write_text(path.read_text() + "\nEXTRA = 2\n")
    assert code_fingerprint(package) != before


def test_a_missing_listed_source_is_named(package: Path) -> None:
    (package / "pooling.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"pooling\.py"):
        code_fingerprint(package)


def test_module_fingerprints_name_the_module_that_changed(package: Path) -> None:
    from canlib.engine.record import changed_modules, module_fingerprints

    before = module_fingerprints(package)
    assert set(before) == {p.relative_to(package).as_posix() for p in training_source_files(package)}
    with (package / "model.py").open("a") as fh:
        fh.write("\nEXTRA = 3\n")
    after = module_fingerprints(package)
    assert changed_modules({"code_modules": before}, after) == ["model.py"]
    assert changed_modules({"code_modules": after}, after) == []
    assert changed_modules({"git": {"commit": None}}, after) is None  # nothing to compare with


def test_changed_modules_of_a_run_recorded_before_per_module_fingerprints() -> None:
    from canlib.engine.record import _git, changed_modules, module_fingerprints, module_fingerprints_at

    head = (_git("rev-parse", "HEAD") or "").strip()
    if not head:
        pytest.skip("not a git checkout")
    at_head = module_fingerprints_at(head)
    assert at_head is not None and set(at_head) <= set(module_fingerprints()) | set(at_head)
    # A record with only a commit (the first grid's run.json) is compared through git.
    assert changed_modules({"git": {"commit": head}}, at_head) == []
    assert module_fingerprints_at("0" * 40) is None  # an unknown commit: cannot tell


def test_freshness_of_a_recorded_run(tmp_path: Path) -> None:
    import json

    from canlib.engine.record import code_fingerprint, module_fingerprints
    from canlib.lab.grid import freshness

    run = tmp_path / "run"
    run.mkdir()
    assert freshness(run) == "unknown"  # no run.json
    current = {"code_fingerprint": code_fingerprint(), "code_modules": module_fingerprints()}
    (run / "run.json").write_text(json.dumps(current))
    assert freshness(run) == ""
    stale = {"code_fingerprint": "0" * 12, "code_modules": {**module_fingerprints(), "losses.py": "x"}}
    (run / "run.json").write_text(json.dumps(stale))
    assert freshness(run) == "losses.py"


def _edge(module: str, a: str, b: str) -> dict:
    return {"module": module, "from": a, "to": b, "why": "test", "evidence": "x.json"}


def test_certified_equivalences_make_a_changed_module_count_as_unchanged() -> None:
    from canlib.engine.record import changed_modules, equivalent

    chain = [_edge("model.py", "a", "b"), _edge("model.py", "c", "b"), _edge("losses.py", "a", "z")]
    assert equivalent("model.py", "a", "c", chain)  # a -> b <- c: joined, in either direction
    assert not equivalent("model.py", "a", "z", chain)  # an edge of another module does not count
    assert not equivalent("model.py", None, "a", chain)  # an unknown fingerprint never is
    record = {"code_modules": {"model.py": "a", "losses.py": "q"}}
    current = {"model.py": "c", "losses.py": "r"}
    assert changed_modules(record, current, chain) == ["losses.py"]
    assert changed_modules(record, current, []) == ["losses.py", "model.py"]


def test_modules_a_clean_run_did_not_record_are_read_from_its_commit(monkeypatch) -> None:
    from canlib.engine import record as rec

    monkeypatch.setattr(rec, "module_fingerprints_at", lambda commit: {"model.py": "m", "new.py": "n"})
    clean = {"git": {"commit": "abc", "dirty": False}, "code_modules": {"model.py": "m"}}
    dirty = {"git": {"commit": "abc", "dirty": True}, "code_modules": {"model.py": "m"}}
    current = {"model.py": "m", "new.py": "n"}
    assert rec.changed_modules(clean, current, []) == []
    assert rec.changed_modules(dirty, current, []) == ["new.py"]  # a dirty tree's module is unknown


def test_a_broken_equivalences_file_is_named(tmp_path: Path) -> None:
    from canlib.engine.record import load_equivalences

    assert load_equivalences(tmp_path / "absent.json") == []
    bad = tmp_path / "equivalences.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"equivalences\.json"):
        load_equivalences(bad)


def test_certify_digests_change_with_any_bit_and_name_what_differs() -> None:
    import math

    import torch

    from canlib.lab.certify import compare_outputs, digest

    t = torch.zeros(3)
    u = t.clone()
    u[1] = torch.finfo(torch.float32).tiny  # the smallest change a float can make
    assert digest({"w": t, "lr": 0.1}) == digest({"lr": 0.1, "w": t.clone()})
    assert digest({"w": t}) != digest({"w": u})
    assert digest([0.1]) != digest([math.nextafter(0.1, 1.0)])
    old = {"row": {"log": "1", "checkpoint.model": "2"}}
    assert compare_outputs(old, {"row": {"log": "1", "checkpoint.model": "2"}}) == []
    assert compare_outputs(old, {"row": {"log": "1", "checkpoint.model": "3"}}) == ["row: checkpoint.model"]


def test_certify_names_changed_modules_including_added_ones(package: Path, tmp_path: Path) -> None:
    import shutil

    from canlib.lab.certify import ABSENT, changed_fingerprints

    old = tmp_path / "old"
    shutil.copytree(package, old)
    (old / "data" / "split.py").unlink()
    (package / "model.py").write_text((package / "model.py").read_text() + "\nEXTRA = 1\n")
    changed = changed_fingerprints(old, package)
    assert set(changed) == {"model.py", "data/split.py"}
    assert changed["data/split.py"][0] == ABSENT


def test_certify_replays_every_configuration_the_records_use() -> None:
    from canlib.config import config_hash
    from canlib.lab.certify import replay_configs
    from canlib.lab.grid import ablation_rows, resolve

    root = Path(__file__).resolve().parents[1]
    configs = replay_configs(root / "configs" / "cpu.yaml", root / "configs" / "pretrain.yaml")
    distinct = {config_hash(resolve(root / "configs" / "cpu.yaml", r, 0, "x")) for r in ablation_rows()}
    grid = [name for name in configs if name.startswith("Table")]
    assert len(grid) == len(distinct)  # each distinct grid run once
    assert any(name.startswith("decision") for name in configs) and "pretraining" in configs
    assert all(cfg["optim"]["epochs"] == 2 and cfg["optim"]["milestones"] == [1] for cfg in configs.values())


def test_a_run_whose_pretrained_weights_file_changed_is_not_current(tmp_path: Path) -> None:
    import json

    import yaml

    from canlib.engine.record import code_fingerprint, input_files, module_fingerprints
    from canlib.lab.grid import freshness

    weights = tmp_path / "trunk.pt"
    weights.write_bytes(b"weights, version 1")
    cfg = {"model": {"pretrained": str(weights)}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    record = {"code_fingerprint": code_fingerprint(), "code_modules": module_fingerprints(), "inputs": input_files(cfg)}
    (run / "run.json").write_text(json.dumps(record))
    assert freshness(run) == ""
    weights.write_bytes(b"weights, version 2")
    assert freshness(run) == "model.pretrained (file changed)"
    assert input_files({"model": {"pretrained": None}}) == {}
    assert input_files({"model": {"pretrained": "imagenet"}}) == {}
