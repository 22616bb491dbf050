"""Exported weights: a finished run's network, without the training state, loads back for inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canlib.config import RunSections, config_hash, load_config
from canlib.engine.build import build_dataset, build_loaders
from canlib.engine.checkpoint import CheckpointError, checkpoint_path
from canlib.engine.trainer import Trainer, train
from canlib.engine.weights import export_weights, load_trained

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("weights") / "run"
    train(load_config(SMOKE, [f"data.root={tiny_data}"]), run, device="cpu")
    return run


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_exported_model_gives_the_trained_descriptors(finished_run, tmp_path, dtype):
    path = export_weights(finished_run, tmp_path / "w.pt", dtype=dtype)
    assert path.stat().st_size < checkpoint_path(finished_run).stat().st_size
    model, meta = load_trained(path)
    assert not model.training and meta["epoch"] == 2 and meta["metrics"]["mAP"] >= 0
    assert meta["record"]["config_hash"] == config_hash(meta["config"]) and meta["config"]["data"]["root"]

    trainer = Trainer.from_config(meta["config"], tmp_path / "again", device="cpu")
    trainer.load_checkpoint(checkpoint_path(finished_run))
    reference = trainer.model.eval()
    data = RunSections.from_config(meta["config"]).data
    _, query_loader, _ = build_loaders(data, build_dataset(data), seed=0)
    images = next(iter(query_loader))[0][:4]
    with torch.no_grad():
        a, b = reference(images), model(images)
    tol = 0 if dtype is None else 2e-2
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


def test_export_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoints/last\.pt"):
        export_weights(tmp_path, tmp_path / "w.pt")


def test_load_rejects_other_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="exported weights"):
        load_trained(tmp_path / "x.pt")


def test_export_cli_by_run_folder_and_by_ablation_row(finished_run, tmp_path, tiny_data):
    from canlib.__main__ import main
    from canlib.config import config_hash
    from canlib.lab.rows import ablation_rows, resolve

    out = tmp_path / "by-run.pt"
    assert main(["export", "--run", str(finished_run), "--out", str(out), "--dtype", "float32"]) == 0
    assert load_trained(out)[1]["epoch"] == 2

    # --row resolves the run folder from the profile, the row and the seed, as the grid names it
    row = next(r for r in ablation_rows(["Table 3"]) if r.label == "Part-1,3,5,7")
    run_name = config_hash(resolve(SMOKE, row, 0, tiny_data))
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / run_name).symlink_to(finished_run, target_is_directory=True)
    args = [
        "export",
        "--config",
        str(SMOKE),
        "--data-root",
        str(tiny_data),
        "--seed",
        "0",
        "--runs",
        str(runs),
        "--out-dir",
        str(tmp_path / "w"),
        "--row",
        "Table 3:Part-1,3,5,7",
    ]
    assert main(args) == 0
    assert (tmp_path / "w" / f"{run_name}.pt").is_file()


def test_export_cli_reports_bad_input(tmp_path, caplog):
    from canlib.__main__ import main

    assert main(["export"]) == 2
    assert main(["export", "--row", "Table 3:Part-1,3,5,7"]) == 2
    assert "needs --config" in caplog.text
    assert main(["export", "--config", str(SMOKE), "--data-root", str(tmp_path), "--row", "Table 9:x"]) == 2
    assert "unknown row" in caplog.text
    assert main(["export", "--run", str(tmp_path)]) == 2
    assert "checkpoints/last.pt" in caplog.text


class _Marker:
    """Unpickling this object opens (creates) a file: what a crafted weights file could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_load_trained_refuses_a_crafted_file_without_running_code(finished_run, tmp_path, caplog):
    from canlib.__main__ import main

    payload = torch.load(export_weights(finished_run, tmp_path / "w.pt"), weights_only=True)
    marker = tmp_path / "marker"
    torch.save({**payload, "record": _Marker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused.*would call io\.open"):
        load_trained(tmp_path / "evil.pt")
    args = ["evaluate", "--run", str(finished_run), "--checkpoint", str(tmp_path / "evil.pt"), "--device", "cpu"]
    assert main(args) == 2 and "evil.pt: refused" in caplog.text
    assert not marker.exists()


def test_weights_that_do_not_fit_their_configuration_are_refused(finished_run, tmp_path):
    payload = torch.load(export_weights(finished_run, tmp_path / "w.pt"), weights_only=True)
    payload["config"]["model"]["parts"] = [1, 3]
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: its weights do not fit .*parts \[1, 3\]"):
        load_trained(tmp_path / "other.pt")


def test_an_exported_file_evaluates_like_the_run(finished_run, tmp_path, capsys):
    import json

    from canlib.__main__ import main

    path = export_weights(finished_run, tmp_path / "w.pt", dtype=None)
    args = [
        "evaluate",
        "--run",
        str(finished_run),
        "--checkpoint",
        str(path),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "e.json"),
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == json.loads((finished_run / "metrics.json").read_text())["mAP"]
