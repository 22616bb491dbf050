"""The command line, ``python -m canlib <command>``: every sub-command's arguments in one place.

The top layer of the package (see ``ARCHITECTURE.md``): each handler turns its parsed arguments
into plain values and calls one function of the library (:mod:`canlib.engine`, :mod:`canlib.data`)
or of the experiments (:mod:`canlib.lab`); nothing below this module reads ``argparse`` objects.
The user's mistakes (configuration, data, files, device) are one logged line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import pickle
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from canlib.book import ranked_page
from canlib.config import ConfigError, load_config
from canlib.data.cuhk03 import SPLIT_FILE, convert_cuhk03_np
from canlib.data.datasets import DATASETS, dataset_names
from canlib.data.synthetic import (
    LEVELS,
    SYNTHETIC_DESCRIPTION,
    SyntheticConfig,
    make_synthetic,
    sample_grid,
    synthetic_help,
)
from canlib.engine.checkpoint import CHECKPOINT
from canlib.engine.embed import embed_folder
from canlib.engine.errors import TrainingDiverged, TrainingInterrupted, error_line
from canlib.engine.evaluate import ORDERS, evaluate_run, record_evaluation
from canlib.engine.onnx_export import OPSET, ParityError, export_run
from canlib.engine.run_folder import hold, locked
from canlib.engine.search import report_lines, search
from canlib.engine.trainer import train
from canlib.engine.weights import check_destination, export_weights, load_run_checkpoint
from canlib.lab import calibrate, controls, cost, decide, digest, draws, grid, launch, pretrain, sanity
from canlib.lab.rows import TABLES, Row, check_seeds, claim_rows, results_folder, select_rows
from canlib.lab.tables import check_tables, write_tables
from canlib.metrics import AP_VARIANTS, METRICS

log = logging.getLogger(__name__)

#: Exit codes: 0 success, 1 a check that failed (ONNX parity; the sanity baseline below its published
#: numbers), 2 bad input (config, data, files, arguments), 3 training diverged, 130 interrupted (Ctrl-C;
#: the shells' 128 + SIGINT).
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


def user_error(exc: BaseException) -> str | None:
    """One line for an error in the user's input; None for anything else (a bug keeps its traceback)."""
    if isinstance(exc, KeyError) and exc.args:  # str(KeyError) quotes its message
        return str(exc.args[0])
    if isinstance(exc, (ConfigError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)):
        return error_line(exc)
    return None


def _reports_user_errors(command: Handler) -> Handler:
    """Turn the user's mistakes into one logged line and exit code 2, Ctrl-C into 130."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            log.error("interrupted")
            return EXIT_INTERRUPTED
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                raise
            log.error("%s", message)
            return EXIT_BAD_INPUT

    return run


# ---------------------------------------------------------------------------------------------- train, evaluate
def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues an interrupted ``train``."""
    cmd = ["python", "-m", "canlib", "train", "--config", str(args.config)]
    for flag, value in (("--data-root", args.data_root), ("--output", args.output), ("--epochs", args.epochs)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    if args.device != "auto":
        cmd += ["--device", args.device]
    cmd += ["--no-progress"] * bool(args.no_progress) + ["--resume", *args.overrides]
    return shlex.join(cmd)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """The options of ``train`` as configuration overrides, after the user's own."""
    overrides = list(args.overrides)
    for key, value in (("data.root", args.data_root), ("optim.epochs", args.epochs), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.no_progress:
        overrides.append("train.progress=false")
    return overrides


@_reports_user_errors
def _train(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, _train_overrides(args))
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
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun: rank 0 prints the metrics
        print(json.dumps({k: v for k, v in metrics.items() if k != "cmc"}, indent=2))
    return 0


def _using(run: str | Path, command: str) -> contextlib.AbstractContextManager[None]:
    """The run folder's lock while ``command`` reads it (refused when a training holds it)."""
    return locked(run, command) if Path(run).is_dir() else contextlib.nullcontext()


def _check_evaluate_arguments(args: argparse.Namespace) -> None:
    """Before any work: a data set canlib reads, and a place the evaluation can be recorded."""
    if args.dataset is not None and args.dataset.lower() not in {name.lower() for name in dataset_names()}:
        raise ValueError(
            f"--dataset {args.dataset!r} is not a data set canlib reads; the readers: {', '.join(sorted(DATASETS))}"
        )
    if args.out:
        check_destination(args.out)
        return
    if not Path(args.run).is_dir():
        return  # evaluate_run names what is missing
    try:
        check_destination(Path(args.run) / "evaluations" / "evaluation.json")
    except OSError as exc:
        raise OSError(f"{exc}; pass --out FILE to record the evaluation elsewhere") from None


@_reports_user_errors
def _evaluate(args: argparse.Namespace) -> int:
    _check_evaluate_arguments(args)
    with _using(args.run, "evaluate"):
        return _evaluate_locked(args)


def _evaluate_locked(args: argparse.Namespace) -> int:
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
        force=args.force,
        visrank=args.visrank,
        order=args.order,
        visrank_queries=args.visrank_queries,
    )
    ranked = result.pop("ranked", None)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("cmc", "ap_per_query", "evaluation", "record")}, indent=2
        )
    )
    recorded = record_evaluation(args.run, result, args.out)
    log.info("evaluation recorded in %s", recorded)
    if ranked is not None:
        stem = recorded.with_name(f"{recorded.stem}-ranked-{args.order}")
        title = f"{args.run}: {len(ranked.queries)} queries, {args.order} AP first"
        page = ranked_page.evaluation_page(ranked, stem.with_suffix(".html"), title)
        log.info("ranked lists: %s and %s", page, ranked_page.evaluation_png(ranked, stem.with_suffix(".png")))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
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
        "--overwrite", action="store_true", help="replace the run the output folder holds (refused without this)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. optim.lr=1e-4")
    p.set_defaults(func=_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
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
        help=f"evaluate on another data set's query/gallery (needs --data-root): {', '.join(sorted(DATASETS))}",
    )
    e.add_argument("--data-root", help="the target data set's root (or the run's own, if it moved since training)")
    e.add_argument("--device", default="auto")
    e.add_argument("--metric", choices=METRICS)
    e.add_argument("--ap", choices=AP_VARIANTS, help="AP variant (default: the run's)")
    e.add_argument("--flip-tta", action="store_true", help="average with the mirrored image (beyond the paper)")
    e.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (beyond the paper)")
    e.add_argument(
        "--out",
        help="the JSON record (metrics with the full CMC, source, target, options, provenance); "
        "default RUN/evaluations/<data set>-<hash>.json",
    )
    e.add_argument(
        "--force",
        action="store_true",
        help="evaluate even when the run's config.yaml is not the configuration its weights were trained with",
    )
    e.add_argument(
        "--visrank",
        type=int,
        default=0,
        metavar="K",
        help="also draw the top-K ranked lists (HTML and PNG beside the JSON record, named ...-ranked-ORDER)",
    )
    e.add_argument(
        "--order", choices=ORDERS, default="worst", help="which queries --visrank shows: by AP (default worst)"
    )
    e.add_argument("--visrank-queries", type=int, default=20, metavar="N", help="how many queries --visrank shows")
    e.set_defaults(func=_evaluate)


