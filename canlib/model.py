"""The Collaborative Attention Network (Sections 3.2-3.2.3, Figures 2-3).

Pipeline for the default ``parts=(1, 3, 5, 7)`` and a 384x128 image::

    stem (ResNet50 layers 0-3, shared)                    -> 1024 x 24 x 8
    one independent copy of layer 4 per branch (stride 1) -> 2048 x 24 x 8 each
    part1: ConcatPool(1)                  -> G                        1 feature
    partn: ConcatPool(1) and ConcatPool(n) -> G, n blocks -> CA -> n-1  1 + (n-1) features
    one shared 1x1 conv (4096 -> 256) [+ BN] on all 16 features    -> (B, 16, 256)
      (the clustering losses may see the features before that BN: ``CANOutput.pre_bn``)
    one cosine classifier per feature (training)                   -> (B, 16, num_classes)
    eval: the 16 embedded features concatenated                     -> (B, 4096)

Four global and twelve local 256-d features, as at the end of Section 3.2.3.

The same class expresses the strong baseline of Luo et al. (2019, "BoT"), the sanity check
before the paper's grid (``configs/bot-market1501.yaml``): ``parts=(1,)``, average pooling only
(``pool_ops="avg"``), no embedding layer (``embed_dim=None``: the 2048 pooled channels), a BN
without a learned shift (``embed_bn_bias=False``, BNNeck) and a bias-free linear classifier
(``classifier="linear"``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canlib.attention import CollaborativeAttention
from canlib.backbone import build_backbone
from canlib.pooling import POOLING_MODES, ConcatPool, pool_channels

__all__ = [
    "CAN",
    "CLASSIFIERS",
    "DESCRIPTOR_NORMS",
    "EMBED_BN_MODES",
    "CANBranch",
    "CANOutput",
    "CosineClassifier",
    "EmbeddingNeck",
    "build_classifier",
    "build_embedding",
    "can_resnet50",
    "count_features",
]

log = logging.getLogger(__name__)

#: How :meth:`CAN.descriptor` builds the test descriptor.
DESCRIPTOR_NORMS = ("none", "per_feature")

#: Batch norm after the shared embedding: one BN shared by all features (statistics over the
#: batch and every feature), one BN per feature, or none (the paper's literal 1x1 convolution).
EMBED_BN_MODES = ("shared", "per_feature", "none")

#: The classifier of each feature: the cosine classifier of Section 4.5, or a bias-free linear layer
#: (the strong baseline's, whose logits are scores, not cosines).
CLASSIFIERS = ("cosine", "linear")


class CANOutput(NamedTuple):
    """What :class:`CAN` returns in training mode.

    Attributes:
        features: ``(B, F, embed_dim)`` embedded features, after the embedding's BN (what the
            classifiers and the test descriptor see).
        logits: ``(B, F, num_classes)`` cosines in ``[-1, 1]``, unscaled (for the ID loss); with
            ``classifier="linear"`` the linear layer's scores.
        pre_bn: ``(B, F, embed_dim)`` the same features before the BN (equal to ``features``
            without BN); the BNNeck of Luo et al. (2019) feeds these to the triplet loss.
    """

    features: Tensor
    logits: Tensor
    pre_bn: Tensor | None = None


class CosineClassifier(nn.Module):
    """Fully connected layer on L2-normalised features and weights (Section 4.5).

    Returns ``cos(x, w_c)`` for every class ``c``, in ``[-1, 1]``. The paper does
    not give the scale such logits need before a softmax, so none is applied
    here: the loss multiplies by its scale. Weights start from
    ``N(0, 1/in_features)`` (rows of norm about 1); their norm does not change
    the output.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=in_features**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_features) -> (..., num_classes)`` cosines."""
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


def build_classifier(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """One feature's classifier: :class:`CosineClassifier`, or (``"linear"``) a bias-free
    ``nn.Linear`` with weights from ``N(0, 0.001^2)``, the strong baseline's initialisation."""
    if kind == "cosine":
        return CosineClassifier(in_features, num_classes)
    if kind == "linear":
        linear = nn.Linear(in_features, num_classes, bias=False)
        nn.init.normal_(linear.weight, std=0.001)
        return linear
    raise ValueError(f"unknown classifier {kind!r}; choose one of {CLASSIFIERS}")


