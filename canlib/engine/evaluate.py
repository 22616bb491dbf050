"""Feature extraction and evaluation on a query/gallery split (Section 4.1.4, 4.5)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
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
from canlib.files import write_text_atomically
from canlib.metrics import evaluate_features, pairwise_distance
from canlib.metrics.distance import to_numpy
from canlib.metrics.search import protocol_topk
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
    keep: dict[str, Any] | None = None,
    per_query: bool = False,
) -> dict[str, Any]:
    """Extract query and gallery descriptors and compute CMC, mAP and mINP.

    ``per_query``: also return each query's AP (``ap_per_query``, in the query split's order, ``None``
    for a query the protocol skips), what an interval over test identities is computed from.

    ``keep``: filled with what the ranked lists are drawn from: the descriptors ``qf`` and ``gf``,
    the labels (``q_pids``, ``g_pids``, ``q_camids``, ``g_camids``) and each query's AP (``ap_per_query``,
    NaN for the queries the protocol skips).

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
        return_per_query=keep is not None or per_query,
    )
    if keep is not None:
        keep.update(qf=qf, gf=gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids)
        keep["ap_per_query"] = np.asarray(result["ap_per_query"], dtype=float)
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
    if per_query:
        out["ap_per_query"] = [None if math.isnan(a) else float(a) for a in np.asarray(result["ap_per_query"], float)]
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
    visrank: int = 0,
    order: str = "worst",
    visrank_queries: int = 20,
) -> dict[str, Any]:
    """Evaluate a training run's model on a query/gallery split: its own, or another data set's.

    ``dataset``/``data_root`` name the target (the run's data set when None: e.g. a moved root);
    the classifier size comes from the checkpoint, i.e. the *source* data set. ``metric``,
    ``ap``, ``flip_tta`` and ``rerank`` default to the run's ``eval`` settings. Weights trained
    with another configuration than the run's ``config.yaml`` are refused unless ``force``
    (:func:`canlib.engine.weights.load_run_checkpoint`). Returns the metrics (as
    :func:`evaluate_model`) with ``evaluation`` (source, target, options, checkpoint) and
    ``record`` (as a training run's ``run.json``); ``out`` also writes them as JSON. With ``visrank``
    K > 0, ``ranked`` holds the top-K lists of ``visrank_queries`` queries in ``order``
    (:func:`ranked_lists`; not written to JSON).
    """
    check_visrank(visrank, order, visrank_queries, bool(rerank))
    source, ckpt, state = load_run_checkpoint(run_dir, checkpoint, force=force)
    cfg = target_config(source, dataset, None if data_root is None else str(data_root))
    dev = resolve_device(device)
    run = RunSections.from_config(cfg)
    model, meta = model_from_state(cfg, state, ckpt, dev)
    target, query_loader, gallery_loader = build_eval_loaders(run.data)
    options = evaluation_options(run.eval, metric, ap, flip_tta, rerank)
    check_visrank(visrank, order, visrank_queries, bool(options["rerank"]))
    kept: dict[str, Any] | None = {} if visrank else None
    metrics = evaluate_model(model, query_loader, gallery_loader, dev, **options, keep=kept, per_query=True)
    recorded = {key: value for key, value in options.items() if key != "chunk_size"}
    result = {
        **metrics,
        "evaluation": _evaluation_record(run_dir, ckpt, meta, source, cfg, model.num_classes, recorded),
        "record": run_record(cfg, dev),
    }
    if out is not None:
        write_text_atomically(out, json.dumps(result, indent=2) + "\n")
    if kept is not None:
        paths = ([r[0] for r in target.query], [r[0] for r in target.gallery])
        result["ranked"] = ranked_lists(kept, *paths, visrank, order, visrank_queries, options["metric"])
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
    write_text_atomically(path, json.dumps({k: v for k, v in result.items() if k != "ranked"}, indent=2) + "\n")
    return path


#: Which queries' ranked lists are shown: lowest AP first (FastReID's default), highest first, or drawn at random.
ORDERS = ("worst", "best", "random")


@dataclasses.dataclass
class RankedLists:
    """Chosen queries' ranked lists as the evaluator ranks them (the protocol's junk left out).

    ``queries``: the query images; ``gallery``: per query, its top-K gallery images; ``distances`` and
    ``matches`` ``(n, K)``; ``ap`` each query's AP; ``order`` how the queries were chosen.
    """

    queries: list[str]
    gallery: list[list[str]]
    distances: np.ndarray
    matches: np.ndarray
    ap: np.ndarray
    order: str
    metric: str


def check_visrank(visrank: int, order: str, queries: int, rerank: bool) -> None:
    """Refuse ranked-list options that cannot be drawn, in one line."""
    if visrank < 0 or (visrank and queries < 1):
        raise ValueError(f"--visrank and --visrank-queries must be positive, got {visrank} and {queries}")
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    if visrank and rerank:
        raise ValueError("--visrank draws the plain distances' ranked lists: not with --rerank")


def select_queries(ap: np.ndarray, order: str, count: int, seed: int = 0) -> np.ndarray:
    """Indices of ``count`` queries with an AP: the lowest first (``worst``), the highest (``best``), or a
    random draw (``random``, from ``seed``); ties by query index."""
    valid = np.flatnonzero(np.isfinite(ap))
    if order == "worst":
        chosen = valid[np.argsort(ap[valid], kind="stable")]
    elif order == "best":
        chosen = valid[np.argsort(-ap[valid], kind="stable")]
    else:
        chosen = np.random.default_rng(seed).permutation(valid)
    return chosen[:count]


def ranked_lists(
    kept: dict[str, Any],
    query_paths: list[str],
    gallery_paths: list[str],
    k: int,
    order: str,
    count: int,
    metric: str,
) -> RankedLists:
    """The top-``k`` lists of ``count`` queries chosen by ``order`` (:func:`select_queries`), from what
    :func:`evaluate_model` kept; only the chosen queries' distances are computed."""
    chosen = select_queries(kept["ap_per_query"], order, count)
    dist = pairwise_distance(kept["qf"][torch.as_tensor(chosen)], kept["gf"], metric=metric)
    labels = (kept["q_pids"][chosen], kept["q_camids"][chosen], kept["g_pids"], kept["g_camids"])
    indices, matches = protocol_topk(dist, *labels, topk=min(k, len(gallery_paths)))
    return RankedLists(
        queries=[query_paths[i] for i in chosen],
        gallery=[[gallery_paths[j] for j in row] for row in indices],
        distances=np.take_along_axis(to_numpy(dist), indices, axis=1),
        matches=matches,
        ap=kept["ap_per_query"][chosen],
        order=order,
        metric=metric,
    )