# ---------------------------------------------------------------------------------------------- export
def _export_onnx(args: argparse.Namespace, run: Path) -> int:
    try:
        with _using(run, "export"):
            report = export_run(
                run,
                args.onnx,
                data_root=args.data_root,
                opset=args.opset,
                check=not args.no_check,
                overwrite=args.overwrite,
                force=args.force,
                allow_unfinished=args.allow_unfinished,
            )
    except ParityError as exc:
        print(json.dumps(exc.report, indent=2))
        log.error("%s", exc)
        return 1
    print(json.dumps(report, indent=2))
    log.info("exported %s -> %s (%.1f MB, opset %d)", run, args.onnx, Path(args.onnx).stat().st_size / 1e6, args.opset)
    return 0


def _export_folders(args: argparse.Namespace) -> list[Path]:
    """The run folders ``--run`` and ``--row`` name (resolved, nothing trained yet)."""
    runs: list[Path] = [Path(r) for r in args.run or []]
    if args.row:
        if args.config is None or args.data_root is None:
            raise ValueError("--row needs --config and --data-root (to resolve the run's configuration hash)")
        runs += grid.row_run_folders(args.config, args.data_root, args.row, args.seed, args.runs)
    if not runs:
        raise ValueError("nothing to export: give --run DIR or --row 'Table N:label'")
    if args.onnx and len(runs) > 1:
        raise ValueError(f"--onnx writes one file: name one run, not {len(runs)}")
    return runs


