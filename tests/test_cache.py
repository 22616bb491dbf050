"""The decoded-image cache gives the file loader's batches: exactly, with and without augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canlib.config import RunSections, load_config
from canlib.data import PKSampler, build_train_loader, load_dataset
from canlib.data.cache import BatchAugment, CachedTrainLoader, ImageCache, cache_storage
from canlib.engine.build import build_loaders
from canlib.engine.distributed import GlobalBatchShard
from canlib.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
AUGMENT = {"flip": True, "pad": 6, "random_erasing": 0.5}


def _file_batches(dataset, epoch: int, seed: int = 0, **augment) -> list:
    loader = build_train_loader(dataset, 64, 32, p=4, k=2, seed=1, **augment)
    loader.batch_sampler.set_epoch(epoch)
    torch.manual_seed(seed)
    return list(loader)


def _cached(dataset, rank: int = 0, world: int = 1, **augment) -> CachedTrainLoader:
    batches = PKSampler([pid for _, pid, _ in dataset.train], p=4, k=2, seed=1)
    if world > 1:
        batches = GlobalBatchShard(batches, rank, world)
    return CachedTrainLoader(
        dataset.train, batches, BatchAugment(64, 32, **augment), "memory", "cpu", rank=rank, world_size=world
    )


def _cached_batches(loader: CachedTrainLoader, epoch: int, seed: int = 0) -> list:
    loader.batch_sampler.set_epoch(epoch)
    torch.manual_seed(seed)
    return list(loader)


@pytest.fixture(scope="module")
def dataset(tiny_data):
    return load_dataset("synthetic", tiny_data)


@pytest.mark.parametrize("augment", [{}, AUGMENT], ids=["plain", "flip-pad-erasing"])
def test_cached_batches_equal_the_file_loaders(dataset, augment):
    cached = _cached(dataset, **augment)
    for epoch in (1, 2):
        files, cache = _file_batches(dataset, epoch, **augment), _cached_batches(cached, epoch)
        assert len(files) == len(cache) == len(cached) > 0
        for (fx, fp, fc), (cx, cp, cc) in zip(files, cache, strict=True):
            assert cx.dtype == torch.float32 and cx.shape == fx.shape == (8, 3, 64, 32)
            assert torch.equal(fx.as_subclass(torch.Tensor), cx) and torch.equal(fp, cp) and torch.equal(fc, cc)
    if augment:  # the draws did something: another seed gives other batches
        other = _cached_batches(cached, 1, seed=1)
        assert not all(torch.equal(a[0], b[0]) for a, b in zip(other, _cached_batches(cached, 1), strict=True))


def test_two_ranks_see_the_one_process_global_batch_with_its_augmentations(dataset):
    whole = _cached_batches(_cached(dataset, **AUGMENT), 3)
    shards = [_cached_batches(_cached(dataset, r, 2, **AUGMENT), 3) for r in (0, 1)]
    for step, (x, pids, _) in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][step][0], shards[1][step][0]]), x)
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), pids)


def test_cache_holds_uint8_images_and_builds_once(dataset):
    loader = _cached(dataset)
    assert loader.cache is None  # nothing decoded until used
    cache = loader.build_cache()
    assert isinstance(cache, ImageCache) and cache.images.dtype == torch.uint8
    assert cache.images.shape == (len(dataset.train), 3, 64, 32) and cache.nbytes == cache.images.numel()
    assert loader.build_cache() is cache
    assert cache_storage("device", torch.device("cpu"), 10**12) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"data\.cache"):
        cache_storage("none", torch.device("cpu"), 1)


def test_build_loaders_reads_data_cache(tiny_data):
    cfg = load_config(
        None,
        [
            f"data.root={tiny_data}",
            "data.dataset=synthetic",
            "data.cache=memory",
            "data.height=64",
            "data.width=32",
            "data.p=4",
            "data.k=2",
            "data.num_workers=0",
        ],
    )
    train, _, _ = build_loaders(RunSections.from_config(cfg).data, load_dataset("synthetic", tiny_data), 0)
    assert isinstance(train, CachedTrainLoader) and train.mode == "memory"
    cfg["data"]["cache"] = "disk"
    with pytest.raises(ValueError, match=r"data\.cache must be one of"):
        RunSections.from_config(cfg)


def test_trainer_with_the_cache_trains_on_the_same_batches(tiny_data, tmp_path):
    losses = {}
    for mode in ("none", "memory"):
        cfg = load_config(
            REPO / "configs" / "smoke.yaml",
            [
                f"data.root={tiny_data}",
                f"data.cache={mode}",
                "train.max_batches_per_epoch=1",
                "data.flip=true",
                "data.verify_images=false",
            ],
        )
        trainer = Trainer.from_config(cfg, tmp_path / mode, device="cpu")
        losses[mode] = trainer.train_one_epoch(1)["loss_total"]
    assert losses["memory"] == losses["none"]
