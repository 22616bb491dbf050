"""Builders: the one place where configuration becomes objects.

Each builder takes its typed section of the configuration (:mod:`canlib.config`:
:class:`~canlib.config.DataSection`, :class:`~canlib.config.ModelSection`, ...; from a dictionary:
``RunSections.from_config(cfg).model``). Everything below this layer takes plain arguments (the
FastReID way): a reader of ``canlib.model`` never needs to know the YAML schema. A component's
refusal of a value the schema cannot know (a data set name) becomes a :class:`~canlib.config.ConfigError`
naming the key here.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from canlib.backbone import is_weights_name
from canlib.config import ConfigError, DataSection, LossSection, ModelSection, OptimSection, RunSections
from canlib.data import PKSampler, build_test_loaders, build_train_loader, load_dataset
from canlib.data.base import ReIDDataset
from canlib.data.cache import BatchAugment, CachedTrainLoader
from canlib.data.datasets import dataset_names
from canlib.data.split import hold_out_validation
from canlib.data.synthetic import gallery_identities
from canlib.engine.distributed import GlobalBatchShard, shard_test_loader, shard_train_loader
from canlib.losses import CANLoss, center_optimizer
from canlib.model import CAN

log = logging.getLogger(__name__)

#: The repository root (a checkout's): where ``model.pretrained`` paths such as ``results/pretrained/...`` lie.
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; anything else is passed to torch."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was asked for but CUDA is not available on this machine")
    return device


def _check_dataset_name(d: DataSection) -> None:
    """``data.dataset`` is a name :func:`canlib.data.load_dataset` knows (case aside), else a one-line ConfigError."""
    if d.dataset.lower() not in dataset_names():
        raise ConfigError(f"configuration: data.dataset must be one of {', '.join(dataset_names())}; got {d.dataset!r}")


def build_dataset(data: DataSection) -> ReIDDataset:
    """The data set named by ``data.dataset`` under ``data.root``; with ``data.val_ids > 0``, its
    validation split (:func:`canlib.data.split.hold_out_validation`) instead of its test split.
    An unknown name is a :class:`ConfigError` naming ``data.dataset`` and the known names."""
    _check_dataset_name(data)
    if not data.root:
        raise ValueError("no data root: pass --data-root DIR (or set data.root in the profile)")
    dataset = load_dataset(data.dataset, data.root, **data.options)
    if data.val_ids > 0:  # decide on validation: the test split is never read
        dataset = validation_split(dataset, data)
    return dataset


def validation_split(dataset: ReIDDataset, data: DataSection, like_test_gallery: bool = False) -> ReIDDataset:
    """``dataset``'s validation split as ``data.val_*`` describe it: ``data.val_ids`` training
    identities held out (whole look-alike groups with ``data.val_groups``), drawn by
    ``data.val_seed``, with ``data.val_gallery_ids`` new gallery-only people of the synthetic set;
    ``like_test_gallery``: see :func:`canlib.data.split.hold_out_validation`."""
    groups = dataset.look_alike_groups if data.val_groups else None
    if data.val_groups and not groups:
        raise ConfigError(f"data.val_groups: {data.dataset} names no look-alike groups")
    extra = _gallery_identities(data) if data.val_gallery_ids else ()
    return hold_out_validation(
        dataset, data.val_ids, data.val_seed, groups=groups, like_test_gallery=like_test_gallery, extra_gallery=extra
    )


def _gallery_identities(data: DataSection) -> list[tuple[str, int, int]]:
    if data.dataset != "synthetic":
        raise ConfigError(f"data.val_gallery_ids: only the synthetic set can draw new people, not {data.dataset}")
    return gallery_identities(str(data.root), data.val_gallery_ids)


def resolve_pretrained(value: str | None) -> str | None:
    """``model.pretrained`` as a path to read: ``None`` and the names of ImageNet weights
    (:func:`canlib.backbone.is_weights_name`: ``imagenet``, ``imagenet-v1``, ``imagenet-v2``) pass through;
    a relative path is taken from the current folder when it exists there, else from the repository root
    (so profiles can name committed weights, ``results/pretrained/...``, from any folder)."""
    if value is None or is_weights_name(value) or Path(value).is_absolute() or Path(value).exists():
        return value
    candidate = REPO_ROOT / str(value)
    return str(candidate) if candidate.exists() else value


def build_model(model: ModelSection, num_classes: int) -> CAN:
    """CAN with the ``model`` section's arguments."""
    return CAN(
        num_classes=num_classes,
        parts=model.parts,
        collaborative=model.collaborative,
        backbone=model.backbone,
        pretrained=resolve_pretrained(model.pretrained),
        embed_dim=model.embed_dim,
        pooling=model.pooling,
        embed_bn=model.embed_bn,
        last_stride=model.last_stride,
        layer3_stride=model.layer3_stride,
        descriptor_norm=model.descriptor_norm,
        backbone_kwargs=dict(model.backbone_kwargs),
        pool_ops=model.pool_ops,
        classifier=model.classifier,
        embed_bn_bias=model.embed_bn_bias,
        ca_fusion=model.ca_fusion,
    )