def embed_bn_mode(batch_norm: str) -> str:
    """The ``embed_bn`` argument, checked: one of :data:`EMBED_BN_MODES`."""
    if batch_norm not in EMBED_BN_MODES:
        raise ValueError(f"unknown embed_bn {batch_norm!r}; choose one of {EMBED_BN_MODES}")
    return batch_norm


class EmbeddingNeck(nn.Module):
    """The shared 1x1 convolution of Section 3.2.3 (equations (3)-(4)) and the BN after it.

    The paper only says "1x1 convolution". ``batch_norm`` chooses what follows it:
    ``"shared"`` (default: one ``BatchNorm2d`` whose statistics are taken over the batch and
    all features at once, as the convolution is shared), ``"per_feature"`` (one BN per feature,
    as MGN gives each feature its own conv + BN), or ``"none"`` (the literal reading; the
    convolution then has a bias). No activation. :meth:`forward` returns the features before
    and after the BN, so a loss can choose either (the BNNeck of Luo et al. 2019).

    ``embed_dim=None`` leaves the convolution out: the pooled features themselves go to the BN
    (``out_dim = in_channels``), as in the strong baseline. ``bn_bias=False`` fixes the BN's shift
    at 0 (not trained), as the strong baseline's BNNeck does.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int | None = 256,
        num_features: int = 1,
        batch_norm: str = "shared",
        bn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.mode = embed_bn_mode(batch_norm)
        self.out_dim = in_channels if embed_dim is None else embed_dim
        self.conv: nn.Conv2d | None = None
        if embed_dim is not None:
            self.conv = nn.Conv2d(in_channels, embed_dim, kernel_size=1, bias=self.mode == "none")
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_in")
            if self.conv.bias is not None:
                nn.init.zeros_(self.conv.bias)
        self.bn: nn.BatchNorm1d | nn.BatchNorm2d | None = None
        if self.mode == "shared":
            self.bn = nn.BatchNorm2d(self.out_dim)
        elif self.mode == "per_feature":
            self.bn = nn.BatchNorm1d(self.out_dim * num_features)
        if not bn_bias:
            if self.bn is None:
                raise ValueError("bn_bias=False fixes the BN's shift, but batch_norm='none' has no BN")
            self.bn.bias.requires_grad_(False)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled ``(B, C_in, F, 1)`` -> ``(pre_bn, post_bn)``, each ``(B, F, out_dim)``."""
        z = pooled if self.conv is None else self.conv(pooled)  # (B, D, F, 1)
        if self.bn is None:  # mode "none"
            post = z
        elif self.mode == "shared":
            post = self.bn(z)
        else:  # "per_feature"
            b, d, f, _ = z.shape
            post = self.bn(z.reshape(b, d * f)).reshape(b, d, f, 1)  # channel d*f + i: feature i's BN
        return z.flatten(2).transpose(1, 2), post.flatten(2).transpose(1, 2)


def build_embedding(
    in_channels: int, embed_dim: int | None = 256, batch_norm: str = "shared", num_features: int = 1
) -> EmbeddingNeck:
    """:class:`EmbeddingNeck` (kept for callers of the earlier name)."""
    return EmbeddingNeck(in_channels, embed_dim, num_features, batch_norm)


def count_features(parts: Sequence[int], collaborative: bool = True) -> int:
    """Number of embedded features: 1 per global branch, ``1 + n - CA`` per ``part_n``."""
    return sum(1 if n == 1 else 1 + n - int(collaborative) for n in parts)


