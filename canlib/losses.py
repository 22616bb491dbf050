"""The losses of Section 3.3: L = L_CE + L_triplet + lambda * L_C (equation 5).

Shapes: ``features`` (B, F, D) are the F embedded features of each image (or (B, D) for
one), ``logits`` (B, F, C) are the per-feature cosine-classifier outputs (cosines in
[-1, 1], no scale), ``pids`` (B,) are class indices in [0, C).

Choices where the paper is silent (each an argument, defaults documented where defined):
the cosine scale (30), label smoothing (none), the triplet margin (0.3), squared
distances in the triplet (yes, as equation 7), the squared center loss of Wen et al.
(yes), the centres' own SGD optimiser (lr 0.5), and averaging each term over the
features it sees (``feature_reduction="mean"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_REDUCTIONS = ("mean", "sum")
CLUSTERING_FEATURES = ("all", "global")
#: Which tensor the clustering losses (triplet, center) see: the embedded features after the
#: embedding's BN (what the classifier sees) or before it (the BNNeck of Luo et al. 2019).
CLUSTERING_INPUTS = ("post_bn", "pre_bn")
SQRT_EPS = 1e-12
"""Floor under a squared distance before its square root: finite gradient at zero distance."""


def reduce_features(per_feature: torch.Tensor, feature_reduction: str = "mean") -> torch.Tensor:
    """Combine a (F,) vector of per-feature loss values.

    ``"mean"`` (default) keeps a term's magnitude independent of how many features a part
    pattern produces (Tables 2-3 compare patterns with 4 to 20 features); ``"sum"`` adds them.
    """
    if feature_reduction == "mean":
        return per_feature.mean()
    if feature_reduction == "sum":
        return per_feature.sum()
    raise ValueError(f"unknown feature_reduction '{feature_reduction}'; expected one of {FEATURE_REDUCTIONS}")


def _as_bfd(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, 1, D); (B, F, D) unchanged."""
    if x.dim() == 2:
        return x[:, None, :]
    if x.dim() == 3:
        return x
    raise ValueError(f"expected (B, D) or (B, F, D); got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- cross-entropy


class CosineCrossEntropy(nn.Module):
    """Equation (6) on the cosine classifier: CE of softmax(scale * cos) for every feature.

    Parameters
    ----------
    scale:
        multiplies the cosines before the softmax. The paper is silent; normalised logits
        need a scale (cosines alone give a nearly uniform softmax), and 16-64 is the
        range in common use (CosFace/ArcFace-style heads); the default is 30.
    label_smoothing:
        epsilon of label smoothing (0: the paper's one-hot ``p``).
    feature_reduction:
        ``"mean"`` or ``"sum"`` over the features (see :func:`reduce_features`).
    """

    def __init__(self, scale: float = 30.0, label_smoothing: float = 0.0, feature_reduction: str = "mean") -> None:
        super().__init__()
        self.scale = float(scale)
        self.label_smoothing = float(label_smoothing)
        self.feature_reduction = feature_reduction

    def forward(self, logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, C) or (B, F, C) cosines; ``pids`` (B,) -> scalar (batch mean per feature)."""
        cos = _as_bfd(logits)
        b, f, _ = cos.shape
        per = F.cross_entropy(
            self.scale * cos.permute(0, 2, 1),  # (B, C, F)
            pids[:, None].expand(b, f),
            reduction="none",
            label_smoothing=self.label_smoothing,
        )  # (B, F)
        return reduce_features(per.mean(0), self.feature_reduction)


# --------------------------------------------------------------------------- triplet


class HardestPairs(NamedTuple):
    """Result of the batch-hard mining of equation (8), per feature."""

    loss: torch.Tensor  # scalar, reduced over anchors and features
    positive: torch.Tensor  # (F, B) index of each anchor's hardest positive (-1: none)
    negative: torch.Tensor  # (F, B) index of each anchor's hardest negative (-1: none)
    per_anchor: torch.Tensor  # (F, B) hinge value per anchor (0 where the anchor is invalid)


def pairwise_squared_distances(features: torch.Tensor) -> torch.Tensor:
    """(F, B, B) squared Euclidean distances between the rows of ``features`` (F, B, D)."""
    sq = (features * features).sum(-1)
    d = sq[:, :, None] + sq[:, None, :] - 2.0 * features @ features.transpose(1, 2)
    return d.clamp(min=0.0)


def batch_hard_mining(
    features: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 0.3,
    squared: bool = True,
    feature_reduction: str = "mean",
) -> HardestPairs:
    """Batch-hard triplet loss, equations (7)-(8), with the chosen pairs.

    For every anchor a: the hardest positive is the FARTHEST image of the same pid
    (excluding a itself); the hardest negative is the CLOSEST image of another pid. (The
    paper's equation (8) writes argmax for the negative too; that is a typo -- the
    farthest negative is the easiest one, and batch-hard mining, which the text names,
    takes the closest.) The loss is [margin + d(a, p) - d(a, n)]_+, AVERAGED over the
    valid anchors (equation (7) writes a sum; the mean only divides by the constant
    batch size). Anchors with no positive or no negative in the batch are skipped; if
    none is valid the loss is 0 (still attached to the graph).

    ``squared=True`` uses squared Euclidean distances as equation (7); ``squared=False``
    the plain distance sqrt(max(d^2, SQRT_EPS)). ``features`` (B, D) or (B, F, D); the
    loss is computed per feature and reduced with ``feature_reduction``.
    """
    x = _as_bfd(features).transpose(0, 1)  # (F, B, D)
    d = pairwise_squared_distances(x)
    if not squared:
        d = d.clamp(min=SQRT_EPS).sqrt()
    b = pids.shape[0]
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=pids.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)  # (B,)
    # hardest positive: max over positives; hardest negative: min over negatives
    d_pos, i_pos = d.masked_fill(~pos_mask, float("-inf")).max(dim=2)
    d_neg, i_neg = d.masked_fill(~neg_mask, float("inf")).min(dim=2)
    hinge = F.relu(margin + d_pos - d_neg).masked_fill(~valid, 0.0)  # (F, B)
    n_valid = int(valid.sum())
    per_feature = hinge.sum(1) / n_valid if n_valid else (d.sum((1, 2)) * 0.0)
    invalid = torch.full_like(i_pos, -1)
    return HardestPairs(
        loss=reduce_features(per_feature, feature_reduction),
        positive=torch.where(valid, i_pos, invalid),
        negative=torch.where(valid, i_neg, invalid),
        per_anchor=hinge,
    )


def batch_hard_triplet_loss(
    features: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 0.3,
    squared: bool = True,
    feature_reduction: str = "mean",
) -> torch.Tensor:
    """The loss value of :func:`batch_hard_mining` (equations 7-8); margin alpha = 0.3 by default.

    The paper does not give alpha; 0.3 is the strong-baseline (Luo et al. 2019) value.
    """
    return batch_hard_mining(features, pids, margin, squared, feature_reduction).loss


class BatchHardTripletLoss(nn.Module):
    """Module form of :func:`batch_hard_triplet_loss`."""

    def __init__(self, margin: float = 0.3, squared: bool = True, feature_reduction: str = "mean") -> None:
        super().__init__()
        self.margin = float(margin)
        self.squared = bool(squared)
        self.feature_reduction = feature_reduction

    def mine(self, features: torch.Tensor, pids: torch.Tensor) -> HardestPairs:
        """The loss with the chosen pairs (:func:`batch_hard_mining`)."""
        return batch_hard_mining(features, pids, self.margin, self.squared, self.feature_reduction)

    def forward(self, features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """The scalar loss (see :meth:`mine` for the pairs it chose)."""
        return self.mine(features, pids).loss


# --------------------------------------------------------------------------- center loss


class CenterLoss(nn.Module):
    """Equation (9): pull every feature towards the centre of its class.

    One set of centres per feature (``centers``: (num_features, C, D), an ``nn.Parameter``,
    so it lives in ``state_dict()`` and in checkpoints). Per feature the loss is the batch
    mean of 1/2 ||x_i - c_{y_i}||^2 (``squared=True``, the cited Wen et al. 2016 form;
    equation (9) as printed has no square: ``squared=False`` gives 1/2 ||x - c||, with the
    norm floored at sqrt(SQRT_EPS)), reduced over features with ``feature_reduction``.
    With ``squared=True`` the gradient w.r.t. x_i is (x_i - c_{y_i}) / B.

    Updating the centres: NOT with the network's optimiser. As in the strong-baseline
    recipe, the centres get their own SGD (:func:`center_optimizer`, lr 0.5), and before
    stepping it the training loop calls :func:`rescale_center_grads` with the loss weight
    lambda, so that the centres move at the same speed whatever lambda is (the weighted
    loss scales their gradient by lambda; the rescale undoes that).
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        num_features: int = 1,
        squared: bool = True,
        feature_reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.squared = bool(squared)
        self.feature_reduction = feature_reduction
        # random initialisation, as Wen et al. (the centres are learned from there)
        self.centers = nn.Parameter(torch.randn(num_features, num_classes, feat_dim))

    def forward(self, features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """``features`` (B, D) or (B, F, D) with F == num_features; ``pids`` (B,) -> scalar."""
        x = _as_bfd(features)
        if x.shape[1] != self.centers.shape[0] or x.shape[2] != self.centers.shape[2]:
            raise ValueError(
                f"features of shape {tuple(x.shape)} do not match centres of shape {tuple(self.centers.shape)}"
            )
        c = self.centers[:, pids, :].transpose(0, 1)  # (B, F, D)
        sq = ((x - c) ** 2).sum(-1)  # (B, F)
        dist = sq if self.squared else sq.clamp(min=SQRT_EPS).sqrt()
        return reduce_features(0.5 * dist.mean(0), self.feature_reduction)


def _center_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [m.centers for m in module.modules() if isinstance(m, CenterLoss)]


def center_optimizer(center_loss: nn.Module, lr: float = 0.5) -> torch.optim.Optimizer:
    """The centres' own SGD (strong-baseline recipe: lr 0.5), over the centres of ``center_loss``
    (a :class:`CenterLoss` or a :class:`CANLoss`): the one way to build it."""
    params = _center_parameters(center_loss)
    if not params:
        raise ValueError("this loss has no centres (center_weight is 0): no centre optimiser to build")
    return torch.optim.SGD(params, lr=lr)


def rescale_center_grads(center_loss: nn.Module, weight: float, grad_scale: float = 1.0) -> None:
    """Divide the centres' gradients by the loss weight (and by an AMP ``grad_scale``, if any).

    Call after ``backward()`` and before the centre optimiser's ``step()``: the centres
    then move with learning rate ``lr`` as if their loss had weight 1.
    """
    if weight <= 0:
        raise ValueError("the center-loss weight must be positive to rescale by it")
    for p in _center_parameters(center_loss):
        if p.grad is not None:
            p.grad.mul_(1.0 / (weight * grad_scale))


# --------------------------------------------------------------------------- equation (5)


class CANLoss(nn.Module):
    """Equation (5), L = w_ce L_CE + w_trip L_triplet + lambda L_C, covering every row of Table 4.

    CE applies to every feature (each has its own classifier). The clustering losses
    (triplet, center) see ``clustering_features``: ``"global"`` (only ``global_indices``,
    as MGN and Table 4's first three rows) or ``"all"`` (global and local features,
    Table 4's last row, the paper's final model; the default). A weight of 0 disables a
    term (a disabled center loss creates no centres). Each term is averaged over the
    features it sees (``feature_reduction="mean"``) unless ``"sum"`` is asked for.
    ``clustering_input`` chooses the tensor they see (:data:`CLUSTERING_INPUTS`): ``"post_bn"``
    (the features the classifier sees) or ``"pre_bn"`` (BNNeck: the features before the
    embedding's BN, passed as ``pre_bn``).

    ``forward(features (B, F, D), logits (B, F, C), pids (B,), pre_bn=None)`` returns ``(total, terms)``
    with ``terms`` = {"ce", "triplet", "center", "total"}: the UNWEIGHTED term values and
    the weighted total, as detached floats (0.0 for a disabled term).
    """

    #: The features the clustering losses see (a buffer, not saved: it follows from the arguments).
    clustering_index: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        num_features: int,
        global_indices: Iterable[int],
        local_indices: Iterable[int],
        ce_weight: float = 1.0,
        ce_scale: float = 30.0,
        label_smoothing: float = 0.0,
        triplet_weight: float = 1.0,
        triplet_margin: float = 0.3,
        triplet_squared: bool = True,
        center_weight: float = 0.0005,
        center_squared: bool = True,
        clustering_features: str = "all",
        feature_reduction: str = "mean",
        clustering_input: str = "post_bn",
    ) -> None:
        super().__init__()
        if clustering_features not in CLUSTERING_FEATURES:
            raise ValueError(f"clustering_features must be one of {CLUSTERING_FEATURES}")
        if clustering_input not in CLUSTERING_INPUTS:
            raise ValueError(f"clustering_input must be one of {CLUSTERING_INPUTS}")
        self.clustering_input = clustering_input
        if feature_reduction not in FEATURE_REDUCTIONS:
            raise ValueError(f"feature_reduction must be one of {FEATURE_REDUCTIONS}")
        self.num_features = int(num_features)
        self.global_indices = [int(i) for i in global_indices]
        self.local_indices = [int(i) for i in local_indices]
        selected = self.global_indices + (self.local_indices if clustering_features == "all" else [])
        if not selected or any(not 0 <= i < self.num_features for i in selected) or len(set(selected)) != len(selected):
            raise ValueError(
                f"clustering feature indices {selected} are empty, repeated or outside [0, {num_features})"
            )
        self.clustering_features = clustering_features
        self.register_buffer("clustering_index", torch.tensor(selected, dtype=torch.long), persistent=False)
        self.ce_weight = float(ce_weight)
        self.triplet_weight = float(triplet_weight)
        self.center_weight = float(center_weight)
        self.cross_entropy = CosineCrossEntropy(ce_scale, label_smoothing, feature_reduction)
        self.triplet = BatchHardTripletLoss(triplet_margin, triplet_squared, feature_reduction)
        self.center = (
            CenterLoss(num_classes, feat_dim, len(selected), center_squared, feature_reduction)
            if self.center_weight > 0
            else None
        )

    def forward(
        self, features: torch.Tensor, logits: torch.Tensor, pids: torch.Tensor, pre_bn: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total (a graph-attached scalar) and the detached term values."""
        total = features.new_zeros(())
        terms = {"ce": 0.0, "triplet": 0.0, "center": 0.0}
        source = features
        if self.clustering_input == "pre_bn":
            if pre_bn is None:
                raise ValueError("clustering_input='pre_bn' needs the features before the BN (pre_bn=...)")
            source = pre_bn
        clustered = source.index_select(1, self.clustering_index)
        if self.ce_weight > 0:
            ce = self.cross_entropy(logits, pids)
            total = total + self.ce_weight * ce
            terms["ce"] = float(ce.detach())
        if self.triplet_weight > 0:
            trip = self.triplet(clustered, pids)
            total = total + self.triplet_weight * trip
            terms["triplet"] = float(trip.detach())
        if self.center is not None:
            cen = self.center(clustered, pids)
            total = total + self.center_weight * cen
            terms["center"] = float(cen.detach())
        terms["total"] = float(total.detach())
        return total, terms

    def rescale_center_grads(self, grad_scale: float = 1.0) -> None:
        """:func:`rescale_center_grads` with this loss's ``center_weight`` (no-op without centres)."""
        if self.center is not None:
            rescale_center_grads(self, self.center_weight, grad_scale)
