"""Your own data: the checks of a Market-layout folder before any training or evaluation, on crafted tiny folders."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from canlib import cli
from canlib.data import PKSampler, load_dataset
from canlib.data.checks import DatasetCheckError, check_split, check_training
from canlib.engine import trainer

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
CHECKS = "canlib.data.checks"

Label = tuple[int, int]  # (pid, camera), the camera counted from 1 as in the file names

#: Six training identities of six images from cameras 1 and 2.
TRAIN = [(pid, 1 + i % 2) for pid in range(1, 7) for i in range(6)]
#: One training step of a global-branch model on small images: a run folder to evaluate, at little cost.
ONE_STEP = ("optim.epochs=1", "optim.milestones=[1]", "train.max_batches_per_epoch=1", "model.parts=[1]")
SMALL = ("data.height=64", "data.width=32")
#: The gallery: identities 10-15, each from cameras 2 and 3.
GALLERY = [(pid, cam) for cam in (2, 3) for pid in range(10, 16)]


def _folder(root: Path, train: Sequence[Label], query: Sequence[Label], gallery: Sequence[Label] = GALLERY) -> Path:
    """A Market-layout folder of tiny JPEGs named ``PPPP_cCs1_NNNNNN_00.jpg``."""
    for sub, records in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        (root / sub).mkdir(parents=True)
        for i, (pid, cam) in enumerate(records):
            color = (pid * 40 % 256, cam * 70 % 256, i * 13 % 256)
            Image.new("RGB", (16, 32), color).save(root / sub / f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg")
    return root


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CHECKS and r.levelno >= logging.WARNING]


def _train(data: Path, out: Path, *overrides: str) -> int:
    argv = ["train", "--config", SMOKE, "--data-root", str(data), "--output", str(out), "--device", "cpu"]
    return cli.main([*argv, "data.dataset=folder", *overrides])


@pytest.fixture
def no_fit(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> list[list[str]]:
    """Replaces training by a stub that records the checks' lines logged before it was called."""
    seen: list[list[str]] = []

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
        seen.append(_warnings(caplog))
        return {"mAP": 0.0}

    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    return seen


def test_a_normal_folder_gives_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path, TRAIN, [(pid, 1) for pid in range(10, 16)])
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("error")
        ds = load_dataset("folder", data)
        PKSampler([pid for _, pid, _ in ds.train], p=4, k=4)
    assert check_split(ds) == [] and _warnings(caplog) == []


def test_the_synthetic_set_gives_no_warning(tiny_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = load_dataset("synthetic", tiny_data)
    assert check_split(ds) == [] and check_training([pid for _, pid, _ in ds.train], k=4) == []
    assert _warnings(caplog) == []


def test_queries_with_no_cross_camera_match_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gallery = [(pid, 2) for pid in range(10, 16)] + [(pid, 3) for pid in range(10, 14)]
    query = [(10, 1), (11, 1), (12, 1), (13, 1), (14, 2), (15, 2)]  # 14 and 15: only camera 2 in the gallery
    load_dataset("folder", _folder(tmp_path, TRAIN, query, gallery))
    (line,) = _warnings(caplog)
    assert "2 of 6 queries have no gallery image of their identity from another camera; the protocol drops them" in line
    assert "pid 14, 15" in line


def test_no_query_with_a_match_is_an_error(tmp_path: Path) -> None:
    data = _folder(tmp_path, TRAIN, [(pid, 1) for pid in range(20, 24)])  # identities absent from the gallery
    with pytest.raises(DatasetCheckError, match=r"none of the 4 queries has a gallery image .* from another camera"):
        load_dataset("folder", data)
    same_camera = [(10, 2), (11, 2), (12, 2), (13, 3)]  # each query's identity from its own camera only
    same_camera_data = _folder(tmp_path / "same", TRAIN, [(10, 2), (11, 2), (12, 2)], same_camera)
    with pytest.raises(DatasetCheckError, match=r"none of the 3 queries .*camera, so nothing can be evaluated"):
        load_dataset("folder", same_camera_data)


def test_one_camera_is_an_error(tmp_path: Path) -> None:
    one = [(pid, 1) for pid, _ in GALLERY]
    data = _folder(tmp_path, TRAIN, [(pid, 1) for pid in range(10, 16)], one)
    with pytest.raises(DatasetCheckError, match=r"every query and gallery image is from one camera \(c1\)"):
        load_dataset("folder", data)
    junk = _folder(tmp_path / "junk", TRAIN, [(-1, 1)])  # a query folder of junk only
    with pytest.raises(DatasetCheckError, match=r"no query image is left"):
        load_dataset("folder", junk)


def test_single_image_identities_and_k_above_the_median_warn(caplog: pytest.LogCaptureFixture) -> None:
    pids = [1, 2] + [pid for pid in range(3, 9) for _ in range(6)]  # two single-image ids, median 6
    PKSampler(pids, p=4, k=50)
    single, k = _warnings(caplog)
    assert single.startswith("2 of 8 training identities have a single image")
    assert "data.k=50 images per identity per batch" in k and "median training identity has 6 images" in k
    assert "about 8.3x" in k
    assert [f.level for f in check_training(pids, k=6)] == ["warning"]  # k at the median: no k warning


def test_the_error_comes_before_training_and_writes_nothing(
    tmp_path: Path, no_fit: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    data = _folder(tmp_path / "data", TRAIN, [(pid, 1) for pid in range(20, 24)])
    out = tmp_path / "run"
    assert _train(data, out) == cli.EXIT_BAD_INPUT
    assert no_fit == [] and not out.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "nothing can be evaluated" in errors[-1]


def test_the_warnings_come_before_training(
    tmp_path: Path, no_fit: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    gallery = [(pid, 2) for pid in range(10, 16)] + [(10, 3)]
    data = _folder(tmp_path / "data", TRAIN, [(10, 2), (11, 2), (12, 1)], gallery)
    assert _train(data, tmp_path / "run", "data.k=12") == 0
    (seen,) = no_fit
    assert any("1 of 3 queries have no gallery image" in line for line in seen)
    assert any("data.k=12" in line and "median training identity has 6 images" in line for line in seen)


def test_evaluate_says_how_many_queries_it_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    assert _train(_folder(tmp_path / "good", TRAIN, [(pid, 1) for pid in range(10, 16)]), run, *ONE_STEP, *SMALL) == 0
    assert _warnings(caplog) == []
    gallery = [rec for rec in GALLERY if rec != (15, 3)]  # identity 15 from camera 2 only
    partial = _folder(tmp_path / "partial", TRAIN, [(10, 1), (11, 1), (15, 2)], gallery)
    evaluate = ["evaluate", "--run", str(run), "--device", "cpu", "--dataset", "folder", "--data-root"]
    assert cli.main([*evaluate, str(partial), "--out", str(tmp_path / "partial.json")]) == 0
    assert any("1 of 3 queries have no gallery image" in line for line in _warnings(caplog))
    nomatch = _folder(tmp_path / "nomatch", TRAIN, [(pid, 1) for pid in range(20, 24)])
    assert cli.main([*evaluate, str(nomatch), "--out", str(tmp_path / "nomatch.json")]) == cli.EXIT_BAD_INPUT
    assert not (tmp_path / "nomatch.json").exists()
