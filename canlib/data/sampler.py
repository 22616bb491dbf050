"""PK sampling (Section 4.5): every batch holds P identities with K images each.

The paper's batch is 32 = 8 ids x 4 images, which the batch-hard triplet loss and the
center loss need (each anchor must have positives in the batch). What an "epoch" is
the paper does not say; two definitions are offered:

* ``epoch="ids"`` (default): every training id appears in exactly one batch per epoch,
  so an epoch has ``num_ids // p`` batches (the ids left over after shuffling wait for
  the next epoch). On Market-1501: 751 // 8 = 93 batches.
* ``epoch="images"``: every image is used about once per epoch, as the common re-ID
  libraries do: an id with n images contributes ``max(1, n // k)`` groups of k, and
  batches are filled with p groups of distinct ids until fewer than p ids have groups
  left (Market-1501: about 370 batches).

Within a group, an id with fewer than k images is sampled with replacement; otherwise
k distinct images. Single-image identities and a k above the median images per identity are
logged as warnings when the sampler is built (:func:`canlib.data.checks.check_training`).
The order depends only on ``(seed, epoch)``; call :meth:`PKSampler.set_epoch` before
each epoch. With ``world_size > 1`` the epoch's batches are cut to a multiple of
``world_size`` and rank ``r`` takes batches ``r, r + world_size, ...``: disjoint, equal counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from canlib.data.checks import check_training, report_findings

#: What one epoch is (the ``epoch`` argument): every identity once, or about every image once.
EPOCH_MODES = ("ids", "images")


class PKSampler(Sampler[list[int]]):
    """A batch sampler yielding lists of ``p * k`` dataset indices (p distinct ids, k images each)."""

    def __init__(
        self,
        pids: Sequence[int],
        p: int = 8,
        k: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: str = "ids",
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be positive, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if epoch not in EPOCH_MODES:
            raise ValueError(f"epoch must be 'ids' or 'images', got {epoch!r}")
        index: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            index[int(pid)].append(i)
        if len(index) < p:
            raise ValueError(f"PK sampling needs at least p={p} identities, the data has {len(index)}")
        report_findings(check_training(pids, k))  # warnings only: single-image identities, k above the typical count
        self.pids = sorted(index)
        self.index = {pid: np.asarray(idx) for pid, idx in index.items()}
        self.p, self.k, self.seed, self.rank, self.world_size, self.mode = p, k, seed, rank, world_size, epoch
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def _group(self, pid: int, rng: np.random.Generator) -> list[int]:
        idx = self.index[pid]
        return [int(i) for i in rng.choice(idx, self.k, replace=len(idx) < self.k)]

    def _epoch_batches(self) -> list[list[int]]:
        """All batches of the current epoch (before sharding)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[list[int]] = []
        if self.mode == "ids":
            order = [self.pids[i] for i in rng.permutation(len(self.pids))]
            for b in range(len(order) // self.p):
                batches.append([i for pid in order[b * self.p : (b + 1) * self.p] for i in self._group(pid, rng)])
        else:
            groups: dict[int, list[list[int]]] = {}
            for pid in self.pids:
                idx = self.index[pid]
                if len(idx) < self.k:
                    groups[pid] = [self._group(pid, rng)]
                else:
                    perm = [int(i) for i in rng.permutation(idx)]
                    groups[pid] = [perm[j * self.k : (j + 1) * self.k] for j in range(len(perm) // self.k)]
            while True:
                alive = [pid for pid in self.pids if groups[pid]]
                if len(alive) < self.p:
                    break
                weights = np.array([len(groups[pid]) for pid in alive], dtype=float)
                chosen = rng.choice(len(alive), self.p, replace=False, p=weights / weights.sum())
                batches.append([i for c in chosen for i in groups[alive[int(c)]].pop()])
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        usable = len(batches) - len(batches) % self.world_size
        yield from batches[self.rank : usable : self.world_size]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch."""
        return len(self._epoch_batches()) // self.world_size