class CANBranch(nn.Module):
    """One branch of CAN: its own layer 4 and its pooling (Section 3.2.2, Figure 3).

    Args:
        layer4: this branch's copy of layer 4.
        parts: ``n``; 1 makes a global branch (block G only).
        collaborative: fuse the ``n`` part blocks into ``n - 1`` with
            :class:`~canlib.attention.CollaborativeAttention`.
        pooling: ``"paper"`` (equation (1)) or ``"adaptive"``.
        pool_ops: ``"max+avg"`` (Section 3.2.2), ``"avg"`` or ``"max"`` (:data:`canlib.pooling.POOL_OPS`).
        ca_fusion: how CA fuses two neighbours, ``"max"`` (the paper) or ``"mean"`` (the
            equal-capacity control, :mod:`canlib.attention`).
    """

    def __init__(
        self,
        layer4: nn.Module,
        parts: int,
        collaborative: bool = True,
        pooling: str = "paper",
        pool_ops: str = "max+avg",
        ca_fusion: str = "max",
    ) -> None:
        super().__init__()
        self.parts = parts
        self.collaborative = collaborative and parts > 1
        self.layer4 = layer4
        self.global_pool = ConcatPool(1, pooling, pool_ops)
        self.part_pool = ConcatPool(parts, pooling, pool_ops) if parts > 1 else None
        self.attention = CollaborativeAttention(ca_fusion) if self.collaborative else nn.Identity()
        num_local = 0 if parts == 1 else parts - int(self.collaborative)
        self.feature_suffixes = ["global"] + [f"local{k}" for k in range(num_local)]

    @property
    def num_features(self) -> int:
        return len(self.feature_suffixes)

    def forward_map(self, x: Tensor) -> Tensor:
        """Stem output -> this branch's layer-4 map."""
        return self.layer4(x)

    def pool(self, fmap: Tensor) -> Tensor:
        """Layer-4 map ``(B, C, H, W)`` -> ``(B, 2C, num_features, 1)`` (``C`` for one pool op): G, then the parts."""
        blocks = self.global_pool(fmap)
        if self.part_pool is not None:
            blocks = torch.cat([blocks, self.attention(self.part_pool(fmap))], dim=2)
        return blocks

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.forward_map(x))


