"""ONNX export with its parity check, safe checkpoint loading, cross-data set evaluation, bad input."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from canlib.__main__ import main
from canlib.config import load_config
from canlib.engine.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from canlib.engine.trainer import Trainer, train

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


class _Marker:
    """Unpickling this object opens (creates) a file: what a crafted checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def crafted_file(path: Path, marker: Path) -> Path:
    """A torch.save file that looks like a checkpoint but runs code when fully unpickled."""
    torch.save({"epoch": 1, "model": {"w": torch.zeros(2)}, "rng": _Marker(marker)}, path)
    return path


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> Path:
    """A one-epoch smoke run (one batch): enough for export and evaluation."""
    out = tmp_path_factory.mktemp("export") / "run"
    cfg = load_config(SMOKE, [f"data.root={tiny_data}", "optim.epochs=1", "train.max_batches_per_epoch=1"])
    train(cfg, out, device="cpu")
    return out


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """A second synthetic set (another seed): the target of a cross-data set evaluation."""
    from canlib.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic-other")
    make_synthetic(root, ids=12, seed=11, images_per_id=5)
    return root


# ---------------------------------------------------------------------------- checkpoints


def test_rng_states_survive_a_weights_only_file_exactly(tmp_path):
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    random.gauss(0, 1)  # cached Gaussians are part of the state
    np.random.standard_normal()
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(0)  # scramble, then restore from the file
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert again == expected


def test_a_training_checkpoint_is_tensors_and_plain_data(run):
    state = torch.load(checkpoint_path(run), weights_only=True)  # raises on any other object
    assert state["epoch"] == 1 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert not list(run.glob("checkpoints/*.tmp"))


def test_a_crafted_checkpoint_is_refused_without_running_code(run, tmp_path):
    marker = tmp_path / "marker"
    evil = crafted_file(tmp_path / "last.pt", marker)
    torch.load(shutil.copy(evil, tmp_path / "copy.pt"), weights_only=False)  # the unsafe way runs it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"last\.pt: refused.*would call io\.open"):  # ... ours does not
        load_checkpoint(evil)
    trainer = Trainer.from_config(load_config(run / "config.yaml"), tmp_path / "resumed", device="cpu")
    with pytest.raises(CheckpointError, match=str(evil)):
        trainer.load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, problem",
    [("missing", "no such file"), ("empty", "empty"), ("truncated", "truncated or not a PyTorch file")],
)
def test_damaged_checkpoints_name_the_file_and_the_problem(run, tmp_path, damage, problem):
    path = tmp_path / f"{damage}.pt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        data = checkpoint_path(run).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path.name}.*{problem}"):
        load_checkpoint(path)


def test_save_checkpoint_names_an_unwritable_path(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match=r"cannot write .*file/ckpt\.pt"):
        save_checkpoint({"x": 1}, tmp_path / "file" / "ckpt.pt")


# ---------------------------------------------------------------------------- ONNX