@_reports_user_errors
def _export(args: argparse.Namespace) -> int:
    runs = _export_folders(args)
    single = args.onnx or (args.out if len(runs) == 1 else None)
    dests = [Path(single)] if single else [Path(args.out_dir) / f"{run.name}.pt" for run in runs]
    for dest in dests:  # every destination before any work (--out-dir's <run>.pt: the same run's, replaced)
        check_destination(dest, replace=args.overwrite or not single)
    if args.row and args.train_missing:
        grid.trained_run_folders(args.config, args.data_root, args.row, args.seed, args.runs)
    if args.onnx:
        return _export_onnx(args, runs[0])
    for run in runs:  # every run before any export: weights of its config.yaml, a finished training
        with _using(run, "export"):
            load_run_checkpoint(run, force=args.force, finished=not args.allow_unfinished)
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}[args.dtype]
    replace, force, unfinished = args.overwrite or not single, args.force, args.allow_unfinished
    for run, dest in zip(runs, dests, strict=True):
        with _using(run, "export"):
            export_weights(run, dest, dtype=dtype, overwrite=replace, force=force, allow_unfinished=unfinished)
        log.info("exported %s -> %s (%.1f MB)", run, dest, dest.stat().st_size / 1e6)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a finished run's weights or ONNX model (for inference and the book's figures)",
        description="Write a run's final weights, configuration, record and metrics to one file that "
        "canlib.engine.weights.load_trained reads, or (--onnx OUT.onnx) its evaluation-mode descriptor "
        "network as ONNX, checked against PyTorch with ONNX Runtime on the data set's query and gallery "
        "images (exit code 1 when they differ). Name runs by folder (--run) or by ablation row "
        "(--row 'Table 3:Part-1,3,5,7' with --config, --data-root and --seed).",
    )
    p.add_argument("--run", action="append", help=f"a finished run folder (with {CHECKPOINT}); repeatable")
    p.add_argument("--row", action="append", help="an ablation row 'Table N:label'; repeatable")
    p.add_argument("--config", help="the profile the grid was run with (for --row)")
    p.add_argument(
        "--data-root",
        help="the data root the grid was run with (for --row); the ONNX check's images (default: the run's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the run (for --row)")
    p.add_argument("--runs", default="runs/ablations", help="the grid's working folders (for --row)")
    p.add_argument(
        "--train-missing",
        action="store_true",
        help="with --row: train again (CPU) a recorded run whose working folder has no checkpoint; "
        "its metrics must equal its record's on the same CPU kind (model and capability), "
        "within grid.RETRAIN_TOLERANCE on another",
    )
    p.add_argument("--out", help="output file (one run only; an existing one is refused without --overwrite)")
    p.add_argument(
        "--out-dir", default="results/weights", help="output folder: <run name>.pt (the same run's file is replaced)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out or --onnx file")
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="export a run that did not finish (checkpoint before optim.epochs, or no metrics.json)",
    )
    p.add_argument(
        "--force", action="store_true", help="export even when config.yaml is not the configuration the weights had"
    )
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--onnx", metavar="OUT.onnx", help="write one run's model as ONNX (the 'export' extra) and check it")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX parity check (no data set needed)")
    p.set_defaults(func=_export)


# ---------------------------------------------------------------------------------------------- embed, search
@_reports_user_errors
def _embed(args: argparse.Namespace) -> int:
    embed_folder(
        args.model,
        args.images,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        force=args.force,
    )
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="descriptors of a folder of person crops, with a trained model",
        description="Embed every JPEG/PNG/BMP under a folder (any names, any depth) with a run folder, exported "
        "weights (`export`) or an ONNX file, at the run's own test-time size and normalisation. Writes one .npz "
        "(float32 L2-normalised descriptors, relative paths, provenance; no pickled objects). Embedding the same "
        "folder into the same file again reuses the descriptors of unchanged files. Example: python -m canlib "
        "embed --model runs/smoke --images data/synthetic/bounding_box_test --out gallery.npz",
    )
    p.add_argument("--model", required=True, help="a run folder, an exported weights file (.pt) or an ONNX file")
    p.add_argument("--images", required=True, help="a folder of images (searched recursively) or one image")
    p.add_argument(
        "--out", required=True, help="the embeddings file (.npz); an existing one by the same model is reused"
    )
    p.add_argument(
        "--force", action="store_true", help="use a run whose config.yaml is not the configuration its weights had"
    )
    _add_embed_options(p)
    p.set_defaults(func=_embed)


def _add_embed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--workers", type=int, default=0, help="image-reading worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@_reports_user_errors
def _search(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    check_destination(args.html)
    result = search(
        args.model,
        args.query,
        args.gallery,
        top=args.top,
        force=args.force,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print("\n".join(report_lines(result)))
    log.info("ranked lists: %s", ranked_page.search_page(result, args.html, args.page_queries))
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="rank a gallery for query images; print the top-K and write an offline HTML page",
        description="Query images (one file or a folder) against a gallery (a folder, or an .npz of `embed`), "
        "exactly, by cosine distance. Prints each query's top-K and writes a self-contained HTML page. Where file "
        "names follow Market-1501's pattern, matches and the protocol's junk are marked and each query's AP is "
        "shown. Example: python -m canlib search --model runs/smoke --query data/synthetic/query "
        "--gallery gallery.npz --top 10 --html search.html",
    )
    p.add_argument("--model", required=True, help="the model that embeds the queries (as `embed --model`)")
    p.add_argument("--query", required=True, help="an image or a folder of images")
    p.add_argument("--gallery", required=True, help="a folder of images or an embeddings file (.npz) of `embed`")
    p.add_argument("--top", type=int, default=10, help="gallery images per query (default 10)")
    p.add_argument("--html", default="search.html", help="the page written (default search.html)")
    p.add_argument(
        "--page-queries", type=_positive_int, default=50, help="queries on the page, the first N (default 50)"
    )
    p.add_argument("--force", action="store_true", help="compare with a gallery embedded by another model")
    _add_embed_options(p)
    p.set_defaults(func=_search)


# ---------------------------------------------------------------------------------------------- data
@_reports_user_errors
def _make_synthetic(args: argparse.Namespace) -> int:
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig) if hasattr(args, f.name)}
    stats = make_synthetic(args.out, workers=args.workers, overwrite=args.overwrite, **knobs)
    log.info("statistics: %s", json.dumps({k: v for k, v in stats.items() if isinstance(v, int)}))
    if args.grid:
        sample_grid(args.out).save(args.grid)
        log.info("sample grid: %s", args.grid)
    return 0


