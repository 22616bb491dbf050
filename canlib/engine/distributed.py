"""Distributed data parallel training with PyTorch's own launcher (``torchrun``).

``torchrun --nproc_per_node=N -m canlib train ...`` starts N processes; each reads its rank
from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``)
and :func:`init_distributed` joins the process group: NCCL on CUDA (one device per process,
``cuda:LOCAL_RANK``), gloo on the CPU. ``python -m canlib train`` (no ``WORLD_SIZE``) stays a
single process and never touches ``torch.distributed``.

The paper's batch keeps its meaning: one step sees ONE global PK batch (P ids x K images);
:class:`GlobalBatchShard` gives rank r the ids ``[r P/N, (r+1) P/N)`` of every batch, so the
N shards of a step are disjoint and together are exactly the batch one process would see.
Every rank gathers the shards' features, logits and labels with :func:`gather_with_grad`
(FastReID's ``GatherLayer``: all-gather forward, all-reduce backward) and computes the
whole loss of the global batch, so the batch-hard triplet mines over all P x K images and
the loss value is the one-process value on every rank. Why the gradients are then exactly
the one-process gradients: every rank's loss is the same L, so the all-reduced backward hands
each shard N dL/dx; DistributedDataParallel averages parameter gradients over the N ranks,
which divides that N out again. The centres of the center loss are not in the DDP model:
every rank computes their (identical) full gradient itself.

Batch statistics are the one exception: BatchNorm normalises each rank's shard with the
shard's own statistics unless ``train.sync_bn`` is set (:func:`convert_sync_batchnorm`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler, Subset

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=nn.Module)
#: What :func:`eval_gatherer` returns: (features, pids, camids) of this rank -> of every rank.
Gather = Callable[[torch.Tensor, np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank and the process-group backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints and metrics."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """What run.json records."""
        return {"world_size": self.world_size, "backend": self.backend or "none"}


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(device: str | None = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any); return this process's info and device.

    On CUDA each process takes ``cuda:LOCAL_RANK`` and NCCL; on the CPU, gloo.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo(), _plain_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    dev = _plain_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local} has no GPU: {torch.cuda.device_count()} visible, "
                "start at most that many processes per node"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    if rank != 0:  # one copy of the progress log: rank 0's
        logging.getLogger("canlib").setLevel(logging.WARNING)
    log.info("distributed: %d processes, backend %s, rank %d on %s", world, backend, rank, dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend), dev


def _plain_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was asked for but CUDA is not available on this machine")
    return dev


def shutdown_distributed(wait: bool = True) -> None:
    """Leave the process group (no-op without one); ``wait``: for every rank first."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def training_module(model: nn.Module, device: torch.device, info: DistInfo, compile_model: bool) -> Callable[..., Any]:
    """What a training step calls: ``model`` in DDP (several processes), compiled if asked.

    ``model`` itself stays the plain module: checkpoints and evaluation use it.
    """
    module: Callable[..., Any] = model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile_model:
        module = torch.compile(module)
    return module


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank, so that every rank evaluates one model."""
    if info.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


# --------------------------------------------------------------------------- gathering


class GatherLayer(torch.autograd.Function):
    """All-gather with gradient (FastReID's ``GatherLayer``): the backward all-reduces the
    gradients of every rank's copy and returns this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 in rank order, differentiably (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(GatherLayer.apply(x), dim=0)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; ranks may hold different row counts (no gradient)."""
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    rows = max(int(c) for c in counts)
    padded = x.new_zeros((rows, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(c)] for o, c in zip(out, counts, strict=True)])


def eval_gatherer(device: torch.device) -> Gather:
    """A ``gather`` for :func:`canlib.engine.evaluate.evaluate_model`: every rank's extracted
    (features, pids, camids), concatenated in rank order (= record order, see :func:`shard_test_loader`)."""

    def gather(
        feats: torch.Tensor, pids: np.ndarray, camids: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        f = all_gather_rows(feats.to(device)).cpu()
        ids = torch.as_tensor(np.stack([pids, camids], 1).astype(np.int64), device=device)
        gathered = all_gather_rows(ids).cpu().numpy()
        return f, gathered[:, 0], gathered[:, 1]

    return gather


# --------------------------------------------------------------------------- sharding


class GlobalBatchShard(Sampler[list[int]]):
    """Rank ``rank``'s share of every global PK batch: ids ``[rank P/N, (rank+1) P/N)`` with their K images.

    ``batches`` is a one-process :class:`canlib.data.PKSampler` (``world_size=1``), whose batches
    list K consecutive indices per id; the N shards of a batch are disjoint and complete.
    """

    def __init__(self, batches: Any, rank: int, world_size: int) -> None:
        p = int(batches.p)
        if p % world_size:
            raise ValueError(
                f"data.p={p} identities per global batch cannot be split evenly over "
                f"{world_size} processes; choose a process count that divides {p}"
            )
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.p, self.k = p // world_size, int(batches.k)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (as :meth:`PKSampler.set_epoch`)."""
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            size = len(batch) // self.world_size
            yield batch[self.rank * size : (self.rank + 1) * size]

    def __len__(self) -> int:
        return len(self.batches)


def shard_train_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """The same loader with its PK batch sampler wrapped in :class:`GlobalBatchShard`."""
    return DataLoader(
        loader.dataset,
        batch_sampler=GlobalBatchShard(loader.batch_sampler, rank, world_size),
        num_workers=loader.num_workers,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        pin_memory=loader.pin_memory,
        persistent_workers=False,
    )


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous block ``[start, stop)`` of ``n`` records (sizes differ by at most 1)."""
    sizes = [len(a) for a in np.array_split(np.arange(n), world_size)]
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def shard_test_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """An ordered loader over rank ``rank``'s contiguous block of the records."""
    records = loader.dataset
    if not isinstance(records, Sized):
        raise TypeError(f"shard_test_loader needs a data set with a length, got {type(records).__name__}")
    start, stop = shard_bounds(len(records), rank, world_size)
    return DataLoader(
        Subset(loader.dataset, range(start, stop)),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )


# --------------------------------------------------------------------------- batch norm


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised batch norm for CPU processes (``nn.SyncBatchNorm`` accepts GPU inputs only).

    In training, mean and variance are taken over the whole global batch (sums all-reduced
    with gradient); running statistics update with the global unbiased variance, as BatchNorm
    does on one process. Otherwise (eval, or one process) it is plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() / x.shape[1]])
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp(min=0)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean, var, n)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        """Running statistics with the global batch's mean and unbiased variance (``n`` values per channel)."""
        running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        assert running_mean is not None and running_var is not None and tracked is not None  # track_running_stats
        m = self.momentum if self.momentum is not None else 1.0 / float(tracked + 1)
        running_mean.mul_(1 - m).add_(m * mean.detach())
        running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        tracked.add_(1)


def convert_sync_batchnorm(model: _M, device: torch.device) -> _M:
    """Every BatchNorm of ``model`` synchronised over the process group: ``nn.SyncBatchNorm``
    on CUDA, :class:`GlooSyncBatchNorm` on the CPU (same parameters, buffers and state-dict keys).

    ``model`` itself is returned, its BatchNorm children replaced (a network, not a lone BatchNorm).
    """
    if device.type == "cuda":
        return cast(_M, nn.SyncBatchNorm.convert_sync_batchnorm(model))
    return cast(_M, _convert_gloo(model))


def _convert_gloo(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        for name, p in module.named_parameters(recurse=False):
            getattr(out, name).requires_grad_(p.requires_grad)
    for name, child in module.named_children():
        out.add_module(name, _convert_gloo(child))
    return out
