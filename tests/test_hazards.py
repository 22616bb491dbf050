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