def _add_make_synthetic(sub: argparse._SubParsersAction) -> None:
    defaults = SyntheticConfig()
    p = sub.add_parser(
        "make-synthetic",
        help="generate the synthetic re-ID data set (Market-1501 layout)",
        description=SYNTHETIC_DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder")
    for f in dataclasses.fields(SyntheticConfig):  # not given: the level's value (argparse.SUPPRESS)
        default = getattr(defaults, f.name)
        flag, kind, choices = f"--{f.name.replace('_', '-')}", int if default is None else type(default), None
        if f.name == "level":
            choices = list(LEVELS)
        p.add_argument(flag, type=kind, choices=choices, default=argparse.SUPPRESS, help=synthetic_help(f.name))
    p.add_argument("--workers", type=int, default=1, help="processes drawing images (output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace a set already in --out")
    p.add_argument("--grid", default=None, help="also save a PNG grid of samples to this path")
    p.set_defaults(func=_make_synthetic)


@_reports_user_errors
def _convert_cuhk03(args: argparse.Namespace) -> int:
    counts = convert_cuhk03_np(args.mat, args.splits, args.out, overwrite=args.overwrite)
    print(json.dumps(counts, indent=2))
    log.info("CUHK03-NP written under %s: train with --dataset cuhk03np --data-root %s", args.out, args.out)
    return 0


def _add_convert_cuhk03(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-cuhk03",
        help="write CUHK03-NP (the new protocol's folders) from the original cuhk-03.mat",
        description="Convert the original CUHK03 release (cuhk-03.mat, MATLAB v7.3) and the new protocol's "
        f"split files ({SPLIT_FILE.format('labeled')}, ..._detected.mat) into OUT/cuhk03-np/<variant>/"
        "{bounding_box_train,query,bounding_box_test}/, the layout the cuhk03np reader takes "
        "(--dataset cuhk03np --data-root OUT). Example: python -m canlib convert-cuhk03 --mat cuhk-03.mat "
        f"--splits {SPLIT_FILE.format('labeled')} {SPLIT_FILE.format('detected')} --out /data/reid",
    )
    p.add_argument("--mat", required=True, help="the original release's cuhk-03.mat")
    p.add_argument(
        "--splits",
        required=True,
        nargs="+",
        help="the new protocol's split files (the variant is read from each name), or one folder holding both",
    )
    p.add_argument("--out", required=True, help="the data root to write cuhk03-np/ into")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a variant's folder that --out already holds, whole (refused without this)",
    )
    p.set_defaults(func=_convert_cuhk03)


# ---------------------------------------------------------------------------------------------- experiments
def _cluster_options(args: argparse.Namespace, runs: Path) -> launch.ClusterOptions:
    """``--launcher submitit``'s job options (``--slurm-*``); job files in ``--slurm-logs`` or ``runs/submitit``."""
    if args.slurm_time is None:
        raise ValueError("--launcher submitit needs --slurm-time MINUTES (each job's time limit)")
    extra = []
    for option in args.slurm_option:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-option expects KEY=VALUE (e.g. account=myproject), got {option!r}")
        extra.append((key.replace("-", "_"), int(value) if value.isdigit() else value))
    return launch.ClusterOptions(
        folder=Path(args.slurm_logs or runs / "submitit"),
        timeout_min=args.slurm_time,
        cluster=args.submitit_cluster,
        partition=args.slurm_partition,
        gpus_per_node=args.gpus_per_run if args.device.startswith("cuda") else 0,
        mem_gb=args.slurm_mem,
        cpus_per_task=args.slurm_cpus,
        extra=tuple(extra),
    )


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (``--jobs 0`` would start no worker)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def _check_device(device: str) -> None:
    """Before any work: ``--device`` names ``cpu``, ``auto`` or a CUDA GPU this machine has (``ValueError``)."""
    if device in ("cpu", "auto"):
        return
    if device != "cuda" and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: expected cpu, auto, cuda or cuda:N")
    count = len(launch.local_gpus())
    index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
    if count == 0:
        raise ValueError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
    if index >= count:
        raise ValueError(f"--device {device}: this machine has {count} visible GPU(s), cuda:0 to cuda:{count - 1}")


