"""ResNet backbone with a stride-1 layer 4 (Section 3.2.1).

The paper keeps layers 0-3 of an ImageNet ResNet50 unchanged and sets the stride
of layer 4's first bottleneck to 1, so that a 384x128 image gives a 2048x24x8
map instead of 2048x12x4. :func:`build_backbone` builds that network from
torchvision (``"resnet50"``) or timm (``"timm:resnet50"``) and splits it into

* ``stem``: conv1, bn1, relu, maxpool, layer1, layer2, layer3 (the paper's
  "layers 0-3"), shared by every branch of CAN;
* ``layer4``: copied once per branch by :class:`canlib.model.CAN`.

Weights: ``pretrained=None`` is random initialisation; a name of :data:`IMAGENET_WEIGHTS` asks the
library's weight registry (it works offline only when the file is already in the local cache and
fails fast otherwise); and a path loads a local torchvision-format ResNet state dict.

For torchvision's ResNets the names are ``"imagenet-v1"`` (``IMAGENET1K_V1``, the original weights,
76.1 % top-1 in torchvision's metadata, which the re-ID work of 2019-21, the paper's included,
started from) and ``"imagenet-v2"`` (``IMAGENET1K_V2``, torchvision 0.13's 2022 recipe, 80.9 %;
ResNet50, 101 and 152 only). ``"imagenet"`` is an alias of ``"imagenet-v1"``: the bare word
means what the papers meant by "ImageNet-pretrained", so the schema's default (the paper's
recipe) is the paper's trunk. Until this alias was pinned, ``"imagenet"`` loaded torchvision's
``DEFAULT``, which is V2 for ResNet50; no committed record used it (they train the synthetic proxy
from a local file or from scratch), so no record trains differently. For a timm backbone
``"imagenet"`` is timm's default tag, and the V1/V2 names are refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from canlib.files import load_tensors

__all__ = [
    "IMAGENET_WEIGHTS",
    "TORCHVISION_RESNETS",
    "Backbone",
    "build_backbone",
    "imagenet_weights",
    "is_weights_name",
    "load_resnet_state_dict",
]

log = logging.getLogger(__name__)

#: torchvision builders and weight enums, by name.
TORCHVISION_RESNETS: dict[str, tuple[Callable[..., nn.Module], Any]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights),
}
#: The names ``pretrained`` gives torchvision's ImageNet weights, and the weights enum member each means
#: (``"imagenet"``: an alias of V1, the weights of the paper's time; see the module's docstring).
IMAGENET_WEIGHTS: dict[str, str] = {
    "imagenet": "IMAGENET1K_V1",
    "imagenet-v1": "IMAGENET1K_V1",
    "imagenet-v2": "IMAGENET1K_V2",
}
_TIMM_PREFIX = "timm:"
_CONNECT_TIMEOUT_S = 5.0
_STEM_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")


class Backbone(nn.Module):
    """A ResNet cut into a shared stem (layers 0-3) and ``layer4``.

    Args:
        stem: conv1, bn1, relu, maxpool, layer1..layer3 as one ``nn.Sequential``.
        layer4: the last stage (stride already set by :func:`build_backbone`).
        out_channels: channels of the layer-4 map (2048 for ResNet50).
        output_stride: total down-sampling of the layer-4 map (16 with last stride 1).
        name: the name it was built from.
    """

    def __init__(
        self, stem: nn.Sequential, layer4: nn.Module, out_channels: int, output_stride: int, name: str = ""
    ) -> None:
        super().__init__()
        self.stem = stem
        self.layer4 = layer4
        self.out_channels = out_channels
        self.output_stride = output_stride
        self.name = name

    def forward_stem(self, x: Tensor) -> Tensor:
        """Layers 0-3: ``(B, 3, H, W) -> (B, C3, H/16, W/16)``."""
        return self.stem(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Layers 0-4: the layer-4 map, e.g. 2048x24x8 for a 384x128 ResNet50 input."""
        return self.layer4(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


# --------------------------------------------------------------------------- weights


def load_resnet_state_dict(net: nn.Module, path: str | os.PathLike) -> None:
    """Load a local torchvision-format ResNet state dict into ``net``.

    Every key of ``net`` except the classifier ``fc.*`` must be present with the
    same shape; ``fc.*`` keys of the file are ignored. A ``"state_dict"`` or
    ``"model"`` wrapper and a ``"module."`` prefix (DataParallel) are unwrapped.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the keys or shapes do not match the architecture, or the file is not a plain
            file of tensors (:class:`canlib.files.UnsafeFileError`: tampered or truncated).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file not found: {str(path)!r} (expected a torchvision-format "
            "ResNet state dict saved with torch.save(model.state_dict(), path))"
        )
    state = load_tensors(path, "a torchvision state dict")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "module.fc."))}
    target = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(k for k in target if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in target)
    wrong_shape = sorted(k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong_shape:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

        raise ValueError(
            f"the state dict in {str(path)!r} does not match this backbone: "
            f"missing keys [{show(missing)}]; unexpected keys [{show(unexpected)}]; "
            f"shape mismatches [{show(wrong_shape)}]. Is it a state dict of the same ResNet depth?"
        )
    net.load_state_dict(state, strict=False)
    log.info("loaded %d backbone tensors from %s", len(state), path)


def _offline_error(name: str, source: str, exc: BaseException | None = None) -> RuntimeError:
    reason = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return RuntimeError(
        f"could not download ImageNet weights for {name!r} from {source}: this machine looks offline "
        f"and the weights are not in the local cache{reason}. Pass a local file instead, "
        f'e.g. pretrained="/path/to/{name.removeprefix(_TIMM_PREFIX)}.pth" '
        "(a torchvision-format state dict saved with torch.save(model.state_dict(), path))."
    )


def _reachable(url: str) -> bool:
    """One quick TCP connection to ``url``'s host; skipped (assumed reachable) behind a proxy."""
    if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return True
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def is_weights_name(value: str | os.PathLike | None) -> bool:
    """Whether a ``pretrained`` value names ImageNet weights rather than a file: ``"imagenet"`` or
    ``"imagenet-<something>"``, without a folder or a suffix (``imagenet-v1.pth`` is a file)."""
    if not isinstance(value, str):
        return False
    return (value == "imagenet" or value.startswith("imagenet-")) and "/" not in value and "." not in value


def _check_weights_name(weights: str) -> None:
    if weights not in IMAGENET_WEIGHTS:
        raise ValueError(
            f"unknown ImageNet weights {weights!r}: use one of {', '.join(IMAGENET_WEIGHTS)} "
            "(imagenet = imagenet-v1), or the path of a local torchvision-format state dict"
        )


def imagenet_weights(name: str, weights: str) -> Any:
    """The torchvision weights enum member that ``weights`` (a name of :data:`IMAGENET_WEIGHTS`) means
    for backbone ``name``, e.g. ``("resnet50", "imagenet-v1") -> ResNet50_Weights.IMAGENET1K_V1``.

    Raises:
        ValueError: an unknown backbone or weights name (the accepted ones listed), or weights that
            torchvision does not have for this depth (ResNet18 and 34 have V1 only).
    """
    if name not in TORCHVISION_RESNETS:
        raise ValueError(f"no torchvision ImageNet weights for {name!r}; its ResNets: {sorted(TORCHVISION_RESNETS)}")
    _check_weights_name(weights)
    enum = TORCHVISION_RESNETS[name][1]
    member = IMAGENET_WEIGHTS[weights]
    if member not in enum.__members__:
        offered = [w for w, m in IMAGENET_WEIGHTS.items() if m in enum.__members__]
        raise ValueError(f"torchvision has no {member} weights for {name} ({weights!r}); it has: {', '.join(offered)}")
    return enum[member]


def _torchvision_imagenet(net: nn.Module, name: str, weights: Any) -> None:
    """Load the torchvision ``weights`` (an enum member) from the hub cache, or download them once."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if cached.is_file():
        state = torch.load(cached, map_location="cpu", weights_only=True)
    else:
        if not _reachable(weights.url):
            raise _offline_error(name, weights.url)
        try:
            with _socket_timeout(60.0):
                state = torch.hub.load_state_dict_from_url(weights.url, progress=False)
        except Exception as exc:  # URLError, timeouts, partial files: all mean "no weights"
            raise _offline_error(name, weights.url, exc) from exc
    net.load_state_dict(state)
    log.info("loaded torchvision ImageNet weights %s", weights)


def _timm_imagenet(model_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(pretrained=True)`` using the cache first, without hub retries."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"timm has no pretrained weights registered for {model_name!r}")
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(cached, str):
                overlay = {"file": cached}
                return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    url = cfg.url if isinstance(cfg.url, str) else ""  # timm also allows a (url, file) pair; no ResNet uses it
    source = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else url
    if source and not _reachable(source):
        raise _offline_error(_TIMM_PREFIX + model_name, source)
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as exc:
        raise _offline_error(_TIMM_PREFIX + model_name, source, exc) from exc


# --------------------------------------------------------------------------- surgery


def _set_last_stride(layer4: nn.Module, last_stride: int) -> None:
    """Set every stride-2 op of a layer's first block to ``last_stride`` (Section 3.2.1: layer 4).

    Covers the 3x3 (or first 1x1) convolution, the 1x1 down-sampling convolution,
    and the ``AvgPool2d`` of timm's "d" variants (replaced by identity). No dilation is
    added: the layer simply keeps its input's resolution, as the paper's layer 4 does.
    """
    if last_stride == 2:
        return
    first_block = next(iter(layer4.children()))
    for module in first_block.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)
        if isinstance(module, nn.Sequential):
            for idx, child in enumerate(module):
                if isinstance(child, nn.AvgPool2d) and child.stride not in (1, (1, 1)):
                    module[idx] = nn.Identity()


def _probe(stem: nn.Module, layer4: nn.Module, in_chans: int, size: int = 64) -> tuple[int, int, int]:
    """Stem height, layer-4 height and layer-4 channels for a ``size`` x ``size`` probe input."""
    modes = {m: m.training for m in (stem, layer4)}
    stem.eval()
    layer4.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, in_chans, size, size, device=next(stem.parameters()).device)
            h3 = stem(probe)
            h4 = layer4(h3)
    finally:
        for module, mode in modes.items():
            module.train(mode)
    return h3.shape[-2], h4.shape[-2], h4.shape[1]


def _split(net: nn.Module, name: str, last_stride: int, layer3_stride: int = 2) -> Backbone:
    """Cut a torchvision/timm ResNet into :class:`Backbone` and fix layer 4's (and layer 3's) stride."""
    relu = "relu" if hasattr(net, "relu") else "act1"  # torchvision / timm naming
    parts = [net.get_submodule(n) for n in ("conv1", "bn1", relu, "maxpool", "layer1", "layer2", "layer3")]
    stem = nn.Sequential(OrderedDict(zip(_STEM_NAMES, parts, strict=True)))
    layer4 = net.get_submodule("layer4")
    _set_last_stride(layer4, last_stride)
    _set_last_stride(net.get_submodule("layer3"), layer3_stride)
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    size = 64
    h3, h4, out_channels = _probe(stem, layer4, first_conv.in_channels, size)
    expected = h3 if last_stride == 1 else math.ceil(h3 / 2)
    if h4 != expected:
        raise NotImplementedError(
            f"could not set last_stride={last_stride} on {name!r}: layer 4 maps {h3} rows to {h4}, "
            f"expected {expected} (an unsupported down-sampling layer, e.g. anti-aliasing?)"
        )
    wanted = 32 // (2 if last_stride == 1 else 1) // (2 if layer3_stride == 1 else 1)
    if size // h4 != wanted:
        raise NotImplementedError(
            f"could not set layer3_stride={layer3_stride} on {name!r}: output stride {size // h4}, expected {wanted}"
        )
    return Backbone(stem, layer4, out_channels=out_channels, output_stride=size // h4, name=name)


def build_backbone(
    name: str = "resnet50",
    pretrained: str | os.PathLike | None = None,
    last_stride: int = 1,
    layer3_stride: int = 2,
    **kwargs: Any,
) -> Backbone:
    """Build a ResNet backbone with a configurable layer-4 stride (Section 3.2.1).

    Args:
        name: torchvision ``"resnet18" | "resnet34" | "resnet50" | "resnet101" |
            "resnet152"``, or a timm ResNet as ``"timm:<name>"`` (e.g. ``"timm:resnet50"``,
            ``"timm:resnet50d"``).
        pretrained: ``None`` for random initialisation; ``"imagenet-v1"`` or ``"imagenet-v2"``
            for torchvision's ``IMAGENET1K_V1`` / ``IMAGENET1K_V2`` weights, ``"imagenet"`` for V1
            (the weights of the paper's time; timm's default tag for a timm backbone), taken from
            the local cache or downloaded once; or the path of a local torchvision-format state
            dict (``fc.*`` ignored).
        last_stride: 1 (the paper) or 2 (the original ResNet).
        layer3_stride: 2 (the paper and the original ResNet) or 1, which halves the output
            stride again (8 with ``last_stride=1``): a small input then gives the layer-4 map
            of the paper's 384x128 input (192x64 -> 24x8). Used by the CPU proxy only.
        **kwargs: passed to the model constructor, e.g. ``channels=(32, 64, 128, 256)``
            for a slim ``timm:resnet*``.

    Returns:
        A :class:`Backbone`; a 384x128 input gives 2048x24x8 for ResNet50 with
        ``last_stride=1``.

    Raises:
        ValueError: unknown name, weights name or stride, or a state dict that does not match.
        FileNotFoundError: ``pretrained`` names a missing file.
        RuntimeError: ImageNet weights neither cached nor downloadable.
    """
    if last_stride not in (1, 2) or layer3_stride not in (1, 2):
        raise ValueError(f"last_stride and layer3_stride must be 1 or 2, got {last_stride!r}, {layer3_stride!r}")
    if name.startswith(_TIMM_PREFIX):
        import timm

        model_name = name[len(_TIMM_PREFIX) :]
        if not timm.is_model(model_name):
            raise ValueError(f"timm has no model called {model_name!r}")
        if is_weights_name(pretrained) and pretrained != "imagenet":
            _check_weights_name(str(pretrained))
            raise ValueError(
                f"{pretrained!r} names torchvision's weights: for {name!r} use 'imagenet' (timm's default tag), "
                f"or a torchvision backbone ({', '.join(TORCHVISION_RESNETS)}) with {pretrained!r}"
            )
        if pretrained == "imagenet":
            net = _timm_imagenet(model_name, kwargs)
        else:
            net = timm.create_model(model_name, pretrained=False, **kwargs)
    elif name in TORCHVISION_RESNETS:
        weights = imagenet_weights(name, str(pretrained)) if is_weights_name(pretrained) else None  # checked first
        net = TORCHVISION_RESNETS[name][0](weights=None, **kwargs)
        if weights is not None:
            _torchvision_imagenet(net, name, weights)
    else:
        raise ValueError(f"unknown backbone {name!r}; use one of {sorted(TORCHVISION_RESNETS)} or 'timm:<model name>'")
    if pretrained is not None and not is_weights_name(pretrained):  # a path
        load_resnet_state_dict(net, pretrained)
    backbone = _split(net, name, last_stride, layer3_stride)
    log.debug("built backbone %s: %d channels, output stride %d", name, backbone.out_channels, backbone.output_stride)
    return backbone
