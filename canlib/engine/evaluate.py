"""Feature extraction and evaluation on a query/gallery split (Section 4.1.4, 4.5)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from canlib.config import EvalSection, RunSections
from canlib.engine.build import build_eval_loaders, resolve_device, target_config
from canlib.engine.precision import autocast
from canlib.engine.record import run_record
from canlib.engine.weights import load_run_checkpoint, model_from_state
from canlib.metrics import evaluate_features
from canlib.model import CAN

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    flip_tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``loader``; return (descriptors, pids, camids).

    With ``flip_tta`` the descriptor is the mean of the image's and its mirror's (an
    option beyond the paper, off by default).
    """
    model.eval()
    feats, pids, camids = [], [], []
    for batch, pid, camid in loader:
        images = batch.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            f = model(images).float()
            if flip_tta:
                f = 0.5 * (f + model(torch.flip(images, dims=[3])).float())
        feats.append(f.cpu())
        pids.append(np.asarray(pid))
        camids.append(np.asarray(camid))
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def evaluate_model(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    device: torch.device,
    metric: str = "cosine",
    ap: str = "step",
    max_rank: int = 50,
    flip_tta: bool = False,
    rerank: bool = False,
    chunk_size: int = 2048,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    gather: Callable[[torch.Tensor, np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Extract query and gallery descriptors and compute CMC, mAP and mINP.

    ``gather`` (multi-process runs): combines every process's extracted (features, pids,
    camids) into the whole split's, so that every process evaluates the same model on all of it
    (:func:`canlib.engine.distributed.eval_gatherer`).

    Returns a JSON-ready dict: ``mAP``, ``mINP``, ``rank1``, ``rank3``, ``rank5``,
    ``rank10`` (fractions), the full ``cmc`` list, the AP variant and the metric used.
    """
    qf, q_pids, q_camids = extract_features(model, query_loader, device, flip_tta, amp_dtype, channels_last)
    gf, g_pids, g_camids = extract_features(model, gallery_loader, device, flip_tta, amp_dtype, channels_last)
    if gather is not None:
        qf, q_pids, q_camids = gather(qf, q_pids, q_camids)
        gf, g_pids, g_camids = gather(gf, g_pids, g_camids)
    result = evaluate_features(
        qf,
        gf,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        metric=metric,
        chunk_size=chunk_size,
        max_rank=max_rank,
        ap=ap,
        rerank=rerank,
    )
    cmc = np.asarray(result["cmc"], dtype=float)
    out: dict[str, Any] = {
        "mAP": float(result["mAP"]),
        "mINP": float(result["mINP"]),
        **{f"rank{k}": float(cmc[k - 1]) for k in (1, 3, 5, 10) if k <= len(cmc)},
        "cmc": [float(x) for x in cmc],
        "ap_variant": ap,
        "metric": metric,
        "flip_tta": flip_tta,
        "rerank": rerank,
        "num_query": len(q_pids),
        "num_gallery": len(g_pids),
        "num_valid_queries": int(result.get("num_valid_queries", len(q_pids))),
        "descriptor_dim": int(qf.shape[1]),
    }
    return out


def descriptor_slices(model: CAN) -> dict[str, list[int]]:
    """The descriptor's columns of the global features and of the local ones (``{"global": [...],
    "local": [...]}``; a model without local features has no ``"local"``): the read-out that tells
    whether local features add to the global ones or only add slices (Part-1 has global ones only)."""
    embed = model.embed_dim
    slices = {"global": model.global_indices, "local": model.local_indices}
    return {name: [i * embed + j for i in idx for j in range(embed)] for name, idx in slices.items() if idx}


def evaluate_slices(
    model: CAN, query_loader: Iterable, gallery_loader: Iterable, device: torch.device, **options: Any
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_model`'s metrics of the whole descriptor and of its global and local slices alone
    (:func:`descriptor_slices`), from one extraction; ``options`` as :func:`evaluate_model` takes them."""
    ex = {k: options.pop(k) for k in ("flip_tta", "amp_dtype", "channels_last") if k in options}
    qf, q_pids, q_camids = extract_features(model, query_loader, device, **ex)
    gf, g_pids, g_camids = extract_features(model, gallery_loader, device, **ex)
    out = {}
    for name, cols in {"all": list(range(qf.shape[1])), **descriptor_slices(model)}.items():
        result = evaluate_features(qf[:, cols], gf[:, cols], q_pids, g_pids, q_camids, g_camids, **options)
        cmc = np.asarray(result["cmc"], dtype=float)
        out[name] = {"mAP": float(result["mAP"]), "rank1": float(cmc[0]), "mINP": float(result["mINP"])}
        out[name]["descriptor_dim"] = len(cols)
    return out


