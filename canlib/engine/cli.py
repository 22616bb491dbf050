"""``python -m canlib train`` and ``python -m canlib evaluate``."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pickle
import shlex
from collections.abc import Callable
from pathlib import Path

from canlib.config import ConfigError, load_config
from canlib.engine.checkpoint import CHECKPOINT
from canlib.metrics import AP_VARIANTS, METRICS

# A child of the package logger "canlib": `python -m canlib` sets up the handlers (logging.basicConfig in
# canlib/__main__.py) and torchrun ranks other than 0 quiet "canlib" to warnings (canlib/engine/distributed.py).
log = logging.getLogger(__name__)

#: Exit codes: 0 success, 2 bad input (config, data, files, arguments), 3 training diverged,
#: 130 interrupted (Ctrl-C; the shells' 128 + SIGINT).
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def _user_error(exc: BaseException) -> str | None:
    """One line for an error in the user's input (configuration, data, files, device); None for
    anything else, a bug, which keeps its traceback."""
    from canlib.engine.trainer import error_line

    if isinstance(exc, KeyError) and exc.args:  # str(KeyError) quotes its message
        return str(exc.args[0])
    if isinstance(exc, (ConfigError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)):
        return error_line(exc)
    return None


def _reports_user_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the user's mistakes into one logged line and exit code 2, Ctrl-C into 130."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            log.error("interrupted")
            return EXIT_INTERRUPTED
        except Exception as exc:
            message = _user_error(exc)
            if message is None:
                raise
            log.error("%s", message)
            return EXIT_BAD_INPUT

    return run


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues an interrupted ``train``."""
    cmd = ["python", "-m", "canlib", "train", "--config", str(args.config)]
    for flag, value in (
        ("--data-root", args.data_root),
        ("--output", args.output),
        ("--epochs", args.epochs),
        ("--seed", args.seed),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    if args.device != "auto":
        cmd += ["--device", args.device]
    cmd += ["--no-progress"] * bool(args.no_progress) + ["--resume", *args.overrides]
    return shlex.join(cmd)


@_reports_user_errors
def _train(args: argparse.Namespace) -> int:
    from canlib.engine.trainer import TrainingDiverged, TrainingInterrupted, train

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
        metrics = train(cfg, args.output, device=args.device, resume=args.resume, overwrite=args.overwrite)
    except TrainingDiverged as exc:
        log.error("%s", exc)
        return EXIT_DIVERGED
    except TrainingInterrupted as exc:
        log.error("%s%s", exc, f"; to continue: {_resume_command(args)}" if exc.resumable else "")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        log.error("interrupted before training began: nothing was trained")
        return EXIT_INTERRUPTED
    # Other errors: _reports_user_errors (one line and exit code 2 for the user's mistakes, e.g.
    # ImageNet weights asked for offline: the message says what to pass).
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun: rank 0 prints the metrics
        print(json.dumps({k: v for k, v in metrics.items() if k != "cmc"}, indent=2))
    return 0


def evaluation_path(run_dir: str | Path, result: dict) -> Path:
    """Where ``evaluate`` records an evaluation without ``--out``: ``RUN/evaluations/<data set>-<hash>.json``.

    The hash covers the target root, the checkpoint and the options, so another target or
    option gets another file and a repeated evaluation overwrites its own.
    """
    import hashlib

    ev = result["evaluation"]
    key = {
        "root": str(Path(ev["target"]["root"]).resolve()),
        "checkpoint": str(Path(ev["checkpoint"]).resolve()),
        "options": ev["options"],
        "split": ev["target"]["split"],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(run_dir) / "evaluations" / f"{str(ev['target']['dataset']).lower()}-{digest}.json"


@_reports_user_errors
def _evaluate(args: argparse.Namespace) -> int:
    from canlib.engine.evaluate import evaluate_run

    # Bad input (no run folder, a wrong data root, an unknown data set, a damaged or tampered
    # checkpoint, weights that do not fit the configuration) is one line and exit code 2.
    result = evaluate_run(
        args.run,
        dataset=args.dataset,
        data_root=args.data_root,
        checkpoint=args.checkpoint,
        device=args.device,
        metric=args.metric,
        ap=args.ap,
        flip_tta=args.flip_tta or None,
        rerank=args.rerank or None,
    )
    print(json.dumps({k: v for k, v in result.items() if k not in ("cmc", "evaluation", "record")}, indent=2))
    out = Path(args.out) if args.out else evaluation_path(args.run, result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("evaluation recorded in %s", out)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``evaluate`` sub-commands."""
    from canlib.data.datasets import DATASETS

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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run the output folder holds (refused without --resume or this)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. optim.lr=1e-4")
    p.set_defaults(func=_train)

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run on its own or another data set's query/gallery split",
        description="Evaluate the checkpoint of a run folder written by `train`, on its own data set or "
        "(--dataset NAME --data-root DIR) on another's, as in the field's Market->Duke tables. Example: "
        "python -m canlib evaluate --run runs/cpu --dataset dukemtmc --data-root /data/reid. "
        "Prints the metrics; records them with source, target, options and provenance (see --out).",
    )
    e.add_argument("--run", required=True, help="a run folder written by `train`")
    e.add_argument("--checkpoint", help=f"a checkpoint or exported weights file (default: RUN/{CHECKPOINT})")
    e.add_argument(
        "--dataset",
        help="evaluate on another data set's query/gallery (cross-data set; needs "
        f"--data-root): {', '.join(sorted(DATASETS))}",
    )
    e.add_argument("--data-root", help="the target data set's root (or the run's own, if it moved since training)")
    e.add_argument("--device", default="auto")
    e.add_argument("--metric", choices=METRICS)
    e.add_argument("--ap", choices=AP_VARIANTS, help="AP variant (default: the run's)")
    e.add_argument("--flip-tta", action="store_true", help="average with the mirrored image (beyond the paper)")
    e.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (beyond the paper)")
    e.add_argument(
        "--out",
        help="the JSON record (metrics with the full CMC, source, target, options, "
        "provenance); default RUN/evaluations/<data set>-<hash>.json",
    )
    e.set_defaults(func=_evaluate)
