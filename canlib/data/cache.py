"""A decoded-image cache: data that keeps up with a GPU (``data.cache: memory | device``).

Each training image is decoded and resized ONCE, by the file pipeline's own first two steps
(``ToImage``, ``Resize``), into one uint8 tensor ``(N, 3, H, W)`` held in memory or on the
device (Market-1501 at 384x128: 12,936 x 147 KB = 1.9 GB). A training step then assembles
its batch by indexing, moves the uint8 batch to the device and applies the rest of the file
pipeline there, to the whole batch: flip, pad-and-crop, float conversion, normalisation and
random erasing (:class:`BatchAugment`).

Same batches as the file loader: without augmentation the values are identical (the same
kernels on the same uint8 pixels). With augmentation the random draws are identical too:
:class:`BatchAugment` draws, image by image in batch order, exactly what the file pipeline
draws from torch's global generator (the transforms' own ``make_params``), so a cached batch
equals the file loader's batch with ``num_workers=0`` under the same seed. (With workers the
file loader draws in the workers, from generators seeded per epoch: the same distribution,
other numbers.) Under DDP every rank draws for the whole global batch and keeps its slice, so
N processes see the augmentations one process would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from canlib.data.base import Record
from canlib.data.loaders import ImageDataset
from canlib.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

log = logging.getLogger(__name__)

CACHE_MODES = ("none", "memory", "device")
#: ``device`` mode keeps the cache on the GPU only while it takes at most this share of the free memory.
DEVICE_SHARE = 0.5


def decode_steps(height: int, width: int) -> v2.Compose:
    """The file pipeline's deterministic head (``ToImage``, ``Resize``): PIL image -> uint8 ``(3, H, W)``."""
    steps = build_transforms(height, width, train=False, normalize=False).transforms[:2]
    assert isinstance(steps[0], v2.ToImage) and isinstance(steps[1], v2.Resize), steps
    return v2.Compose(steps)


class ImageCache:
    """Decoded, resized uint8 images ``(N, 3, H, W)`` with their pids and camids."""

    def __init__(self, images: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor) -> None:
        self.images, self.pids, self.camids = images, pids, camids

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    @classmethod
    def build(
        cls,
        records: Sequence[Record],
        height: int,
        width: int,
        storage: torch.device | str = "cpu",
        num_workers: int = 0,
        batch_size: int = 64,
    ) -> ImageCache:
        """Decode every record once (``num_workers`` loader processes) into a tensor on ``storage``."""
        storage = torch.device(storage)
        images = torch.empty((len(records), 3, height, width), dtype=torch.uint8, device=storage)
        # Its own generator: building the cache never draws from the global one (augmentation's).
        loader = DataLoader(
            ImageDataset(records, decode_steps(height, width)),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(0),
        )
        start = 0
        for batch, _, _ in loader:
            images[start : start + len(batch)] = batch.as_subclass(torch.Tensor).to(storage)
            start += len(batch)
        pids = torch.tensor([r[1] for r in records], dtype=torch.long)
        camids = torch.tensor([r[2] for r in records], dtype=torch.long)
        if storage.type == "cpu" and torch.cuda.is_available():
            images = images.pin_memory()
        return cls(images, pids, camids)


def cache_storage(mode: str, device: torch.device, nbytes: int) -> torch.device:
    """Where the cache lives: ``device`` mode on the GPU when it fits, else (and on the CPU) in memory."""
    if mode not in CACHE_MODES or mode == "none":
        raise ValueError(f"data.cache must be one of {CACHE_MODES[1:]} to build a cache, got {mode!r}")
    if mode == "memory" or device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > DEVICE_SHARE * free:
        log.warning(
            "data.cache=device: the cache (%.1f GB) exceeds %.0f%% of the free GPU memory (%.1f GB); "
            "keeping it in host memory",
            nbytes / 1e9,
            100 * DEVICE_SHARE,
            free / 1e9,
        )
        return torch.device("cpu")
    return device