def _local_gpus(args: argparse.Namespace) -> list[str] | None:
    """The GPUs the local pool places runs on (``--device cuda``), or None (every child sees the parent's device)."""
    if args.device != "cuda":
        if args.gpus_per_run > 1:
            raise ValueError(f"--gpus-per-run {args.gpus_per_run} needs --device cuda (got --device {args.device})")
        return None
    gpus = launch.local_gpus()
    if args.jobs * args.gpus_per_run < len(gpus):
        log.info(
            "%d of %d visible GPUs in use (--jobs %d x --gpus-per-run %d)",
            args.jobs * args.gpus_per_run,
            len(gpus),
            args.jobs,
            args.gpus_per_run,
        )
    return gpus


def _throughput(args: argparse.Namespace) -> cost.Throughput | None:
    """``--images-per-second``, else the newest ``make gpu-check`` measurement of this GPU model (CUDA only)."""
    if args.images_per_second is not None:
        if args.images_per_second <= 0:
            raise ValueError(f"--images-per-second must be positive, got {args.images_per_second}")
        return cost.Throughput(args.images_per_second, "--images-per-second")
    if not args.device.startswith("cuda"):
        return None
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None  # None: a login node
    return cost.measured_throughput(args.gpu_check, gpu_name)


def _runs_folder(results: str | Path, runs: str | None) -> Path:
    """The working folders beside a grid's records: ``results/x/y`` -> ``runs/x/y`` (unless ``runs``)."""
    if runs:
        return Path(runs)
    path = Path(results)
    return Path("runs", *path.parts[1:]) if path.parts[:1] == ("results",) else path.with_name(path.name + "-runs")


def _grid_rows(args: argparse.Namespace) -> list[Row]:
    """The rows ``ablate`` trains: ``--tables``/``--rows`` (or ``--claims``), each with the choices of
    ``--decisions``, then the ``--neck`` option's and the command line's overrides appended. A typo
    selects nothing and is refused."""
    if args.claims:
        rows = claim_rows()
        if args.rows:
            rows = [r for r in select_rows(TABLES, args.rows) if r in rows]
            if not rows:
                raise ValueError(f"--rows {' '.join(args.rows)} selects no row of the claims' sub-grid (--claims)")
    else:
        rows = select_rows(args.tables, args.rows)
    neck = decide.neck_overrides(args.neck) if args.neck else ()
    extra = [*(decide.chosen_overrides(args.decisions) if args.decisions else []), *neck, *args.overrides]
    return [Row(r.table, r.label, (*r.overrides, *extra)) for r in rows]


@_reports_user_errors
def _ablate(args: argparse.Namespace) -> int:
    rows = _grid_rows(args)
    if args.launcher != "submitit":  # submitit's jobs run elsewhere, on the cluster's GPUs
        _check_device(args.device)
    submitit = args.launcher == "submitit"
    results = args.results or results_folder(args.config)
    check_tables(results)
    runs = _runs_folder(results, args.runs)
    gpus = None if submitit else _local_gpus(args)
    cluster, throughput = _cluster_options(args, runs) if submitit else None, _throughput(args)
    roots = [str(r) for r in draws.make_draws(args.data_root, args.draws)] if args.draws else []
    with hold(runs, "ablate"):  # a second grid on these runs is refused here, naming this one
        try:
            records = grid.run_grid(
                args.config,
                args.data_root,
                rows=rows,
                seeds=args.seeds,
                results_dir=results,
                runs_dir=runs,
                slices=args.slices,
                force=args.force,
                device=args.device,
                jobs=args.jobs,
                gpus=gpus,
                gpus_per_run=args.gpus_per_run,
                cluster=cluster,
                throughput=throughput,
                draws=roots,
            )
        except grid.GridFailed as exc:
            return _failed_runs(exc, results)
    print(write_tables(records, results).to_string())
    return 0


def _failed_runs(exc: grid.GridFailed, results: str | Path) -> int:
    """Each failed run in one line (its log and last error), and the tables of the runs that did record."""
    for failure in exc.failures:
        log.error("%s", failure)
    tables = Path(results) / "runs.csv"
    if exc.records:
        print(write_tables(exc.records, results).to_string())
        held = f"the tables ({tables}) hold only the {len(exc.records)} run(s) recorded"
    else:
        held = f"no run was recorded, the tables ({tables}) are left as they were"
    log.error("%d run(s) failed: %s; fix the cause and run ablate again", len(exc.failures), held)
    return EXIT_BAD_INPUT


