"""``python -m canlib train`` and ``python -m canlib evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from canlib.config import ConfigError, load_config

log = logging.getLogger("canlib")

#: Exit codes: 0 success, 2 bad input (config, data, arguments), 3 training diverged.
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def _train(args: argparse.Namespace) -> int:
    from canlib.engine.trainer import TrainingDiverged, train

    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={args.data_root}")
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_progress:
        overrides.append("train.progress=false")
    try:
        cfg = load_config(args.config, overrides)
        metrics = train(cfg, args.output, device=args.device, resume=args.resume)
    except TrainingDiverged as exc:
        log.error("%s", exc)
        return EXIT_DIVERGED
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        # RuntimeError: e.g. ImageNet weights asked for offline (the message says what to pass).
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    print(json.dumps({k: v for k, v in metrics.items() if k != "cmc"}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from canlib.engine.build import build_dataset, build_loaders, build_model, resolve_device
    from canlib.engine.evaluate import evaluate_model

    run = Path(args.run)
    try:
        overrides = []
        if args.data_root is not None:
            overrides.append(f"data.root={args.data_root}")
        cfg = load_config(run / "config.yaml", overrides)
        device = resolve_device(args.device)
        dataset = build_dataset(cfg)
        _, query_loader, gallery_loader = build_loaders(cfg, dataset, int(cfg["seed"]))
        cfg["model"]["pretrained"] = None  # the checkpoint holds the weights
        model = build_model(cfg, dataset.num_train_pids).to(device)
        ckpt = Path(args.checkpoint) if args.checkpoint else run / "checkpoints" / "last.pt"
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    e = cfg["eval"]
    metrics = evaluate_model(
        model, query_loader, gallery_loader, device,
        metric=args.metric or e["metric"], ap=args.ap or e["ap"], max_rank=int(e["max_rank"]),
        flip_tta=args.flip_tta or bool(e["flip_tta"]), rerank=args.rerank or bool(e["rerank"]),
        chunk_size=int(e["chunk_size"]),
    )
    text = json.dumps({k: v for k, v in metrics.items() if k != "cmc"}, indent=2)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n")
    print(text)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``evaluate`` sub-commands."""
    p = subparsers.add_parser(
        "train",
        help="train CAN with a profile from configs/",
        description="Train CAN. Example: python -m canlib train --config configs/cpu.yaml "
        "--data-root data/synthetic --output runs/cpu model.parts=[1,3,5]",
    )
    p.add_argument("--config", required=True, help="profile YAML (configs/paper-market1501.yaml, cpu.yaml, smoke.yaml)")
    p.add_argument("--data-root", help="folder holding the data set (sets data.root)")
    p.add_argument("--output", required=True, help="run folder: config, log, checkpoints, metrics.json")
    p.add_argument("--epochs", type=int, help="override optim.epochs")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. optim.lr=1e-4")
    p.set_defaults(func=_train)

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run on its query/gallery split",
        description="Evaluate the checkpoint of a run folder written by `train`.",
    )
    e.add_argument("--run", required=True, help="a run folder written by `train`")
    e.add_argument("--checkpoint", help="a checkpoint file (default: RUN/checkpoints/last.pt)")
    e.add_argument("--data-root", help="data root, if it moved since training")
    e.add_argument("--device", default="auto")
    e.add_argument("--metric", choices=["cosine", "euclidean", "sqeuclidean"])
    e.add_argument("--ap", choices=["step", "trapezoid"], help="AP variant (default: the run's)")
    e.add_argument("--flip-tta", action="store_true", help="average with the mirrored image (beyond the paper)")
    e.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (beyond the paper)")
    e.add_argument("--out", help="write the metrics (with the full CMC) to this JSON file")
    e.set_defaults(func=_evaluate)
