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
