"""ResNet backbone with a stride-1 layer 4 and its weight loading (Section 3.2.1)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
import torchvision.models as tvm
from torch import nn

import canlib.backbone as backbone_module
from canlib.backbone import Backbone, build_backbone

SLIM_TIMM = {"channels": (16, 32, 64, 128)}


@pytest.fixture(scope="module")
def resnet50() -> Backbone:
    return build_backbone("resnet50").eval()


def test_resnet50_last_stride_1_gives_2048x24x8(resnet50: Backbone) -> None:
    with torch.no_grad():
        fmap = resnet50.forward_features(torch.randn(1, 3, 384, 128))
    assert fmap.shape == (1, 2048, 24, 8)
    assert resnet50.out_channels == 2048
    assert resnet50.output_stride == 16


def test_stem_is_layers_0_to_3(resnet50: Backbone) -> None:
    assert list(resnet50.stem._modules) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    first = resnet50.layer4[0]
    assert first.conv2.stride == (1, 1)
    assert first.downsample[0].stride == (1, 1)


@pytest.mark.parametrize("last_stride,expected", [(1, (8, 4)), (2, (4, 2))])
def test_last_stride_option(last_stride: int, expected: tuple[int, int]) -> None:
    net = build_backbone("resnet18", last_stride=last_stride).eval()
    with torch.no_grad():
        stem = net.forward_stem(torch.randn(1, 3, 128, 64))
        fmap = net.layer4(stem)
    assert stem.shape == (1, 256, 8, 4)
    assert fmap.shape[-2:] == expected
    assert net.out_channels == 512
    assert net.output_stride == 16 * last_stride


def test_resnet34_channels() -> None:
    assert build_backbone("resnet34").out_channels == 512


def test_build_leaves_train_mode_and_running_stats_alone() -> None:
    net = build_backbone("resnet18")
    assert all(m.training for m in net.modules())
    assert torch.all(net.stem.bn1.running_mean == 0)
    assert int(net.stem.bn1.num_batches_tracked) == 0


@pytest.mark.parametrize(
    "name,kwargs,channels",
    [
        ("timm:resnet18", SLIM_TIMM, 128),
        ("timm:resnet50", SLIM_TIMM, 512),
        ("timm:resnet50d", SLIM_TIMM, 512),
    ],
)
def test_timm_backbones_have_last_stride_1(name: str, kwargs: dict, channels: int) -> None:
    net = build_backbone(name, **kwargs).eval()
    with torch.no_grad():
        fmap = net(torch.randn(1, 3, 128, 64))
    assert fmap.shape == (1, channels, 8, 4)
    assert net.output_stride == 16
    assert not any(isinstance(m, nn.AvgPool2d) for m in net.layer4.modules())


def test_unknown_names_and_strides() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="timm has no model"):
        build_backbone("timm:not_a_model")
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone("resnet18", last_stride=3)


# ------------------------------------------------------------------ weights


@pytest.fixture()
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    return tmp_path


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet18"])
def test_offline_imagenet_fails_fast_and_names_a_local_file(
    name: str, empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backbone_module, "_reachable", lambda url: False)
    with pytest.raises(RuntimeError, match="offline") as info:
        build_backbone(name, pretrained="imagenet")
    assert "local file" in str(info.value)
    assert 'pretrained="/path/to/resnet18.pth"' in str(info.value)


def test_failed_download_is_wrapped(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(backbone_module, "_reachable", lambda url: True)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(RuntimeError, match="local file"):
        build_backbone("resnet18", pretrained="imagenet")


def test_cached_imagenet_weights_are_used_without_network(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tvm.resnet18()
    cached = empty_hub_cache / "checkpoints" / Path(tvm.ResNet18_Weights.DEFAULT.url).name
    cached.parent.mkdir()
    torch.save(reference.state_dict(), cached)
    monkeypatch.setattr(backbone_module, "_reachable", lambda url: pytest.fail("network touched"))
    net = build_backbone("resnet18", pretrained="imagenet")
    torch.testing.assert_close(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


@pytest.fixture()
def resnet18_file(tmp_path: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(123)
    reference = tvm.resnet18()
    with torch.no_grad():
        reference.bn1.running_mean.uniform_()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet18"])
def test_local_state_dict_sets_the_weights(name: str, resnet18_file: tuple[Path, nn.Module]) -> None:
    path, reference = resnet18_file
    net = build_backbone(name, pretrained=path)
    torch.testing.assert_close(net.stem.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(net.stem.bn1.running_mean, reference.bn1.running_mean)
    torch.testing.assert_close(net.stem.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    torch.testing.assert_close(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_wrapped_state_dict_with_module_prefix(resnet18_file: tuple[Path, nn.Module], tmp_path: Path) -> None:
    _, reference = resnet18_file
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    net = build_backbone("resnet18", pretrained=str(path))
    torch.testing.assert_close(net.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_mismatched_state_dict(resnet18_file: tuple[Path, nn.Module]) -> None:
    path, _ = resnet18_file
    with pytest.raises(ValueError, match="does not match"):
        build_backbone("resnet34", pretrained=path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("resnet18", pretrained=tmp_path / "nope.pth")


@pytest.fixture()
def unreachable_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """No proxy variables and a socket stub that refuses every connection, recording each attempt:
    no test here opens a real connection."""
    calls: list[tuple] = []

    def unreachable(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    for key in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(backbone_module.socket, "create_connection", unreachable)
    return calls


def test_the_reachability_probe_opens_one_bounded_connection_and_trusts_a_proxy(
    unreachable_network: list[tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = tvm.ResNet18_Weights.DEFAULT.url
    assert backbone_module._reachable(url) is False
    assert unreachable_network == [(("download.pytorch.org", 443), backbone_module._CONNECT_TIMEOUT_S)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert backbone_module._reachable(url) is True and len(unreachable_network) == 1  # behind a proxy: no probe


def test_an_unreachable_host_fails_through_the_real_code_path(
    empty_hub_cache: Path, unreachable_network: list[tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_backbone's own path, from the probe up, with the connection refused by the stub."""
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(RuntimeError, match="local file"):
        build_backbone("resnet18", pretrained="imagenet")
    assert len(unreachable_network) == 1  # the probe asked once