def test_onnx_export_matches_pytorch_on_the_data_set(run, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    from canlib.engine.weights import model_from_checkpoint

    out = tmp_path / "can.onnx"
    assert main(["export", "--run", str(run), "--onnx", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] > 0 and report["opset"] == 18
    assert report["max_abs_diff"] <= 1e-4 and report["min_cosine"] >= 0.9999
    assert report["mAP_torch"] == pytest.approx(report["mAP_onnx"], abs=1e-9)
    assert report["rank1_torch"] == pytest.approx(report["rank1_onnx"], abs=1e-9)

    graph = onnx.load(out)
    assert graph.opset_import[0].version == 18 and graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    model, _ = model_from_checkpoint(load_config(run / "config.yaml"), checkpoint_path(run))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis is dynamic
        images = torch.randn(batch, 3, 128, 64)
        with torch.no_grad():
            expected = model.descriptor(model.forward_features(images)).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        assert got.shape == (batch, model.descriptor_dim) and np.abs(got - expected).max() <= 1e-4


def test_parity_check_fails_loudly_beyond_its_bounds():
    from canlib.engine.onnx_export import ParityError, check_parity

    good = {
        "onnx": "m.onnx",
        "max_abs_diff": 1e-6,
        "min_cosine": 1.0,
        "mAP_torch": 0.5,
        "mAP_onnx": 0.5,
        "rank1_torch": 0.5,
        "rank1_onnx": 0.5,
        "mINP_torch": 0.2,
        "mINP_onnx": 0.2,
    }
    check_parity(good)
    with pytest.raises(ParityError, match=r"max abs difference.*min cosine.*mAP"):
        check_parity({**good, "max_abs_diff": 1e-3, "min_cosine": 0.99, "mAP_onnx": 0.49})


# ---------------------------------------------------------------------------- cross-data set


def test_cross_dataset_evaluation_through_the_cli(run, other_data, tiny_data, capsys):
    from canlib.engine.evaluate import evaluation_path

    argv = [
        "evaluate",
        "--run",
        str(run),
        "--dataset",
        "synthetic",
        "--data-root",
        str(other_data),
        "--device",
        "cpu",
        "--flip-tta",
        "--rerank",
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    recorded = list((run / "evaluations").glob("synthetic-*.json"))  # recorded in the run folder by default
    assert len(recorded) == 1
    record = json.loads(recorded[0].read_text())
    ev = record["evaluation"]
    assert ev["target"] == {"dataset": "synthetic", "root": str(other_data), "split": "test", "options": {}}
    assert ev["source"]["root"] == str(tiny_data) and ev["checkpoint"] == str(checkpoint_path(run))
    assert ev["options"]["flip_tta"] is True and ev["options"]["rerank"] is True
    # the classifier keeps the source's identities; the images are the target's
    assert ev["source"]["num_train_pids"] == torch.load(checkpoint_path(run))["model"]["classifiers.0.weight"].shape[0]
    own = json.loads((run / "metrics.json").read_text())
    assert printed["num_query"] != own["num_query"] and printed["mAP"] == record["mAP"]
    assert len(record["record"]["config_hash"]) == 12 and "cmc" in record
    other_options = {**ev, "options": {**ev["options"], "rerank": False}}
    assert evaluation_path(run, {**record, "evaluation": other_options}) != recorded[0]


# ---------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def other_parts_run(run, tmp_path_factory) -> Path:
    """The run's checkpoint beside a configuration with other parts."""
    bad = tmp_path_factory.mktemp("bad") / "run"
    shutil.copytree(run, bad)
    cfg = yaml.safe_load((bad / "config.yaml").read_text())
    cfg["model"]["parts"] = [1, 3]
    (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    return bad


def _bad_inputs(run: Path, other_parts_run: Path, other_data: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "file").write_text("")
    evil = crafted_file(tmp / "evil.pt", tmp / "marker")
    onnx = ["--onnx", str(tmp / "x.onnx")]
    return {
        "evaluate: no run folder": (["evaluate", "--run", str(tmp / "nope")], "nope does not exist"),
        "evaluate: wrong root": (
            ["evaluate", "--run", str(run), "--dataset", "market1501", "--data-root", str(tmp / "nowhere")],
            "bounding_box_test",
        ),
        "evaluate: unknown data set": (
            ["evaluate", "--run", str(run), "--dataset", "imagenet", "--data-root", str(other_data)],
            "--dataset .imagenet. is not a data set canlib reads",
        ),
        "evaluate: other parts": (
            ["evaluate", "--run", str(other_parts_run), "--device", "cpu", "--force"],  # past the hash check
            r"do not fit .*parts \[1, 3\].*parts \[1, 3, 5, 7\]",
        ),
        "evaluate: tampered": (
            ["evaluate", "--run", str(run), "--checkpoint", str(evil), "--device", "cpu"],
            "evil.pt: refused",
        ),
        "export: no run folder": (["export", "--run", str(tmp / "nope"), *onnx], "nope does not exist"),
        "export: wrong root": (
            ["export", "--run", str(run), "--data-root", str(tmp / "nowhere"), *onnx],
            "not a directory",
        ),
        "export: other parts": (["export", "--run", str(other_parts_run), "--force", *onnx], "do not fit"),
        "export: unwritable": (
            ["export", "--run", str(run), "--onnx", str(tmp / "file" / "x.onnx"), "--no-check"],
            r"cannot write .*file/x\.onnx",
        ),
        "export: two runs": (["export", "--run", str(run), "--run", str(run), *onnx], "one run"),
    }


def test_bad_input_gives_one_line_and_exit_code_2(run, other_parts_run, other_data, tmp_path, caplog):
    cases = _bad_inputs(run, other_parts_run, other_data, tmp_path)
    for name, (argv, message) in cases.items():
        caplog.clear()
        assert main(argv) == 2, name
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0], (name, errors)
        assert re.search(message, errors[0]), (name, errors[0])
    assert not (tmp_path / "marker").exists() and not (tmp_path / "x.onnx").exists()
