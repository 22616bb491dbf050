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
    assert "paper.py" not in names and "engine/ablation.py" not in names
    assert len(TRAINING_SOURCES) <= len(files)


@pytest.mark.parametrize("name", ["paper.py", "complexity.py", "engine/ablation.py", "engine/cli.py", "__main__.py"])
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
    with pytest.raises(FileNotFoundError, match="pooling.py"):
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

    from canlib.engine.ablation import freshness
    from canlib.engine.record import code_fingerprint, module_fingerprints

    run = tmp_path / "run"
    run.mkdir()
    assert freshness(run) == "unknown"  # no run.json
    current = {"code_fingerprint": code_fingerprint(), "code_modules": module_fingerprints()}
    (run / "run.json").write_text(json.dumps(current))
    assert freshness(run) == ""
    stale = {"code_fingerprint": "0" * 12, "code_modules": {**module_fingerprints(), "losses.py": "x"}}
    (run / "run.json").write_text(json.dumps(stale))
    assert freshness(run) == "losses.py"
