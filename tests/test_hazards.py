"""Issue 23's remaining hazards: every destination is checked before any work, and a wrong
argument names the option it came from. Each test fails on the code before the fix."""

from __future__ import annotations

import pytest

from canlib import cli
from canlib.data.datasets import DATASETS


@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if a command starts its work (so a refusal is shown to come first)."""

    def work(*args, **kwargs):
        raise AssertionError("the command started its work before checking its destination")

    for name in ("export_weights", "export_run", "evaluate_run"):
        monkeypatch.setattr(cli, name, work)


@pytest.mark.parametrize("out", ["/proc/can.pt", "{tmp}"])
def test_export_refuses_an_unwritable_destination_first(tmp_path, caplog, no_work, out):
    out = out.format(tmp=tmp_path)  # /proc: not writable even for root; tmp_path: a folder, not a file
    assert cli.main(["export", "--run", str(tmp_path / "run"), "--out", out]) == cli.EXIT_BAD_INPUT
    assert f"cannot write {out}" in caplog.text and "Traceback" not in caplog.text


def test_export_onnx_refuses_an_existing_folder_first(tmp_path, caplog, no_work):
    (tmp_path / "model.onnx").mkdir()
    args = ["export", "--run", str(tmp_path / "run"), "--onnx", str(tmp_path / "model.onnx")]
    assert cli.main(args) == cli.EXIT_BAD_INPUT
    assert "model.onnx: it is a folder" in caplog.text


def test_evaluate_checks_where_it_records_before_evaluating(tmp_path, caplog, no_work):
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluations").write_text("")  # a file where the folder of evaluations goes
    assert cli.main(["evaluate", "--run", str(run)]) == cli.EXIT_BAD_INPUT
    assert "evaluations" in caplog.text and "pass --out FILE" in caplog.text


def test_evaluate_names_the_dataset_option_and_the_readers(tmp_path, caplog, no_work):
    assert cli.main(["evaluate", "--run", str(tmp_path), "--dataset", "viper", "--data-root", "x"]) == 2
    assert "--dataset 'viper' is not a data set canlib reads" in caplog.text
    assert all(name in caplog.text for name in DATASETS)


def test_an_empty_layout_folder_is_named(tmp_path):
    from canlib.data import load_dataset
    from canlib.data.base import DatasetLayoutError

    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (tmp_path / folder).mkdir()
    with pytest.raises(DatasetLayoutError, match=r"bounding_box_train holds no usable image"):
        load_dataset("folder", tmp_path)


def test_sixteen_bit_grayscale_is_scaled_not_clipped_and_said_once(tmp_path, caplog):
    import logging

    import numpy as np
    from PIL import Image

    from canlib.data.base import read_image

    Image.fromarray(np.full((8, 4), 0x8000, dtype=np.uint16)).save(tmp_path / "g16.png")  # mid-grey in 16 bits
    assert np.asarray(read_image(tmp_path / "g16.png")).max() == 0x80  # PIL's own convert gives 255: all white
    Image.fromarray(np.zeros((8, 4), dtype=np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(OSError, match=r"i32\.tif.*32-bit"):
        read_image(tmp_path / "i32.tif")
    from canlib.data.base import ReIDDataset

    images = [tmp_path / "g16.png"]
    Image.fromarray(np.zeros((8, 4, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    images.append(tmp_path / "rgba.png")
    Image.new("RGB", (4, 8)).save(tmp_path / "rgb.png")
    data = ReIDDataset([(str(p), i, 0) for i, p in enumerate(images)], [(str(tmp_path / "rgb.png"), 0, 0)], [])
    with caplog.at_level(logging.INFO, logger="canlib.data.base"):
        data.verify_images()
    (line,) = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert "1 16-bit grayscale" in line and "1 RGBA" in line
