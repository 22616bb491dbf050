"""A trained model as an ONNX file, and a check that ONNX Runtime gives the same descriptors.

The file holds the evaluation-mode network: images ``(B, 3, H, W)`` (resized to the run's
height and width, normalised as the run's test loader does) in, the test descriptor of
:meth:`canlib.model.CAN.descriptor` ``(B, F * embed_dim)`` out, with a dynamic batch axis.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` plus ``onnxscript``). The
older TorchScript exporter (``dynamo=False``) still runs in torch 2.14 but cannot give this
model a dynamic batch axis: the pooling windows of equation (1) are computed from the map
height, which its tracer records as graph values, and ONNX pooling needs constant kernels.
``torch.export`` keeps the (fixed) height and width as constants and only the batch symbolic.
Opset :data:`OPSET` (18) is the exporter's native opset, supported by ONNX Runtime >= 1.14.

:func:`parity_report` runs both models on the data set's query and gallery images and
compares the descriptors (largest absolute difference, smallest per-image cosine) and the
retrieval metrics computed from each; :func:`check_parity` fails loudly beyond the bounds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from canlib.config import RunSections
from canlib.engine.build import build_eval_loaders
from canlib.engine.evaluate import extract_features
from canlib.engine.weights import check_destination, load_run_checkpoint, model_from_state, stored_config_hash
from canlib.files import DiskFullError, write_path_atomically
from canlib.metrics import evaluate_features
from canlib.model import CAN

log = logging.getLogger(__name__)

#: The default ONNX opset of the exported graph.
OPSET = 18
#: Parity bounds: largest absolute descriptor difference, smallest per-image cosine.
MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999
#: Largest difference allowed between the retrieval metrics (fractions) of the two models.
METRIC_TOL = 1e-6
_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportError(ValueError):
    """The ONNX file cannot be written (missing optional packages, an unwritable place)."""


class ParityError(RuntimeError):
    """ONNX Runtime's descriptors or metrics differ from PyTorch's beyond the bounds (``report``: the numbers)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = dict(report or {})