class BatchAugment:
    """The file pipeline after ``Resize`` (flip, pad + crop, float, normalise, erasing), on a uint8 batch.

    Random parameters come from the very transform objects :func:`build_transforms` makes, drawn
    per image in the file pipeline's order from torch's global generator.
    """

    def __init__(
        self,
        height: int,
        width: int,
        flip: bool = False,
        pad: int = 0,
        random_erasing: float = 0.0,
        normalize: bool = True,
    ) -> None:
        steps = build_transforms(
            height, width, train=True, flip=flip, pad=pad, random_erasing=random_erasing, normalize=normalize
        ).transforms
        self.flip = next((t for t in steps if isinstance(t, v2.RandomHorizontalFlip)), None)
        self.crop = next((t for t in steps if isinstance(t, v2.RandomCrop)), None)
        self.erase = next((t for t in steps if isinstance(t, v2.RandomErasing)), None)
        self.height, self.width, self.pad, self.normalize = height, width, int(pad), normalize

    @property
    def random(self) -> bool:
        return any(t is not None for t in (self.flip, self.crop, self.erase))

    def draw(self, n: int) -> list[dict[str, Any]]:
        """``n`` images' parameters, in the order the file pipeline draws them."""
        padded = torch.empty((3, self.height + 2 * self.pad, self.width + 2 * self.pad), device="meta")
        final = torch.empty((3, self.height, self.width), device="meta")
        out = []
        for _ in range(n):
            p: dict[str, Any] = {}
            if self.flip is not None:
                p["flip"] = bool(torch.rand(1) < self.flip.p)
            if self.crop is not None:
                c = self.crop.make_params([padded])
                p["crop"] = (c["top"], c["left"])
            if self.erase is not None and bool(torch.rand(1) < self.erase.p):
                e = self.erase.make_params([final])
                p["erase"] = None if e["v"] is None else (e["i"], e["j"], e["h"], e["w"], e["v"])
            out.append(p)
        return out

    def __call__(self, batch: torch.Tensor, params: list[dict[str, Any]] | None = None) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> float ``(B, 3, H, W)`` on the batch's device."""
        params = self.draw(len(batch)) if params is None else params
        x = batch
        if self.flip is not None:
            mask = torch.tensor([p["flip"] for p in params], device=x.device)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        if self.crop is not None:
            x = F.pad(x, [self.pad] * 4)
            corners = [p["crop"] for p in params]  # (top, left) of each image's crop
            x = torch.stack(
                [x[b, :, top : top + self.height, left : left + self.width] for b, (top, left) in enumerate(corners)]
            )
        x = TF.to_dtype(x, torch.float32, scale=True)
        if self.normalize:
            x = TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))
        for b, p in enumerate(params):
            if p.get("erase") is not None:
                i, j, h, w, v = p["erase"]
                x[b, :, i : i + h, j : j + w] = v.to(x.device, x.dtype)
        return x


class CachedTrainLoader:
    """A training loader over an :class:`ImageCache`: batches by indexing, augmentation on the device.

    Stands in for the file loader in the trainer: ``batch_sampler`` (with ``set_epoch``),
    ``len()``, and iteration yielding ``(images, pids, camids)``; ``generator`` is accepted and
    unused (no loader workers). The cache is built on the first iteration, so a loader made only
    for evaluation costs nothing. Under DDP, ``rank``/``world_size`` say which slice of the
    global batch ``batch_sampler`` yields; augmentation is drawn for the whole global batch.
    """

    def __init__(
        self,
        records: Sequence[Record],
        batch_sampler: Any,
        augment: BatchAugment,
        mode: str,
        device: torch.device | str,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if mode not in CACHE_MODES[1:]:
            raise ValueError(f"data.cache must be one of {CACHE_MODES}, got {mode!r}")
        self.records, self.batch_sampler, self.augment = list(records), batch_sampler, augment
        self.mode, self.device, self.num_workers = mode, torch.device(device), num_workers
        self.rank, self.world_size = rank, world_size
        self.generator: torch.Generator | None = None
        self.cache: ImageCache | None = None

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def build_cache(self) -> ImageCache:
        """Decode the training images now (otherwise done on the first iteration)."""
        if self.cache is None:
            h, w = self.augment.height, self.augment.width
            storage = cache_storage(self.mode, self.device, len(self.records) * 3 * h * w)
            self.cache = ImageCache.build(self.records, h, w, storage, self.num_workers)
            log.info("image cache: %d images, %.2f GB on %s", len(self.records), self.cache.nbytes / 1e9, storage)
        return self.cache

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        cache = self.build_cache()
        for indices in self.batch_sampler:
            idx = torch.as_tensor(indices, dtype=torch.long)
            params = None
            if self.augment.random:  # draws for the global batch, this rank's slice
                drawn = self.augment.draw(len(indices) * self.world_size)
                params = drawn[self.rank * len(indices) : (self.rank + 1) * len(indices)]
            raw = cache.images[idx.to(cache.images.device)].to(self.device, non_blocking=True)
            yield self.augment(raw, params), cache.pids[idx], cache.camids[idx]
