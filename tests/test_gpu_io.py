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
    with pytest.raises(ValueError, match="names torchvision's weights.*'imagenet' .timm's default tag."):
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
