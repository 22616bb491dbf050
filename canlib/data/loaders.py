"""Torch datasets and loaders: PK-sampled training batches, ordered query/gallery batches.

Determinism: the PK batches depend only on (seed, epoch) (see :mod:`canlib.data.sampler`).
Random transforms draw from torch's generator: with ``num_workers > 0`` every worker's
generators (torch, numpy, random) are seeded from the loader's own generator, which is
seeded with ``seed``, so a run is repeatable; with ``num_workers=0`` they use the main
process's global generator, which the training code seeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from canlib.data.base import Record, ReIDDataset, read_image
from canlib.data.sampler import PKSampler
from canlib.data.transforms import build_transforms


class ImageDataset(Dataset):
    """Records ``(path, pid, camid)`` -> ``(image_tensor, pid, camid)``.

    A missing or corrupt file raises :class:`canlib.data.base.ImageReadError` naming it.
    """

    def __init__(self, records: Sequence[Record], transform: Callable[[Any], torch.Tensor] | None = None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        path, pid, cam = self.records[i]
        img = read_image(path)
        return (self.transform(img) if self.transform is not None else img), pid, cam


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a loader worker from its torch seed (set by the loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(
    dataset: ReIDDataset,
    height: int = 384,
    width: int = 128,
    p: int = 8,
    k: int = 4,
    seed: int = 0,
    num_workers: int = 0,
    epoch: str = "ids",
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    **transform_opts: Any,
) -> DataLoader:
    """PK-sampled training loader over ``dataset.train``; call ``loader.batch_sampler.set_epoch(e)`` each epoch.

    ``transform_opts`` go to :func:`build_transforms` (``flip``, ``pad``, ``random_erasing``, ``normalize``).
    """
    transform = build_transforms(height, width, train=True, **transform_opts)
    sampler = PKSampler(
        [pid for _, pid, _ in dataset.train], p=p, k=k, seed=seed, rank=rank, world_size=world_size, epoch=epoch
    )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ImageDataset(dataset.train, transform),
        batch_sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def build_test_loaders(
    dataset: ReIDDataset,
    height: int = 384,
    width: int = 128,
    batch_size: int = 64,
    num_workers: int = 0,
    normalize: bool = True,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """``(query_loader, gallery_loader)`` in record order, no shuffling, resize (+ normalise) only."""
    transform = build_transforms(height, width, train=False, normalize=normalize)
    loaders = tuple(
        DataLoader(
            ImageDataset(records, transform),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        for records in (dataset.query, dataset.gallery)
    )
    return loaders[0], loaders[1]
