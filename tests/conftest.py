"""Shared fixtures, and one torch thread per pytest-xdist worker (two workers share two cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny synthetic data set (16 ids), generated once per test session."""
    from canlib.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, ids=16, seed=3, images_per_id=6)
    return root


@pytest.fixture(scope="session")
def book_data() -> Path:
    """The book's synthetic set, ``data/synthetic`` (what ``make data`` writes): made here when a
    fresh clone has none, once, under a lock that the other pytest-xdist worker waits on."""
    from filelock import FileLock

    from canlib.data.synthetic import make_synthetic

    root = ROOT / "data" / "synthetic"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / "meta.json").is_file():
            make_synthetic(root, seed=0)  # = make data (python -m canlib make-synthetic --seed 0)
    return root