class CAN(nn.Module):
    """Collaborative Attention Network (Li et al., 2021, Section 3.2).

    Args:
        num_classes: training identities (751 for Market-1501).
        parts: one branch per entry, each with its own layer-4 copy; 1 is the
            global branch. ``(1, 3, 5, 7)`` is the paper's model; see :data:`canlib.paper.PART_PATTERNS`.
        collaborative: apply collaborative attention (Table 3) or not (Table 2).
        backbone: name for :func:`canlib.backbone.build_backbone`.
        pretrained: ``None``, ``"imagenet-v1"``, ``"imagenet-v2"``, ``"imagenet"`` (= v1) or a local
            state-dict path (see :func:`canlib.backbone.build_backbone`).
        embed_dim: output size of the shared 1x1 embedding (256 in the paper); ``None``: no
            embedding layer, the pooled features themselves (the strong baseline's head).
        pooling: ``"paper"`` (equation (1)) or ``"adaptive"`` (PyTorch's windows).
        pool_ops: what a stripe's pooling keeps: ``"max+avg"`` concatenated (Section 3.2.2,
            the default), ``"avg"`` or ``"max"``.
        embed_bn: what follows the embedding convolution (:data:`EMBED_BN_MODES`). The paper
            says only "1x1 convolution"; one shared BN is our documented default.
        last_stride: stride of layer 4's first block (1 in the paper).
        layer3_stride: stride of layer 3's first block (2 in the paper; 1 gives a small
            input the paper's map height, see :func:`canlib.backbone.build_backbone`).
        backbone_kwargs: extra arguments for the backbone constructor.
        descriptor_norm: test descriptor. ``"none"`` (default) is the raw
            concatenation of the embedded features, so that the evaluator's cosine
            distance is taken over the whole ``F * embed_dim`` vector as Section 4.5
            reads; ``"per_feature"`` L2-normalises each feature first, so every
            feature weighs the same in that cosine.
        classifier: ``"cosine"`` (Section 4.5, the default) or ``"linear"`` (:data:`CLASSIFIERS`).
        embed_bn_bias: ``False`` fixes the shift of the BN after the embedding at 0 (BNNeck).
        ca_fusion: ``"max"`` (Section 3.2.2) or ``"mean"``: CA's slots filled by the mean of the same
            neighbours, the control of CA at equal descriptor size (:mod:`canlib.attention`).
    """

    def __init__(
        self,
        num_classes: int,
        parts: Sequence[int] = (1, 3, 5, 7),
        collaborative: bool = True,
        backbone: str = "resnet50",
        pretrained: str | os.PathLike | None = None,
        embed_dim: int | None = 256,
        pooling: str = "paper",
        embed_bn: str = "shared",
        last_stride: int = 1,
        layer3_stride: int = 2,
        backbone_kwargs: dict[str, Any] | None = None,
        descriptor_norm: str = "none",
        pool_ops: str = "max+avg",
        classifier: str = "cosine",
        embed_bn_bias: bool = True,
        ca_fusion: str = "max",
    ) -> None:
        super().__init__()
        parts = tuple(int(n) for n in parts)
        if not parts or any(n < 1 for n in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"parts must be distinct positive integers, got {parts!r}")
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLING_MODES}")
        if descriptor_norm not in DESCRIPTOR_NORMS:
            raise ValueError(f"unknown descriptor_norm {descriptor_norm!r}; choose one of {DESCRIPTOR_NORMS}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}; choose one of {CLASSIFIERS}")
        if num_classes < 1 or (embed_dim is not None and embed_dim < 1):
            raise ValueError(f"num_classes and embed_dim must be positive, got {num_classes}, {embed_dim}")
        self.num_classes = num_classes
        self.parts = parts
        self.collaborative = collaborative
        self.pooling = pooling
        self.descriptor_norm = descriptor_norm
        self.classifier = classifier

        base = build_backbone(
            backbone,
            pretrained=pretrained,
            last_stride=last_stride,
            layer3_stride=layer3_stride,
            **(backbone_kwargs or {}),
        )
        self.stem = base.stem
        self.output_stride = base.output_stride
        self.in_channels = pool_channels(base.out_channels, pool_ops)
        # Section 3.2.2: layer 4 is not shared; every copy starts from the same weights.
        branches = {
            f"part{n}": CANBranch(copy.deepcopy(base.layer4), n, collaborative, pooling, pool_ops, ca_fusion)
            for n in parts
        }
        self.branches = nn.ModuleDict(branches)
        self.feature_names = [f"{name}.{s}" for name, b in branches.items() for s in b.feature_suffixes]
        self.embedding = EmbeddingNeck(self.in_channels, embed_dim, len(self.feature_names), embed_bn, embed_bn_bias)
        self.embed_dim = self.embedding.out_dim
        self.global_indices = [i for i, n in enumerate(self.feature_names) if n.endswith(".global")]
        self.local_indices = [i for i, n in enumerate(self.feature_names) if not n.endswith(".global")]
        self.classifiers = nn.ModuleList(
            build_classifier(classifier, self.embed_dim, num_classes) for _ in self.feature_names
        )
        log.debug("CAN %s (CA=%s): %d features %s", parts, collaborative, self.num_features, self.feature_names)

    def named_branches(self) -> Iterator[tuple[str, CANBranch]]:
        """``("part1", branch), ("part3", branch), ...``: the branches in feature order."""
        for name, branch in self.branches.items():
            if not isinstance(branch, CANBranch):
                raise TypeError(f"CAN.branches[{name!r}] is a {type(branch).__name__}, not a CANBranch")
            yield name, branch

    @property
    def num_features(self) -> int:
        """``F``, the number of embedded features (16 for the paper's model)."""
        return len(self.feature_names)

    @property
    def descriptor_dim(self) -> int:
        """Size of the eval-mode descriptor, ``F * embed_dim`` (4096 by default)."""
        return self.num_features * self.embed_dim

    def min_input_height(self) -> int:
        """Smallest input height whose layer-4 map still has ``max(parts)`` rows."""
        return self.output_stride * (max(self.parts) - 1) + 1

    def _check_map_height(self, input_height: int, map_height: int) -> None:
        largest = max(self.parts)
        if map_height < largest:
            raise ValueError(
                f"input too short: an input of height {input_height} gives a layer-4 map of height "
                f"{map_height}, but the largest part branch (part{largest}) cuts it into {largest} stripes "
                f"and equation (1) needs map height >= {largest}. With output stride {self.output_stride} "
                f"(height/{self.output_stride}) the input must be at least {self.min_input_height()} pixels high "
                f"(e.g. {self.output_stride * largest}); use a taller input or fewer parts."
            )

    def feature_maps(self, x: Tensor) -> dict[str, Tensor]:
        """Each branch's layer-4 map (2048x24x8 at 384x128), keyed ``"part1"``, ``"part3"``, ..."""
        # Every stride-2 op of a ResNet maps h rows to ceil(h / 2): check before any work
        # (and before batch norm updates its statistics), then again on the real map.
        self._check_map_height(x.shape[-2], math.ceil(x.shape[-2] / self.output_stride))
        shared = self.stem(x)
        maps = {name: branch.forward_map(shared) for name, branch in self.named_branches()}
        self._check_map_height(x.shape[-2], next(iter(maps.values())).shape[-2])
        return maps

    def forward_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(B, 3, H, W)`` -> embedded features before and after the BN, each ``(B, F, E)``."""
        maps = self.feature_maps(x)
        # (B, 2C, F, 1): every pooled feature of every branch, so that the shared
        # 1x1 convolution embeds all F of them in one call.
        pooled = torch.cat([branch.pool(maps[name]) for name, branch in self.named_branches()], dim=2)
        return self.embedding(pooled)

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the layers a pre-trained trunk lacks: the embedding (and its BN) and the classifiers."""
        return [*self.embedding.parameters(), *self.classifiers.parameters()]

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> embedded features ``(B, F, embed_dim)`` (equation (3))."""
        return self.forward_embedding(x)[1]

    def forward_head(self, features: Tensor) -> Tensor:
        """Embedded features ``(B, F, E)`` -> logits ``(B, F, num_classes)`` (cosines for the cosine classifier)."""
        return torch.stack([clf(features[:, i]) for i, clf in enumerate(self.classifiers)], dim=1)

    def descriptor(self, features: Tensor) -> Tensor:
        """Embedded features ``(B, F, E)`` -> test descriptor ``(B, F * E)`` (see ``descriptor_norm``)."""
        if self.descriptor_norm == "per_feature":
            features = F.normalize(features, dim=-1)
        return features.flatten(1)

    def forward(self, x: Tensor) -> CANOutput | Tensor:
        """Training: :class:`CANOutput`; evaluation: the descriptor ``(B, F * embed_dim)``."""
        pre_bn, features = self.forward_embedding(x)
        if self.training:
            return CANOutput(features=features, logits=self.forward_head(features), pre_bn=pre_bn)
        return self.descriptor(features)


def can_resnet50(num_classes: int, pretrained: str | os.PathLike | None = None, **kwargs: Any) -> CAN:
    """The paper's model: ResNet50 with a stride-1 layer 4, Part-1,3,5,7 with collaborative
    attention, the 256-d shared embedding (16 features). ``kwargs`` override any :class:`CAN`
    argument, e.g. ``parts=(1, 2, 3), collaborative=False`` for Table 2's MGN-like row."""
    args: dict[str, Any] = {
        "parts": (1, 3, 5, 7),
        "collaborative": True,
        "backbone": "resnet50",
        "last_stride": 1,
        "embed_dim": 256,
        "pooling": "paper",
    }
    args.update(kwargs)
    return CAN(num_classes, pretrained=pretrained, **args)
