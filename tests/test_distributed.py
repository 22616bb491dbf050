"""DDP on the CPU with gloo: 2 processes = 1 process on the same global batch; exact resume; shards.

The two-process work runs once per session (:func:`ddp_results`, ``torch.multiprocessing``
spawning two gloo ranks) and the tests read its results.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from canlib.config import load_config
from canlib.data import PKSampler
from canlib.engine.distributed import GlobalBatchShard, shard_bounds
from canlib.engine.trainer import CHECKPOINT, Trainer

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
PIDS = [pid for pid in range(20) for _ in range(1 + pid % 9)]


def _cfg(root: Path, *overrides: str) -> dict:
    return load_config(
        SMOKE, [f"data.root={root}", "train.max_batches_per_epoch=1", "data.verify_images=false", *overrides]
    )


def _first_step(trainer: Trainer) -> dict:
    """Loss and gradients of the first batch of epoch 1 (no optimiser step)."""
    trainer.model.train()
    trainer.loss.train()
    trainer.train_loader.batch_sampler.set_epoch(1)
    images, pids, _ = next(iter(trainer.train_loader))
    total, terms = trainer.compute_loss(images, pids)
    total.backward()
    params = {**dict(trainer.model.named_parameters()), **{f"loss.{k}": v for k, v in trainer.loss.named_parameters()}}
    return {
        "total": float(total.detach()),
        "terms": terms,
        "shard": len(pids),
        "grads": {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None},
        "buffers": {k: b.clone() for k, b in trainer.model.named_buffers() if b.is_floating_point()},
    }


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"  # join the parent's store, as torchrun's workers do
    torch.set_num_threads(1)
    data, out_dir = Path(root), Path(out)
    step = _first_step(Trainer.from_config(_cfg(data, "train.sync_bn=true"), out_dir / "step", device="cpu"))
    torch.save(step, out_dir / f"step-rank{rank}.pt")
    Trainer.from_config(_cfg(data), out_dir / "full", device="cpu").fit()
    Trainer.from_config(_cfg(data, "optim.epochs=1"), out_dir / "split", device="cpu").fit()  # "interrupted"
    Trainer.from_config(_cfg(data), out_dir / "split", device="cpu").fit(resume=True)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    # The parent holds the rendezvous store on a port the kernel picked, for as long as the workers run
    # (as torchrun's agent does): no port is chosen, released and hoped for.
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_worker, args=(2, store.port, str(tiny_data), str(out)), nprocs=2, join=True)
    del store
    return out


def test_two_processes_match_one_on_the_same_global_batch(ddp_results, tiny_data, tmp_path):
    one = _first_step(Trainer.from_config(_cfg(tiny_data), tmp_path / "one", device="cpu"))
    ranks = [torch.load(ddp_results / f"step-rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert one["shard"] == 8 and [r["shard"] for r in ranks] == [4, 4]  # 4 ids x 2 images, split in two
    for r in ranks:
        assert r["total"] == pytest.approx(one["total"], rel=1e-5)
        assert r["terms"]["triplet"] == pytest.approx(one["terms"]["triplet"], rel=1e-5)
        assert r["grads"].keys() == one["grads"].keys()
        for name, g in one["grads"].items():  # float tolerance, relative to the tensor's largest entry
            assert (r["grads"][name] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-8, name
        for name, b in one["buffers"].items():  # synchronised BN: the one-process running statistics
            torch.testing.assert_close(r["buffers"][name], b, rtol=1e-4, atol=1e-6, msg=name)


def test_interrupted_two_process_run_resumes_exactly(ddp_results):
    full, split = ddp_results / "full", ddp_results / "split"
    assert (full / "metrics.json").read_text() == (split / "metrics.json").read_text()
    a = torch.load(full / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(split / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((full / "run.json").read_text())
    assert record["distributed"] == {"world_size": 2, "backend": "gloo"}
    log = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log] == [1, 2] and all(x["images"] == 8 for x in log)  # global batches
    assert len(list((full / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's writer alone


@pytest.mark.parametrize("world", [2, 4])
def test_global_batch_shards_are_disjoint_and_complete(world):
    full = PKSampler(PIDS, p=4, k=3, seed=5)
    shards = [GlobalBatchShard(PKSampler(PIDS, p=4, k=3, seed=5), r, world) for r in range(world)]
    for s in [*shards, full]:
        s.set_epoch(2)
    per_rank = [list(s) for s in shards]
    assert all(len(s) == len(full) == len(b) for s, b in zip(shards, per_rank, strict=True))
    for step, batch in enumerate(full):
        parts = [b[step] for b in per_rank]
        assert [i for part in parts for i in part] == batch  # complete, in order: the one-process batch
        ids = [{PIDS[i] for i in p} for p in parts]
        assert len(set().union(*ids)) == sum(map(len, ids)) == 4  # disjoint: no id on two ranks
        for p in parts:  # whole identities: p / world ids with k images each
            assert set(Counter(PIDS[i] for i in p).values()) == {3} and len(p) == 3 * 4 // world


def test_shards_refuse_an_uneven_split_and_cover_test_records():
    with pytest.raises(ValueError, match=r"data\.p=4 .* 3 processes"):
        GlobalBatchShard(PKSampler(PIDS, p=4, k=2), 0, 3)
    bounds = [shard_bounds(11, r, 3) for r in range(3)]
    assert bounds == [(0, 4), (4, 8), (8, 11)]
