"""Builders: the one place where configuration dictionaries become objects.

Everything below this layer takes plain arguments (the FastReID way): a reader of
``canlib.model`` never needs to know the YAML schema.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from canlib.data import build_test_loaders, build_train_loader, load_dataset
from canlib.losses import CANLoss, center_optimizer
from canlib.model import CAN

log = logging.getLogger(__name__)


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; anything else is passed to torch."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was asked for but CUDA is not available on this machine")
    return device


def build_dataset(cfg: Mapping[str, Any]):
    """The data set named by ``data.dataset`` under ``data.root``."""
    data = cfg["data"]
    if not data.get("root"):
        raise ValueError("no data root: pass --data-root DIR (or set data.root in the profile)")
    return load_dataset(data["dataset"], data["root"], **dict(data.get("options") or {}))


def build_model(cfg: Mapping[str, Any], num_classes: int) -> CAN:
    """CAN with the ``model`` section's arguments."""
    m = cfg["model"]
    return CAN(
        num_classes=num_classes,
        parts=tuple(int(n) for n in m["parts"]),
        collaborative=bool(m["collaborative"]),
        backbone=m["backbone"],
        pretrained=m["pretrained"],
        embed_dim=int(m["embed_dim"]),
        pooling=m["pooling"],
        embed_bn=bool(m["embed_bn"]),
        last_stride=int(m["last_stride"]),
        descriptor_norm=m["descriptor_norm"],
        backbone_kwargs=dict(m.get("backbone_kwargs") or {}),
    )


def build_loss(cfg: Mapping[str, Any], model: CAN, num_classes: int) -> CANLoss:
    """The combined loss of equation (5) with the ``loss`` section's weights."""
    lo = cfg["loss"]
    return CANLoss(
        num_classes=num_classes,
        feat_dim=int(cfg["model"]["embed_dim"]),
        num_features=model.num_features,
        global_indices=model.global_indices,
        local_indices=model.local_indices,
        ce_weight=float(lo["ce_weight"]),
        ce_scale=float(lo["ce_scale"]),
        label_smoothing=float(lo["label_smoothing"]),
        triplet_weight=float(lo["triplet_weight"]),
        triplet_margin=float(lo["triplet_margin"]),
        triplet_squared=bool(lo["triplet_squared"]),
        center_weight=float(lo["center_weight"]),
        center_squared=bool(lo["center_squared"]),
        clustering_features=lo["clustering_features"],
        feature_reduction=lo["feature_reduction"],
    )


def build_optimizers(cfg: Mapping[str, Any], model: nn.Module, loss: CANLoss):
    """Adam for the network, SGD for the centres, and the step schedule of Section 4.5."""
    o = cfg["optim"]
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=float(o["lr"]),
        betas=tuple(float(b) for b in o["betas"]),
        eps=float(o["eps"]),
        weight_decay=float(o["weight_decay"]),
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[int(m) for m in o["milestones"]], gamma=float(o["gamma"])
    )
    centers = None
    if float(cfg["loss"]["center_weight"]) > 0:
        centers = center_optimizer(loss, lr=float(o["center_lr"]))
    return optimizer, centers, scheduler


def build_loaders(cfg: Mapping[str, Any], dataset, seed: int):
    """PK-sampled training loader and ordered query/gallery loaders."""
    d = cfg["data"]
    train_loader = build_train_loader(
        dataset,
        height=int(d["height"]),
        width=int(d["width"]),
        p=int(d["p"]),
        k=int(d["k"]),
        seed=seed,
        num_workers=int(d["num_workers"]),
        epoch=d["epoch"],
        flip=bool(d["flip"]),
        pad=int(d["pad"]),
        random_erasing=float(d["random_erasing"]),
        normalize=bool(d["normalize"]),
    )
    query_loader, gallery_loader = build_test_loaders(
        dataset,
        height=int(d["height"]),
        width=int(d["width"]),
        batch_size=int(d["test_batch_size"]),
        num_workers=int(d["num_workers"]),
        normalize=bool(d["normalize"]),
    )
    return train_loader, query_loader, gallery_loader
