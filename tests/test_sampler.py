"""PK sampling: batch composition, determinism per (seed, epoch), epoch definitions and sharding."""

from __future__ import annotations

from collections import Counter

import pytest

from canlib.data import PKSampler

# 20 ids with 1..9 images each (some fewer than k)
PIDS = [pid for pid in range(20) for _ in range(1 + pid % 9)]


def _check_batch(batch: list[int], p: int, k: int) -> None:
    assert len(batch) == p * k
    per_id = Counter(PIDS[i] for i in batch)
    assert len(per_id) == p and set(per_id.values()) == {k}


@pytest.mark.parametrize("epoch_mode", ["ids", "images"])
def test_batches_hold_p_ids_times_k(epoch_mode: str) -> None:
    sampler = PKSampler(PIDS, p=4, k=4, seed=0, epoch=epoch_mode)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        _check_batch(batch, 4, 4)
        for pid in {PIDS[i] for i in batch}:  # k distinct images when the id has >= k
            if PIDS.count(pid) >= 4:
                assert len({i for i in batch if PIDS[i] == pid}) == 4


def test_epoch_covers_each_id_once() -> None:
    sampler = PKSampler(PIDS, p=4, k=2, seed=1)
    assert len(sampler) == 20 // 4
    ids = [PIDS[i] for b in sampler for i in b[::2]]
    assert sorted(ids) == list(range(20))


def test_images_epoch_uses_images_about_once() -> None:
    sampler = PKSampler(PIDS, p=4, k=2, seed=1, epoch="images")
    used = [i for b in sampler for i in b]
    assert len(used) >= 0.6 * len(PIDS) and len(set(used)) >= 0.6 * len(PIDS)


def test_deterministic_per_seed_and_epoch() -> None:
    a, b = PKSampler(PIDS, 4, 4, seed=7), PKSampler(PIDS, 4, 4, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKSampler(PIDS, 4, 4, seed=8)) != first


@pytest.mark.parametrize("epoch_mode", ["ids", "images"])
def test_sharding_is_disjoint_with_equal_counts(epoch_mode: str) -> None:
    full = PKSampler(PIDS, p=2, k=2, seed=3, epoch=epoch_mode)
    shards = [PKSampler(PIDS, p=2, k=2, seed=3, rank=r, world_size=3, epoch=epoch_mode) for r in range(3)]
    for s in [*shards, full]:
        s.set_epoch(5)
    parts = [list(s) for s in shards]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(shards[0]) == len(full) // 3
    keys = [tuple(b) for p in parts for b in p]
    assert len(keys) == len(set(keys))
    assert set(keys) <= {tuple(b) for b in full}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least p=30"):
        PKSampler(PIDS, p=30, k=4)
    with pytest.raises(ValueError):
        PKSampler(PIDS, p=4, k=4, rank=2, world_size=2)
