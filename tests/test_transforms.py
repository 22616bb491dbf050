"""Transforms and loaders: shapes, normalisation, PK-sampled training batches, ordered test batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from canlib.data import IMAGENET_MEAN, build_test_loaders, build_train_loader, build_transforms, load_dataset
from canlib.data.synthetic import make_synthetic


def test_shapes_and_normalisation() -> None:
    img = Image.new("RGB", (64, 128), tuple(int(255 * m) for m in IMAGENET_MEAN))
    out = build_transforms(384, 128, train=False)(img)
    assert out.shape == (3, 384, 128) and out.dtype == torch.float32
    assert out.abs().max() < 0.05  # the mean colour normalises to ~0
    raw = build_transforms(32, 16, normalize=False)(img)
    assert raw.shape == (3, 32, 16) and raw.min() >= 0.0 and raw.max() <= 1.0


@pytest.mark.parametrize(
    "opts", [{"flip": True}, {"pad": 10}, {"random_erasing": 1.0}, {"flip": True, "pad": 4, "random_erasing": 0.5}]
)
def test_augmentations_keep_shape(opts: dict) -> None:
    img = Image.new("RGB", (50, 100), (200, 10, 10))
    assert build_transforms(96, 32, train=True, **opts)(img).shape == (3, 96, 32)


def test_augmentations_off_at_test_time() -> None:
    img = Image.effect_noise((32, 64), 50).convert("RGB")
    t = build_transforms(64, 32, train=False, flip=True, pad=8, random_erasing=1.0)
    assert torch.equal(t(img), t(img))


def test_loaders(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "s", ids=16, images_per_id=6, seed=1)
    ds = load_dataset("synthetic", tmp_path / "s")
    loader = build_train_loader(ds, height=32, width=16, p=4, k=2, seed=0)
    loader.batch_sampler.set_epoch(0)
    images, pids, _cams = next(iter(loader))
    assert images.shape == (8, 3, 32, 16) and len(set(pids.tolist())) == 4
    assert len(loader) == ds.num_train_pids // 4
    query, gallery = build_test_loaders(ds, height=32, width=16, batch_size=16)
    seen = [int(p) for _, pid, _ in query for p in pid]
    assert seen == [pid for _, pid, _ in ds.query]
    assert sum(len(x[0]) for x in gallery) == len(ds.gallery)


def test_train_loader_workers_deterministic(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "s", ids=12, images_per_id=5, seed=2)
    ds = load_dataset("synthetic", tmp_path / "s")

    def first_batch() -> torch.Tensor:
        loader = build_train_loader(
            ds, height=32, width=16, p=4, k=2, seed=5, num_workers=1, random_erasing=0.5, flip=True
        )
        return next(iter(loader))[0]

    assert torch.equal(first_batch(), first_batch())