def _add_ablate_launch(p: argparse.ArgumentParser) -> None:
    """``ablate``'s options of where runs train: GPUs, torchrun, submitit and Slurm, the cost estimate."""
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="runs trained side by side (one per core suits small models; with --device cuda, one per GPU slot)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=_positive_int,
        default=1,
        help="GPUs per run (> 1: torchrun with one process per GPU); with --device cuda each run sees only its own",
    )
    p.add_argument(
        "--launcher",
        choices=["pool", "submitit"],
        default="pool",
        help="pool: child processes on this machine; submitit: one Slurm job per missing run (waits for them)",
    )
    p.add_argument(
        "--submitit-cluster",
        choices=["slurm", "local"],
        default="slurm",
        help="submitit's executor (local: the same jobs as processes of this machine)",
    )
    p.add_argument("--slurm-partition", help="the partition the jobs go to (default: the cluster's)")
    p.add_argument(
        "--slurm-time", type=_positive_int, metavar="MINUTES", help="each job's time limit (needed by submitit)"
    )
    p.add_argument("--slurm-mem", type=float, metavar="GB", help="memory per job (default: the cluster's)")
    p.add_argument("--slurm-cpus", type=int, help="CPUs per job (data loader workers; default: the cluster's)")
    p.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other submitit Slurm option without its slurm_ prefix, e.g. account=abc, qos=high; repeatable",
    )
    p.add_argument("--slurm-logs", help="submitit's folder of job scripts and logs (default: RUNS/submitit)")
    p.add_argument(
        "--images-per-second",
        type=float,
        help="training images/s of one run on one GPU, for the cost estimate (default: make gpu-check's)",
    )
    p.add_argument(
        "--gpu-check", default=str(cost.GPU_CHECK_DIR), help="the folder of make gpu-check results (its JSON files)"
    )


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="train (or reuse) the ablation grid of Tables 2-4",
        description="Train every row of the paper's Tables 2-4 for each seed, reusing runs already "
        "recorded with the same configuration, and write runs.csv and summary.csv. Before training it logs "
        "the runs to train and, where a throughput is known, their GPU-hours. On one machine the runs are "
        "child processes (--jobs side by side; with --device cuda each on its own --gpus-per-run GPUs); "
        "with --launcher submitit each missing run is a Slurm job.",
    )
    p.add_argument("--config", required=True, help="profile YAML (configs/cpu.yaml, configs/paper-market1501.yaml)")
    p.add_argument("--data-root", required=True)
    p.add_argument(
        "--tables",
        nargs="+",
        default=["Table 2", "Table 3", "Table 4"],
        help=f"which tables: {', '.join(repr(t) for t in TABLES)}",
    )
    p.add_argument(
        "--rows",
        nargs="+",
        help="only these row labels of the tables (e.g. Part-1,3,5,7); runs.csv keeps the other rows' lines",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="each seed once: one run per row and seed")
    p.add_argument("--results", help="where runs are recorded (in git; default results/ablations/<profile>-<dataset>)")
    p.add_argument(
        "--runs", help="working folders with checkpoints (not in git; default runs/ablations/<profile>-<dataset>)"
    )
    p.add_argument("--slices", action="store_true", help="also evaluate each new run on its global and local slices")
    p.add_argument(
        "--claims",
        action="store_true",
        help="the claims' sub-grid instead of --tables (canlib.lab.rows.CLAIM_ROWS; --rows narrows it)",
    )
    p.add_argument(
        "--decisions",
        metavar="decisions.json",
        help="apply the choices of these decisions (a `decide` record) to every row, before the overrides",
    )
    p.add_argument(
        "--neck",
        metavar="OPTION",
        help=f"the neck stage's option for every row, after --decisions (the factor: {' / '.join(decide.NECK_FACTOR)})",
    )
    p.add_argument(
        "--draws",
        metavar="DIR",
        help="generate test draws of --data-root under DIR and evaluate every run on them (canlib.lab.draws)",
    )
    p.add_argument("--device", default="cpu", help="cpu, or cuda: the GPUs are placed by --jobs and --gpus-per-run")
    p.add_argument("--force", action="store_true", help="retrain even when a recorded run exists")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="configuration overrides of every row (e.g. a neck level)"
    )
    _add_ablate_launch(p)
    p.set_defaults(func=_ablate)


@_reports_user_errors
def _decide(args: argparse.Namespace) -> int:
    _check_device(args.device)
    stages = decide.select_stages(args.stages, args.defaults_from)  # a typo is refused before any work
    results = args.results or results_folder(args.config, "decisions")
    runs = _runs_folder(results, args.runs)
    with hold(runs, "decide"):  # a second run of the decisions on these runs is refused here, naming this one
        decisions = decide.run_decisions(
            args.config,
            args.data_root,
            stages,
            args.seeds,
            results,
            runs,
            args.jobs,
            args.device,
            overrides=args.overrides,
        )
    for d in decisions:
        print(f"{d.stage:10s} -> {d.chosen}  ({d.reason})")
    return 0