def build_loss(loss: LossSection, model: CAN, num_classes: int) -> CANLoss:
    """The combined loss of equation (5) with the ``loss`` section's weights, for ``model``'s features.

    A linear classifier's scores are logits already: ``loss.ce_scale`` (made for cosines) must then be 1.
    """
    if model.classifier == "linear" and loss.ce_scale != 1.0:
        raise ConfigError(
            f"configuration: loss.ce_scale multiplies cosine logits; with model.classifier=linear it must be 1.0, "
            f"got {loss.ce_scale}"
        )
    return CANLoss(
        num_classes=num_classes,
        feat_dim=model.embed_dim,
        num_features=model.num_features,
        global_indices=model.global_indices,
        local_indices=model.local_indices,
        ce_weight=loss.ce_weight,
        ce_scale=loss.ce_scale,
        label_smoothing=loss.label_smoothing,
        triplet_weight=loss.triplet_weight,
        triplet_margin=loss.triplet_margin,
        triplet_squared=loss.triplet_squared,
        center_weight=loss.center_weight,
        center_squared=loss.center_squared,
        clustering_features=loss.clustering_features,
        feature_reduction=loss.feature_reduction,
        clustering_input=loss.clustering_input,
    )


def build_scheduler(optim: OptimSection, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The step schedule of Section 4.5, stepped once per epoch; with ``optim.warmup_epochs`` W > 1,
    times a linear warm-up (torch's ``LinearLR`` chained with ``MultiStepLR``): epoch ``e <= W`` trains
    at ``lr * (f + (1 - f) * (e - 1) / (W - 1))``, ``f = optim.warmup_factor``, so epoch 1 at ``f * lr``
    and epoch W at ``lr`` (the strong baseline's ``lr(t) = 3.5e-4 * t / 10`` for ``t <= 10``)."""
    steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(optim.milestones), gamma=optim.gamma)
    if optim.warmup_epochs <= 1:
        return steps
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=optim.warmup_factor, end_factor=1.0, total_iters=optim.warmup_epochs - 1
    )
    return torch.optim.lr_scheduler.ChainedScheduler([warmup, steps], optimizer=optimizer)


def build_optimizers(
    optim: OptimSection, model: nn.Module, loss: CANLoss
) -> tuple[torch.optim.Adam, torch.optim.Optimizer | None, LRScheduler]:
    """Adam for the network, SGD for the centres (None when the loss has none), and the step
    schedule of Section 4.5 (:func:`build_scheduler`)."""
    optimizer = torch.optim.Adam(
        _parameter_groups(model, optim.lr, optim.head_lr_mult),
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
    )
    centers = center_optimizer(loss, lr=optim.center_lr) if loss.center is not None else None
    return optimizer, centers, build_scheduler(optim, optimizer)


def _parameter_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """One group at ``lr`` (``head_lr_mult == 1``), or the trunk at ``lr`` and the new layers
    (:meth:`CAN.head_parameters`) at ``lr * head_lr_mult``."""
    if head_lr_mult == 1.0 or not isinstance(model, CAN):
        return [{"params": list(model.parameters())}]
    head = {id(p) for p in model.head_parameters()}
    trunk = [p for p in model.parameters() if id(p) not in head]
    return [{"params": trunk, "lr": lr}, {"params": list(model.head_parameters()), "lr": lr * head_lr_mult}]


def _file_train_loader(d: DataSection, dataset: ReIDDataset, seed: int, rank: int, world_size: int) -> DataLoader:
    """The PK-sampled loader that reads the image files (rank ``rank``'s shard of each global batch)."""
    loader = build_train_loader(
        dataset,
        height=d.height,
        width=d.width,
        p=d.p,
        k=d.k,
        seed=seed,
        num_workers=d.num_workers,
        epoch=d.epoch,
        flip=d.flip,
        pad=d.pad,
        random_erasing=d.random_erasing,
        normalize=d.normalize,
    )
    return shard_train_loader(loader, rank, world_size) if world_size > 1 else loader


def _cached_train_loader(
    d: DataSection, dataset: ReIDDataset, seed: int, rank: int, world_size: int, device: torch.device | str
) -> CachedTrainLoader:
    """The PK-sampled loader over the decoded-image cache (``data.cache``), augmenting on ``device``."""
    batches: PKSampler | GlobalBatchShard = PKSampler(
        [pid for _, pid, _ in dataset.train], p=d.p, k=d.k, seed=seed, epoch=d.epoch
    )
    if world_size > 1:
        batches = GlobalBatchShard(batches, rank, world_size)
    augment = BatchAugment(
        height=d.height, width=d.width, flip=d.flip, pad=d.pad, random_erasing=d.random_erasing, normalize=d.normalize
    )
    return CachedTrainLoader(dataset.train, batches, augment, d.cache, device, d.num_workers, rank, world_size)


def _test_loaders(d: DataSection, dataset: ReIDDataset) -> tuple[DataLoader, DataLoader]:
    """Ordered query and gallery loaders (resize and normalisation only)."""
    return build_test_loaders(
        dataset,
        height=d.height,
        width=d.width,
        batch_size=d.test_batch_size,
        num_workers=d.num_workers,
        normalize=d.normalize,
    )


def build_loaders(
    data: DataSection,
    dataset: ReIDDataset,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> tuple[DataLoader | CachedTrainLoader, DataLoader, DataLoader]:
    """PK-sampled training loader and ordered query/gallery loaders.

    ``data.cache`` other than ``"none"``: the training loader reads a decoded-image cache
    (:class:`canlib.data.cache.CachedTrainLoader`, built on first use, augmenting on ``device``).
    With ``world_size > 1`` every loader yields rank ``rank``'s share: its slice of each global
    PK batch, its contiguous block of the query and gallery records.
    """
    train_loader: DataLoader | CachedTrainLoader
    if data.cache == "none":
        train_loader = _file_train_loader(data, dataset, seed, rank, world_size)
    else:
        train_loader = _cached_train_loader(data, dataset, seed, rank, world_size, device)
    query_loader, gallery_loader = _test_loaders(data, dataset)
    if world_size > 1:
        query_loader = shard_test_loader(query_loader, rank, world_size)
        gallery_loader = shard_test_loader(gallery_loader, rank, world_size)
    return train_loader, query_loader, gallery_loader


def build_eval_loaders(data: DataSection) -> tuple[ReIDDataset, DataLoader, DataLoader]:
    """``(dataset, query_loader, gallery_loader)`` of a configuration's ``data`` section (no training loader)."""
    dataset = build_dataset(data)
    query_loader, gallery_loader = _test_loaders(data, dataset)
    return dataset, query_loader, gallery_loader


def target_config(cfg: dict[str, Any], dataset: str | None = None, data_root: str | None = None) -> dict[str, Any]:
    """A run's configuration pointed at data set ``dataset`` under ``data_root`` (None: the run's own).

    Another data set needs its root; its reader options start empty and its test split is used
    (no validation hold-out). The image size, model and evaluation settings stay the run's.
    Raises ``ValueError`` (``ConfigError`` for an unknown data set name) naming the problem.
    """
    cfg = copy.deepcopy(cfg)
    data = cfg["data"]
    if dataset is not None and dataset.lower() != str(data["dataset"]).lower():
        if data_root is None:
            raise ValueError(f"--dataset {dataset} is not the run's data set ({data['dataset']}): give its --data-root")
        data.update(dataset=dataset, options={}, val_ids=0)
    if data_root is not None:
        data["root"] = str(data_root)
    run = RunSections.from_config(cfg)
    _check_dataset_name(run.data)
    return run.config
