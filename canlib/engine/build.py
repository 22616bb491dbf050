"""Builders: the one place where configuration dictionaries become objects.

Everything below this layer takes plain arguments (the FastReID way): a reader of
``canlib.model`` never needs to know the YAML schema.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from canlib.data import PKSampler, build_test_loaders, build_train_loader, load_dataset
from canlib.data.cache import CACHE_MODES, BatchAugment, CachedTrainLoader
from canlib.data.split import hold_out_validation
from canlib.engine.distributed import GlobalBatchShard, shard_test_loader, shard_train_loader
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
    """The data set named by ``data.dataset`` under ``data.root``; with ``data.val_ids > 0``, its
    validation split (:func:`canlib.data.split.hold_out_validation`) instead of its test split."""
    data = cfg["data"]
    if not data.get("root"):
        raise ValueError("no data root: pass --data-root DIR (or set data.root in the profile)")
    dataset = load_dataset(data["dataset"], data["root"], **dict(data.get("options") or {}))
    if int(data.get("val_ids") or 0) > 0:  # decide on validation: the test split is never read
        dataset = hold_out_validation(dataset, int(data["val_ids"]), int(data.get("val_seed") or 0))
    return dataset


def resolve_pretrained(value: str | None) -> str | None:
    """``model.pretrained`` as a path to read: ``None`` and ``"imagenet"`` pass through; a relative
    path is taken from the current folder when it exists there, else from the repository root
    (so profiles can name committed weights, ``results/pretrained/...``, from any folder)."""
    if value in (None, "imagenet") or Path(str(value)).is_absolute() or Path(str(value)).exists():
        return value
    from canlib.engine.record import REPO_DIR

    candidate = REPO_DIR / str(value)
    return str(candidate) if candidate.exists() else value


def build_model(cfg: Mapping[str, Any], num_classes: int) -> CAN:
    """CAN with the ``model`` section's arguments."""
    m = cfg["model"]
    return CAN(
        num_classes=num_classes,
        parts=tuple(int(n) for n in m["parts"]),
        collaborative=bool(m["collaborative"]),
        backbone=m["backbone"],
        pretrained=resolve_pretrained(m["pretrained"]),
        embed_dim=int(m["embed_dim"]),
        pooling=m["pooling"],
        embed_bn=m["embed_bn"],
        last_stride=int(m["last_stride"]),
        layer3_stride=int(m["layer3_stride"]),
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
        clustering_input=lo["clustering_input"],
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


def build_loaders(
    cfg: Mapping[str, Any], dataset, seed: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"
):
    """PK-sampled training loader and ordered query/gallery loaders.

    ``data.cache`` other than ``"none"``: the training loader reads a decoded-image cache
    (:class:`canlib.data.cache.CachedTrainLoader`, built on first use, augmenting on ``device``).
    With ``world_size > 1`` every loader yields rank ``rank``'s share: its slice of each global
    PK batch, its contiguous block of the query and gallery records.
    """
    d = cfg["data"]
    mode = d.get("cache", "none")
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache must be one of {CACHE_MODES}, got {mode!r}")
    augment = dict(
        flip=bool(d["flip"]),
        pad=int(d["pad"]),
        random_erasing=float(d["random_erasing"]),
        normalize=bool(d["normalize"]),
    )
    size = dict(height=int(d["height"]), width=int(d["width"]))
    if mode == "none":
        train_loader = build_train_loader(
            dataset,
            **size,
            p=int(d["p"]),
            k=int(d["k"]),
            seed=seed,
            num_workers=int(d["num_workers"]),
            epoch=d["epoch"],
            **augment,
        )
        if world_size > 1:
            train_loader = shard_train_loader(train_loader, rank, world_size)
    else:
        batches = PKSampler(
            [pid for _, pid, _ in dataset.train], p=int(d["p"]), k=int(d["k"]), seed=seed, epoch=d["epoch"]
        )
        if world_size > 1:
            batches = GlobalBatchShard(batches, rank, world_size)
        train_loader = CachedTrainLoader(
            dataset.train,
            batches,
            BatchAugment(**size, **augment),
            mode,
            device,
            int(d["num_workers"]),
            rank,
            world_size,
        )
    query_loader, gallery_loader = build_test_loaders(
        dataset,
        **size,
        batch_size=int(d["test_batch_size"]),
        num_workers=int(d["num_workers"]),
        normalize=bool(d["normalize"]),
    )
    if world_size > 1:
        query_loader = shard_test_loader(query_loader, rank, world_size)
        gallery_loader = shard_test_loader(gallery_loader, rank, world_size)
    return train_loader, query_loader, gallery_loader