def evaluation_options(
    section: EvalSection,
    metric: str | None = None,
    ap: str | None = None,
    flip_tta: bool | None = None,
    rerank: bool | None = None,
) -> dict[str, Any]:
    """The ``eval`` section as :func:`evaluate_model`'s keyword arguments; a given ``metric``, ``ap``,
    ``flip_tta`` or ``rerank`` (the ``evaluate`` command's options) replaces the section's.

    The one place that turns the configuration into evaluation arguments: the trainer's evaluations
    and :func:`evaluate_run` both read it.
    """
    given: dict[str, Any] = {"metric": metric, "ap": ap, "flip_tta": flip_tta, "rerank": rerank}
    section = dataclasses.replace(section, **{key: value for key, value in given.items() if value is not None})
    return dataclasses.asdict(section)


def evaluate_run(
    run_dir: str | Path,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str | None = "auto",
    metric: str | None = None,
    ap: str | None = None,
    flip_tta: bool | None = None,
    rerank: bool | None = None,
    out: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate a training run's model on a query/gallery split: its own, or another data set's.

    ``dataset``/``data_root`` name the target (the run's data set when None: e.g. a moved root);
    the classifier size comes from the checkpoint, i.e. the *source* data set. ``metric``,
    ``ap``, ``flip_tta`` and ``rerank`` default to the run's ``eval`` settings. Weights trained
    with another configuration than the run's ``config.yaml`` are refused unless ``force``
    (:func:`canlib.engine.weights.load_run_checkpoint`). Returns the metrics (as
    :func:`evaluate_model`) with ``evaluation`` (source, target, options, checkpoint) and
    ``record`` (as a training run's ``run.json``); ``out`` also writes them as JSON.
    """
    source, ckpt, state = load_run_checkpoint(run_dir, checkpoint, force=force)
    cfg = target_config(source, dataset, None if data_root is None else str(data_root))
    dev = resolve_device(device)
    run = RunSections.from_config(cfg)
    model, meta = model_from_state(cfg, state, ckpt, dev)
    _, query_loader, gallery_loader = build_eval_loaders(run.data)
    options = evaluation_options(run.eval, metric, ap, flip_tta, rerank)
    metrics = evaluate_model(model, query_loader, gallery_loader, dev, **options)
    recorded = {key: value for key, value in options.items() if key != "chunk_size"}
    result = {
        **metrics,
        "evaluation": _evaluation_record(run_dir, ckpt, meta, source, cfg, model.num_classes, recorded),
        "record": run_record(cfg, dev),
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "%s on %s (%s): mAP %.4f rank-1 %.4f",
        run_dir,
        cfg["data"]["dataset"],
        cfg["data"]["root"],
        metrics["mAP"],
        metrics["rank1"],
    )
    return result


def _evaluation_record(
    run_dir: str | Path,
    ckpt: Path,
    meta: dict[str, Any],
    source: dict[str, Any],
    cfg: dict[str, Any],
    num_train_pids: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """What :func:`evaluate_run` evaluated: the source run and checkpoint, the target split, the options."""
    split = "validation" if int(cfg["data"].get("val_ids") or 0) > 0 else "test"
    return {
        "source_run": str(run_dir),
        "checkpoint": str(ckpt),
        "epoch": meta.get("epoch"),
        "source": {
            "dataset": source["data"]["dataset"],
            "root": source["data"]["root"],
            "num_train_pids": int(num_train_pids),
        },
        "target": {
            "dataset": cfg["data"]["dataset"],
            "root": cfg["data"]["root"],
            "split": split,
            "options": cfg["data"]["options"],
        },
        "options": options,
    }


def evaluation_path(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Where an evaluation is recorded by default: ``RUN/evaluations/<data set>-<hash>.json``.

    The hash covers the target root, the checkpoint and the options, so another target or
    option gets another file and a repeated evaluation overwrites its own.
    """
    ev = result["evaluation"]
    key = {
        "root": str(Path(ev["target"]["root"]).resolve()),
        "checkpoint": str(Path(ev["checkpoint"]).resolve()),
        "options": ev["options"],
        "split": ev["target"]["split"],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(run_dir) / "evaluations" / f"{str(ev['target']['dataset']).lower()}-{digest}.json"


def record_evaluation(run_dir: str | Path, result: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write an :func:`evaluate_run` result as JSON to ``out`` (default :func:`evaluation_path`)."""
    path = Path(out) if out else evaluation_path(run_dir, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