def require_onnx() -> None:
    """Raise :class:`ExportError` naming what to install when an optional package is missing."""
    import importlib.util

    missing = [name for name in _PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install -e '.[export]'")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's libraries log every graph pass at INFO: keep them to warnings meanwhile."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: CAN,
    dest: str | os.PathLike[str],
    height: int,
    width: int,
    opset: int = OPSET,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model``'s evaluation-mode descriptor network to ``dest`` (input ``images``, output ``descriptor``).

    The batch axis is dynamic; ``height`` and ``width`` are fixed (the run's input size).
    ``metadata`` is stored as the model's metadata properties. The file is written atomically.
    """
    require_onnx()
    try:
        dest = check_destination(dest)
    except OSError as exc:
        raise ExportError(str(exc)) from None
    model = model.eval().float().cpu()
    example = torch.zeros(2, 3, int(height), int(width))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=int(opset),
                input_names=["images"],
                output_names=["descriptor"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
            )
        if program is None:  # only the legacy exporter (dynamo=False) returns nothing
            raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
        for key, value in (metadata or {}).items():
            program.model.metadata_props[key] = str(value)
        write_path_atomically(dest, program.save)
    except DiskFullError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return dest


def onnx_session(path: str | os.PathLike[str]):
    """An ONNX Runtime CPU session for ``path``."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_features(session, loader: Iterable) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(descriptors, pids, camids) of every image of ``loader``, computed by ONNX Runtime."""
    name = session.get_inputs()[0].name
    feats, pids, camids = [], [], []
    for images, pid, camid in loader:
        feats.append(torch.from_numpy(session.run(None, {name: images.numpy()})[0]))
        pids.append(np.asarray(pid))
        camids.append(np.asarray(camid))
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def _metrics(qf, gf, q, g, metric: str, ap: str, max_rank: int, chunk_size: int) -> dict[str, float]:
    result = evaluate_features(
        qf, gf, q[1], g[1], q[2], g[2], metric=metric, chunk_size=chunk_size, max_rank=max_rank, ap=ap
    )
    return {"mAP": float(result["mAP"]), "rank1": float(result["cmc"][0]), "mINP": float(result["mINP"])}


def parity_report(
    model: CAN,
    onnx_path: str | os.PathLike[str],
    query_loader: Iterable,
    gallery_loader: Iterable,
    metric: str = "cosine",
    ap: str = "step",
    max_rank: int = 50,
    chunk_size: int = 2048,
) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime on every query and gallery image.

    Returns ``images``, ``max_abs_diff``, ``min_cosine`` and the metrics of each
    (``mAP_torch``, ``mAP_onnx``, ``rank1_torch``, ``rank1_onnx``, ``mINP_torch``, ``mINP_onnx``).
    """
    session = onnx_session(onnx_path)
    device = torch.device("cpu")
    model = model.eval().float().cpu()
    tq, tg = (extract_features(model, loader, device) for loader in (query_loader, gallery_loader))
    oq, og = (onnx_features(session, loader) for loader in (query_loader, gallery_loader))
    a, b = torch.cat([tq[0], tg[0]]), torch.cat([oq[0], og[0]])
    report: dict[str, Any] = {
        "onnx": str(onnx_path),
        "images": int(a.shape[0]),
        "descriptor_dim": int(a.shape[1]),
        "max_abs_diff": float((a - b).abs().max()),
        "min_cosine": float(F.cosine_similarity(a.double(), b.double(), dim=1).min()),
    }
    for tag, (q, g) in (("torch", (tq, tg)), ("onnx", (oq, og))):
        for key, value in _metrics(q[0], g[0], q, g, metric, ap, max_rank, chunk_size).items():
            report[f"{key}_{tag}"] = value
    return report


def check_parity(report: dict[str, Any], max_abs_diff: float = MAX_ABS_DIFF, min_cosine: float = MIN_COSINE) -> None:
    """Raise :class:`ParityError` listing every bound a :func:`parity_report` breaks."""
    problems = []
    if not report["max_abs_diff"] <= max_abs_diff:
        problems.append(f"max abs difference {report['max_abs_diff']:.3g} > {max_abs_diff:g}")
    if not report["min_cosine"] >= min_cosine:
        problems.append(f"min cosine {report['min_cosine']:.6f} < {min_cosine}")
    for key in ("mAP", "rank1", "mINP"):
        if not abs(report[f"{key}_torch"] - report[f"{key}_onnx"]) <= METRIC_TOL:
            problems.append(f"{key} {report[f'{key}_torch']:.6f} (PyTorch) != {report[f'{key}_onnx']:.6f} (ONNX)")
    if problems:
        raise ParityError(f"ONNX parity check failed for {report['onnx']}: " + "; ".join(problems), report)


def _trained_at(run_dir: Path) -> str | None:
    """The commit a run was trained at (its ``run.json``), or None."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((run_dir / "run.json").read_text()).get("git", {}).get("commit")
    return None


def export_run(
    run_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    opset: int = OPSET,
    check: bool = True,
    overwrite: bool = False,
    force: bool = False,
    allow_unfinished: bool = False,
) -> dict[str, Any]:
    """Export a run's model (its checkpoint, or ``checkpoint``) to ONNX and, with ``check``, verify it.

    The parity check runs on the run's data set (``data_root`` if it moved) and raises
    :class:`ParityError` (with the report as ``.report``) beyond the bounds. Refused before any
    work: an existing ``dest`` (unless ``overwrite``), weights trained with another configuration
    than ``config.yaml`` (unless ``force``), a run that did not finish (unless ``allow_unfinished``).
    Returns the report: the file, opset and, when checked, the numbers of :func:`parity_report`.
    """

    require_onnx()  # missing packages, an unwritable place and a wrong data root fail before any work
    try:
        check_destination(dest, replace=overwrite)
    except OSError as exc:
        raise ExportError(str(exc)) from None
    cfg, ckpt, state = load_run_checkpoint(run_dir, checkpoint, force=force, finished=not allow_unfinished)
    if data_root is not None:
        cfg["data"]["root"] = str(data_root)
    model, meta = model_from_state(cfg, state, ckpt)
    loaders = build_eval_loaders(RunSections.from_config(cfg).data)[1:] if check else None
    d = cfg["data"]
    info = {
        "source_run": str(run_dir),
        "checkpoint": str(ckpt),
        "epoch": str(meta.get("epoch")),
        "input": f"RGB float32, {d['height']}x{d['width']}, " + ("ImageNet mean/std" if d["normalize"] else "[0, 1]"),
        "parts": str(list(model.parts)),
        "descriptor_dim": str(model.descriptor_dim),
        "config_hash": str(stored_config_hash(state) or ""),
        "commit": str(_trained_at(Path(run_dir)) or ""),
    }
    export_onnx(model, dest, int(d["height"]), int(d["width"]), opset, metadata=info)
    report: dict[str, Any] = {"onnx": str(dest), "opset": int(opset), "source_run": str(run_dir)}
    if loaders is not None:
        e = cfg["eval"]
        report.update(
            parity_report(
                model,
                dest,
                *loaders,
                metric=e["metric"],
                ap=e["ap"],
                max_rank=int(e["max_rank"]),
                chunk_size=int(e["chunk_size"]),
            )
        )
        log.info(
            "ONNX parity on %d images: max abs diff %.3g, min cosine %.7f, mAP %.6f (PyTorch) %.6f (ONNX)",
            report["images"],
            report["max_abs_diff"],
            report["min_cosine"],
            report["mAP_torch"],
            report["mAP_onnx"],
        )
        check_parity(report)
    return report