def _add_decide(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decide",
        help="fill the paper's silences on a validation split (staged runs)",
        description=decide.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="the profile the decisions are for (configs/cpu.yaml)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=list(decide.SEEDS))
    p.add_argument("--results", help="records (default results/decisions/<profile>-<dataset>)")
    p.add_argument("--runs", help="working run folders (default runs/decisions/<profile>-<dataset>)")
    p.add_argument("--jobs", type=_positive_int, default=2, help="runs trained side by side")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N] (a GPU this machine has)")
    p.add_argument(
        "--stages",
        nargs="+",
        help=f"only these stages, in their order (default all: {', '.join(decide.stage_names())})",
    )
    p.add_argument(
        "--defaults-from",
        metavar="decisions.json",
        help="each stage's default (what stays on a tie) is what this record chose (e.g. another level's decisions)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="configuration overrides of every run, after the validation split's (e.g. data.val_ids=5 on a small set)",
    )
    p.set_defaults(func=_decide)


@_reports_user_errors
def _export_trunk(args: argparse.Namespace) -> int:
    pretrain.export_trunk(args.run, args.out)
    return 0


def _add_export_trunk(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-trunk",
        help="keep the ResNet trunk of a pre-training run (make pretrain)",
        description="Write the stem and layer 4 of a finished run as a ResNet state dict "
        "that model.pretrained can load, with the run's record beside it.",
    )
    p.add_argument("--run", required=True, help="a finished run folder (configs/pretrain.yaml)")
    p.add_argument("--out", required=True, help="the .pt file to write, e.g. results/pretrained/trunk.pt")
    p.set_defaults(func=_export_trunk)


@_reports_user_errors
def _digest(args: argparse.Namespace) -> int:
    if args.check:
        failed = digest.check_digest(args.out, args.results)
        for name, why in failed.items():
            log.error("%s trains differently now: %s", name, "; ".join(why[:5]))
        if failed:
            return EXIT_CHECK_FAILED
        log.info("every recorded configuration trains as before (%s; seen on %s)", args.out, digest.machine_kind())
        return 0
    if args.add:
        added = digest.add_to_digest(args.out, args.results)
        log.info("training digest: %d configuration(s) added to %s", len(added), args.out)
        return 0
    data = digest.write_digest(args.results, args.out)
    log.info("training digest of %d configurations written (%s)", len(data["digests"]), args.out)
    return 0


def _add_digest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "digest",
        help="rewrite the training digest of every recorded configuration (make digest)",
        description=digest.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--results", default="results", help="the folder of recorded runs")
    p.add_argument("--out", default="results/training-digest.json", help="the digest file to write (or check)")
    p.add_argument(
        "--check",
        action="store_true",
        help="recompute and compare instead of writing; on success, add this machine to the file's seen_on",
    )
    p.add_argument(
        "--add",
        action="store_true",
        help="digest only the configurations the file lacks (on a machine kind of its seen_on), keep the rest",
    )
    p.set_defaults(func=_digest)


@_reports_user_errors
def _controls(args: argparse.Namespace) -> int:
    check_destination(args.out)  # a folder or a place that cannot be written: refused before any work
    cfg = load_config(args.config, [f"data.root={args.data_root}", *args.overrides])
    result = controls.write_trunk_only(cfg, args.out, args.device, args.splits)
    for split, metrics in result["results"].items():
        print(f"trunk only, {split:34s} mAP {metrics['mAP']:.4f}  rank-1 {metrics['rank1']:.4f}")
    return 0


def _add_controls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "controls",
        help="measure the pre-trained trunk alone, without fine-tuning (the proxy's control)",
        description=controls.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="the profile whose trunk and geometry are measured")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", default="results/controls/trunk-only.json", help="the JSON file to write")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--split",
        action="append",
        dest="splits",
        choices=list(controls.SPLITS),
        metavar="SPLIT",
        help=f"a split to measure, once per split (default: all of {', '.join(repr(k) for k in controls.SPLITS)})",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="configuration overrides (e.g. data.val_ids=5 on a small set)"
    )
    p.set_defaults(func=_controls)


@_reports_user_errors
def _draws(args: argparse.Namespace) -> int:
    check_seeds(args.seeds)
    results = Path(args.results or results_folder(args.config))
    roots = draws.make_draws(args.data_root, args.draws_dir, args.draw_seeds)
    for seed in args.seeds:
        extra = decide.neck_overrides(args.neck) if args.neck else ()
        folders = grid.trained_run_folders(
            args.config, args.data_root, args.row, seed, args.runs, results, args.jobs, extra
        )
        for spec, folder in zip(args.row, folders, strict=True):
            have = (draws.read_draws(results / folder.name) or {}).get("draws", {})
            if not all(root.name in have for root in roots):
                draws.record_draws(folder, results / folder.name, roots, args.device)
            row = draws.draw_matrix([results / folder.name], seeds=args.draw_seeds)[0]
            print(f"{spec} seed {seed}: mAP on draws {' '.join(f'{v:.1f}' for v in row)}")
    return 0


