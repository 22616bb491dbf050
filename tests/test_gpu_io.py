"""What a GPU user's runs read and write (issue 25, items 5-7): ImageNet weights by name, CUHK03-NP
from the original release, and TensorBoard event files beside log.jsonl. No network: the weight
names are resolved as a pure function, the .mat files are built here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from canlib import backbone as backbone_module
from canlib.backbone import IMAGENET_WEIGHTS, build_backbone, imagenet_weights, is_weights_name
from canlib.config import load_config
from canlib.engine.build import resolve_pretrained

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- item 5: weights by name
@pytest.mark.parametrize(
    ("name", "weights", "expected"),
    [
        ("resnet50", "imagenet-v1", tvm.ResNet50_Weights.IMAGENET1K_V1),
        ("resnet50", "imagenet-v2", tvm.ResNet50_Weights.IMAGENET1K_V2),
        ("resnet50", "imagenet", tvm.ResNet50_Weights.IMAGENET1K_V1),  # the alias: the paper's time
        ("resnet101", "imagenet-v2", tvm.ResNet101_Weights.IMAGENET1K_V2),
        ("resnet18", "imagenet", tvm.ResNet18_Weights.IMAGENET1K_V1),
    ],
)
def test_weight_names_resolve_to_torchvision_enums(name: str, weights: str, expected: object) -> None:
    assert imagenet_weights(name, weights) is expected


def test_the_alias_is_not_torchvisions_default() -> None:
    """``imagenet`` used to load ``DEFAULT`` (V2 for ResNet50); it is now pinned to V1."""
    assert tvm.ResNet50_Weights.DEFAULT is tvm.ResNet50_Weights.IMAGENET1K_V2
    assert imagenet_weights("resnet50", "imagenet") is not tvm.ResNet50_Weights.DEFAULT


def test_an_unknown_weights_name_is_refused_with_the_accepted_names() -> None:
    with pytest.raises(ValueError, match="unknown ImageNet weights 'imagenet-v3'") as info:
        imagenet_weights("resnet50", "imagenet-v3")
    assert all(name in str(info.value) for name in IMAGENET_WEIGHTS)
    with pytest.raises(ValueError, match="unknown ImageNet weights") as info:  # before any download or build
        build_backbone("resnet50", pretrained="imagenet-v3")
    assert "imagenet-v1" in str(info.value) and "imagenet-v2" in str(info.value)
    with pytest.raises(ValueError, match="unknown ImageNet weights"):
        build_backbone("timm:resnet18", pretrained="imagenet-1k")


def test_v2_is_refused_where_torchvision_has_only_v1() -> None:
    with pytest.raises(ValueError, match=r"no IMAGENET1K_V2 weights for resnet18.*it has: imagenet, imagenet-v1$"):
        imagenet_weights("resnet18", "imagenet-v2")


def test_torchvision_names_are_refused_for_a_timm_trunk() -> None:
    with pytest.raises(ValueError, match=r"names torchvision's weights.*'imagenet' \(timm's default tag\)"):
        build_backbone("timm:resnet18", pretrained="imagenet-v1")


def test_names_and_paths_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path is then found in the repository
    assert all(is_weights_name(name) for name in ("imagenet", "imagenet-v1", "imagenet-v2", "imagenet-v3"))
    assert not any(is_weights_name(p) for p in ("imagenet-v1.pth", "weights/imagenet", "resnet50.pth", None))
    assert resolve_pretrained("imagenet-v2") == "imagenet-v2"  # not looked up as a repository file
    assert resolve_pretrained("results/pretrained/slim-r18-os8.pt") == str(REPO / "results/pretrained/slim-r18-os8.pt")


def test_a_named_version_downloads_that_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache file of the named weights is the one read (V1's and V2's files differ)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(backbone_module, "_reachable", lambda url: pytest.fail(f"network touched: {url}"))
    reference = tvm.resnet18()
    cached = tmp_path / "checkpoints" / Path(tvm.ResNet18_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir()
    torch.save(reference.state_dict(), cached)
    net = build_backbone("resnet18", pretrained="imagenet-v1")
    torch.testing.assert_close(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_an_offline_local_file_still_works(tmp_path: Path) -> None:
    """The offline path: a local torchvision-format state dict, as ``model.pretrained=/path/to/file``."""
    torch.manual_seed(5)
    reference = tvm.resnet18()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    net = build_backbone("resnet18", pretrained=str(path))
    torch.testing.assert_close(net.stem.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize("dataset", ["market1501", "dukemtmc", "cuhk03np", "msmt17"])
def test_the_paper_profiles_use_v1(dataset: str) -> None:
    profile = REPO / "configs" / f"paper-{dataset}.yaml"
    pretrained = load_config(profile)["model"]["pretrained"]
    assert imagenet_weights("resnet50", pretrained) is tvm.ResNet50_Weights.IMAGENET1K_V1
    assert "IMAGENET1K_V1" in profile.read_text()  # and say so


# ------------------------------------------------------------------------------ item 6: CUHK03-NP from the .mat
def _write_cuhk03_mat(path: Path, variant: str, ids: int = 3) -> None:
    """A tiny cuhk-03.mat as MATLAB v7.3 stores it (HDF5): one camera pair of ``ids`` x 10 cells, each
    image (3, W, H) and filled with 10 * id + cell; cells 2-4 and 7-9 empty (MATLAB's empty cell)."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        cells = np.empty((10, ids), dtype=h5py.ref_dtype)  # MATLAB's (ids, 10), transposed by HDF5
        for pid in range(ids):
            for image in range(10):
                filled = image in (0, 1, 5, 6)
                data = np.full((3, 6, 12), 10 * pid + image, np.uint8) if filled else np.zeros(2, np.uint64)
                cells[image, pid] = f.create_dataset(f"img/{pid}/{image}", data=data).ref
        pairs = np.empty((1, 1), dtype=h5py.ref_dtype)
        pairs[0, 0] = f.create_dataset("pairs/0", data=cells).ref
        f.create_dataset(variant, data=pairs)


def _write_split_file(path: Path, ids: int = 3) -> list[str]:
    """The new protocol's split of the tiny set: id 1 trains (4 images), ids 2-3 are tested, one
    query each (its first camera's first image) and the other three images in the gallery."""
    import numpy as np
    from scipy.io import savemat

    names = [f"1_{pid + 1:03d}_{1 if i < 5 else 2}_{i + 1:02d}.png" for pid in range(ids) for i in (0, 1, 5, 6)]
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    split = {
        "filelist": filelist,
        "labels": np.repeat(np.arange(1, ids + 1), 4)[:, None],
        "train_idx": np.arange(1, 5)[:, None],
        "query_idx": np.array([[5], [9]]),
        "gallery_idx": np.array([[6], [7], [8], [10], [11], [12]]),
    }
    savemat(path, split)
    return names


def test_convert_cuhk03_command_writes_what_the_reader_loads(tmp_path: Path) -> None:
    import scipy  # noqa: F401  (a test dependency: missing, it fails)

    from canlib.cli import main
    from canlib.data import load_dataset
    from canlib.data.base import StatisticsMismatchWarning

    _write_cuhk03_mat(tmp_path / "cuhk-03.mat", "labeled")
    _write_split_file(tmp_path / "cuhk03_new_protocol_config_labeled.mat")
    argv = ["convert-cuhk03", "--mat", str(tmp_path / "cuhk-03.mat"), "--out", str(tmp_path / "reid")]
    with pytest.warns(StatisticsMismatchWarning):  # the reader's read-back: 3 ids, not 767 + 700
        assert main([*argv, "--splits", str(tmp_path / "cuhk03_new_protocol_config_labeled.mat")]) == 0
    folder = tmp_path / "reid" / "cuhk03-np" / "labeled"
    assert sorted(p.name for p in folder.iterdir()) == ["bounding_box_test", "bounding_box_train", "query"]
    assert sorted(p.name for p in (folder / "query").iterdir()) == ["0002_c1_1_002_1_01.png", "0003_c1_1_003_1_01.png"]
    assert not (tmp_path / "reid" / "cuhk03-np" / "detected").exists()  # only the variants given
    with pytest.warns(StatisticsMismatchWarning):
        ds = load_dataset("cuhk03", tmp_path / "reid", variant="labeled")
    assert (ds.num_train_pids, len(ds.train), len(ds.query), len(ds.gallery)) == (1, 4, 2, 6)
    assert {(pid, cam) for _, pid, cam in ds.gallery} == {(2, 0), (2, 1), (3, 0), (3, 1)}
    from PIL import Image

    image = Image.open(folder / "query" / "0003_c1_1_003_1_01.png")
    assert image.size == (6, 12) and image.getpixel((0, 0)) == (20, 20, 20)  # id 3 (index 2), cell 0


def test_convert_cuhk03_refuses_a_split_file_of_no_variant(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import scipy  # noqa: F401  (a test dependency: missing, it fails)

    from canlib.cli import main

    _write_cuhk03_mat(tmp_path / "cuhk-03.mat", "labeled")
    _write_split_file(tmp_path / "split.mat")
    argv = ["convert-cuhk03", "--mat", str(tmp_path / "cuhk-03.mat"), "--splits", str(tmp_path / "split.mat")]
    assert main([*argv, "--out", str(tmp_path / "reid")]) == 2
    assert "cannot tell the variant of the split file" in caplog.text and "labeled" in caplog.text
    assert not (tmp_path / "reid").exists()


# ------------------------------------------------------------------------------ item 7: TensorBoard event files
SMOKE = REPO / "configs" / "smoke.yaml"
LOSS_TAGS = {"loss/ce", "loss/triplet", "loss/center", "loss/total"}
EVAL_TAGS = {"eval/mAP", "eval/rank1", "eval/rank5", "eval/rank10", "eval/mINP"}


def _smoke(root: Path, *overrides: str) -> dict:
    """configs/smoke.yaml on the tiny set, one batch an epoch (its two epochs: two steps of events)."""
    return load_config(
        SMOKE, [f"data.root={root}", "data.verify_images=false", "train.max_batches_per_epoch=1", *overrides]
    )


def _events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's event files, read back as TensorBoard reads them (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    return {tag: [(e.step, e.value) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


def test_scalars_of_a_log_line_and_of_the_metrics() -> None:
    from canlib.engine.tensorboard_log import eval_scalars, line_scalars

    line = {"epoch": 3, "lr": 1e-3, "loss_ce": 2.0, "loss_total": 2.5, "images": 64, "seconds": 2.0}
    line |= {"images_per_s": 32.0, "eval": {"mAP": 0.5, "rank1": 0.6}}
    assert line_scalars(line) == {
        "loss/ce": 2.0,
        "loss/total": 2.5,
        "train/lr": 1e-3,
        "train/images_per_s": 32.0,
        "eval/mAP": 0.5,
        "eval/rank1": 0.6,
    }
    metrics = {"epoch": 8, "mAP": 0.4, "mINP": 0.2, "cmc": [0.5, 0.7], "ap": "step", "flip_tta": False}
    assert eval_scalars(metrics) == {"eval/mAP": 0.4, "eval/mINP": 0.2}


def test_a_smoke_run_writes_event_files_and_the_key_turns_them_off(tiny_data: Path, tmp_path: Path) -> None:
    import json

    from canlib.engine.trainer import train

    run = tmp_path / "run"
    metrics = train(_smoke(tiny_data, "train.eval_every=1"), run, device="cpu")
    events = _events(run)
    assert LOSS_TAGS | EVAL_TAGS | {"train/lr", "train/images_per_s"} <= set(events)
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    for tag in LOSS_TAGS:  # one point per epoch, the log's value (stored as float32)
        assert [s for s, _ in events[tag]] == [1, 2]
        assert [v for _, v in events[tag]] == pytest.approx([x[f"loss_{tag[5:]}"] for x in lines], rel=1e-6)
    assert events["eval/mAP"] == [(1, pytest.approx(lines[0]["eval"]["mAP"])), (2, pytest.approx(metrics["mAP"]))]

    # the key off, over the same folder: --overwrite clears the old events (RUN_ENTRIES) and none are written
    train(_smoke(tiny_data, "train.tensorboard=false", "optim.epochs=1"), run, device="cpu", overwrite=True)
    assert (run / "metrics.json").is_file() and not (run / "tensorboard").exists()


def test_the_key_does_not_change_the_hash_and_may_change_on_resume() -> None:
    from canlib.config import config_hash
    from canlib.engine.run_folder import RESUMABLE_CHANGES

    on, off = load_config(SMOKE), load_config(SMOKE, ["train.tensorboard=false"])
    assert on["train"]["tensorboard"] is True and config_hash(on) == config_hash(off)
    assert "train.tensorboard" in RESUMABLE_CHANGES


def test_a_resume_purges_the_steps_past_its_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    """A session that logged epoch 2 but died before its checkpoint: the resume logs epoch 2 again, and
    TensorBoard shows it once, as log.jsonl does (without purge_step it would hold steps 1, 2, 2)."""
    import json
    import shutil

    from canlib.engine.trainer import CHECKPOINT, train

    run, saved = tmp_path / "run", tmp_path / "epoch1.pt"
    train(_smoke(tiny_data, "optim.epochs=1"), run, device="cpu")
    shutil.copy(run / CHECKPOINT, saved)
    train(_smoke(tiny_data), run, device="cpu", resume=True)
    shutil.copy(saved, run / CHECKPOINT)  # the epoch-2 checkpoint "never came"
    train(_smoke(tiny_data), run, device="cpu", resume=True)
    events = _events(run)
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for tag in LOSS_TAGS:
        assert [s for s, _ in events[tag]] == [1, 2], tag
        assert [v for _, v in events[tag]] == pytest.approx([x[f"loss_{tag[5:]}"] for x in lines], rel=1e-6)
    assert [s for s, _ in events["eval/mAP"]] == [1, 2]  # the first session's final evaluation, then the last