def _add_draws(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "draws",
        help="evaluate recorded grid runs on fresh draws of test people (intervals over seeds and draws)",
        description=draws.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="the profile the grid was run with")
    p.add_argument("--data-root", required=True, help="the grid's (generated) data set: the draws repeat its arguments")
    p.add_argument("--row", action="append", required=True, help="an ablation row 'Table N:label'; repeatable")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the runs' seeds (default 0 1 2)")
    p.add_argument("--draw-seeds", type=int, nargs="+", default=list(draws.DRAW_SEEDS), help="the draws' seeds")
    p.add_argument("--draws-dir", default="data/draws", help="where the draws are generated")
    p.add_argument("--results", help="the grid's records (default: the profile's results folder)")
    p.add_argument("--runs", default="runs/ablations", help="the grid's working folders (checkpoints)")
    p.add_argument("--neck", metavar="OPTION", help="the neck option the grid was run with (as `ablate --neck`)")
    p.add_argument(
        "--jobs", type=_positive_int, default=2, help="runs retrained side by side where a checkpoint is missing"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_draws)


@_reports_user_errors
def _calibrate(args: argparse.Namespace) -> int:
    result = calibrate.calibrate(args.config, args.data_dir, args.results, args.runs, jobs=args.jobs)
    for m in result["measured"]:
        tuned = f"  fine-tuned mAP {m['fine_tuned']:.4f}  final CE {m['final_ce']:.2f}" if "fine_tuned" in m else ""
        print(f"{m['candidate']:24s} seed {m['seed']:3d}  trunk only mAP {m['trunk_only']:.4f}{tuned}")
    print(f"chosen: {result['chosen'] or 'none of the ladder meets both targets'}")
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="calibrate the synthetic set's realistic level on calibration draws (trunk alone, fine-tuned default)",
        description=calibrate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/cpu.yaml", help="the profile whose trunk and default are measured")
    p.add_argument("--data-dir", default="data/calibration", help="where the calibration draws are generated")
    p.add_argument("--results", default="results/controls/calibration-realistic", help="where the records go")
    p.add_argument("--runs", default="runs/calibration", help="working folders of the fine-tuning runs")
    p.add_argument("--jobs", type=_positive_int, default=2, help="calibration draws measured side by side")
    p.set_defaults(func=_calibrate)


@_reports_user_errors
def _sanity(args: argparse.Namespace) -> int:
    try:
        run = sanity.run_sanity(args.config, args.data_root, args.device, args.runs, args.overrides)
    except TrainingDiverged as exc:
        log.error("%s", exc)
        return EXIT_DIVERGED
    except TrainingInterrupted as exc:
        log.error("%s%s", exc, "; run the same command again to continue" if exc.resumable else "")
        return EXIT_INTERRUPTED
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun: rank 0 prints the report
        print(sanity.report(run))
    return 0 if run.verdict.ok else EXIT_CHECK_FAILED


def _add_sanity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sanity",
        help="train the sanity baseline (BoT's ResNet50) and compare it with its published numbers",
        description=sanity.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/bot-market1501.yaml", help="the baseline's profile")
    p.add_argument("--data-root", required=True, help="the folder holding Market-1501")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--runs", default="runs/sanity", help="where its run folder goes (<runs>/<configuration hash>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. train.amp=off")
    p.set_defaults(func=_sanity)


#: The sub-commands, in the order ``--help`` lists them.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_make_synthetic,
    _add_convert_cuhk03,
    _add_train,
    _add_evaluate,
    _add_embed,
    _add_search,
    _add_ablate,
    _add_export,
    _add_export_trunk,
    _add_decide,
    _add_digest,
    _add_controls,
    _add_draws,
    _add_calibrate,
    _add_sanity,
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="python -m canlib",
        description="Collaborative Attention Network (CAN) for person re-ID: data, training, evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    _join_overrides(parser, args, extras)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    not_utf8 = _not_utf8(args)
    if not_utf8 is not None:
        log.error("%s", not_utf8)
        return EXIT_BAD_INPUT
    return int(args.func(args) or 0)


def _join_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: Sequence[str]) -> None:
    """Overrides given after an option (``train a=1 --output X b=1``) join the others, in order; any
    other argument argparse did not take is its usual error (exit code 2)."""
    stray = [x for x in extras if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        args.overrides = [*args.overrides, *extras]


def _not_utf8(args: argparse.Namespace) -> str | None:
    """The one line for an argument that is not UTF-8 (a file name's stray byte): canlib's records
    (config.yaml, run.json, JSON) name paths as UTF-8 text. None when every argument is."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                option = "key=value" if name == "overrides" else f"--{name.replace('_', '-')}"
                return (
                    f"{option} {os.fsencode(text)!r} is not UTF-8: canlib records paths as UTF-8 text "
                    "(config.yaml, run.json); rename it, or name another place"
                )
    return None


if __name__ == "__main__":  # pragma: no cover - python -m canlib runs canlib/__main__.py
    sys.exit(main())
