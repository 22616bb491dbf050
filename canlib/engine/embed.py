"""Descriptors of any folder of person crops, from a run, exported weights or an ONNX file.

:func:`load_embedder` opens a trained model: a run folder (its checkpoint, checked against its
``config.yaml``), an exported weights file (:func:`canlib.engine.weights.load_trained`) or an ONNX
file (run by ONNX Runtime, the deployment path; the ``export`` extra). Each carries its test-time
input: the run's height, width and normalisation, applied by the test loader's own transform
(:func:`canlib.data.transforms.build_transforms`).

:func:`embed_images` reads every JPEG, PNG or BMP under a folder (any names, any depth), skips
the unreadable ones with their names and a count, and returns the descriptors L2-normalised, as
the evaluator compares them. :func:`save_embeddings` writes them to one ``.npz`` file of plain
arrays (read back with ``allow_pickle=False``): descriptors (float32), paths relative to the
folder, each file's size and modification time, and the model's provenance as JSON. Embedding the
same folder into the same file again computes only the files that changed (path, size, mtime).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from canlib.config import RunSections
from canlib.data.base import IMAGE_EXTENSIONS, ImageReadError, read_image
from canlib.data.transforms import build_transforms
from canlib.engine.build import resolve_device
from canlib.engine.evaluate import extract_features
from canlib.engine.onnx_export import onnx_session
from canlib.engine.record import git_commit
from canlib.engine.weights import (
    check_destination,
    load_run_checkpoint,
    load_trained,
    model_from_state,
    stored_config_hash,
)
from canlib.metrics.distance import NORMALIZE_EPS

log = logging.getLogger(__name__)

#: File format version of an embeddings file.
FORMAT = 1
#: Folders of at least this many images get a progress bar.
PROGRESS_FROM = 200


class EmbedError(ValueError):
    """Input that cannot be embedded or an embeddings file that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What embeds: the model file and its provenance, and the test-time input it expects."""

    source: str
    kind: str  # "run", "weights" or "onnx"
    config_hash: str | None
    file_sha256: str
    run: str | None
    commit: str | None
    epoch: int | None
    height: int
    width: int
    normalize: bool
    flip_tta: bool

    def same_input(self, other: dict[str, Any]) -> bool:
        """Whether ``other`` (a stored :class:`ModelInfo` as a dict) gives the same descriptors."""
        keys = ("file_sha256", "height", "width", "normalize", "flip_tta")
        return all(other.get(key) == getattr(self, key) for key in keys)


class Embedder:
    """A trained model that turns images into descriptors: PyTorch (``model``) or ONNX Runtime (``session``)."""

    def __init__(self, info: ModelInfo, model: torch.nn.Module | None = None, session: Any = None, device: Any = None):
        self.info, self.model, self.session = info, model, session
        self.device = device if device is not None else torch.device("cpu")

    def transform(self) -> Any:
        """The test loader's transform: resize to the run's size, to float, normalised as it was."""
        return build_transforms(self.info.height, self.info.width, train=False, normalize=self.info.normalize)

    def features(
        self, batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """(descriptors, indices) of loader-style batches ``(images, index, camid)``, not normalised."""
        if self.model is not None:
            feats, idx, _ = extract_features(self.model, batches, self.device, flip_tta=self.info.flip_tta)
            return feats, idx
        name = self.session.get_inputs()[0].name
        out, indices = [], []
        for images, index, _ in batches:
            f = torch.from_numpy(self.session.run(None, {name: images.numpy()})[0])
            if self.info.flip_tta:
                mirrored = torch.flip(images, dims=[3]).numpy()
                f = 0.5 * (f + torch.from_numpy(self.session.run(None, {name: mirrored})[0]))
            out.append(f)
            indices.append(index.numpy())
        return torch.cat(out), np.concatenate(indices)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_commit(record: Any) -> str | None:
    git = record.get("git") if isinstance(record, dict) else None
    return git.get("commit") if isinstance(git, dict) else None


def _torch_info(
    source: Path, kind: str, cfg: dict[str, Any], file: Path, state_hash: str | None, **rest: Any
) -> ModelInfo:
    data = RunSections.from_config(cfg).data
    return ModelInfo(
        source=str(source),
        kind=kind,
        config_hash=state_hash,
        file_sha256=_sha256(file),
        height=int(data.height),
        width=int(data.width),
        normalize=bool(data.normalize),
        flip_tta=bool(RunSections.from_config(cfg).eval.flip_tta),
        **rest,
    )


def _onnx_embedder(path: Path) -> Embedder:
    session = onnx_session(path)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or not all(isinstance(s, int) for s in shape[2:]):
        raise EmbedError(f"{path}: its input is {shape}, not images (batch, 3, height, width) of a fixed size")
    epoch = meta.get("epoch")
    info = ModelInfo(
        source=str(path),
        kind="onnx",
        config_hash=meta.get("config_hash") or None,
        file_sha256=_sha256(path),
        run=meta.get("source_run"),
        commit=meta.get("commit") or None,
        epoch=int(epoch) if epoch and epoch.isdigit() else None,
        height=int(shape[2]),
        width=int(shape[3]),
        normalize="[0, 1]" not in meta.get("input", ""),
        flip_tta=False,
    )
    return Embedder(info, session=session)


def load_embedder(source: str | os.PathLike[str], device: str | None = "auto", force: bool = False) -> Embedder:
    """The model of ``source``: a run folder, an exported weights file (``canlib export``) or an ONNX file.

    A run's checkpoint must have been trained with its ``config.yaml`` (unless ``force``). Raises
    ``FileNotFoundError``, :class:`EmbedError` or :class:`~canlib.engine.checkpoint.CheckpointError` naming it.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist: give a run folder, exported weights or an ONNX file")
    if path.suffix.lower() == ".onnx":
        return _onnx_embedder(path)
    dev = resolve_device(device)
    if path.is_dir():
        cfg, ckpt, state = load_run_checkpoint(path, force=force)
        model, meta = model_from_state(cfg, state, ckpt, dev)
        record = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
        rest = {"run": str(path), "commit": _run_commit(record), "epoch": meta.get("epoch")}
        return Embedder(_torch_info(path, "run", cfg, ckpt, stored_config_hash(state), **rest), model, device=dev)
    model, meta = load_trained(path, dev)
    record = meta.get("record") or {}
    rest = {"run": None, "commit": _run_commit(record), "epoch": meta.get("epoch")}
    info = _torch_info(path, "weights", meta["config"], path, stored_config_hash(meta), **rest)
    return Embedder(info, model, device=dev)


def list_images(path: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """``(root, relative paths)`` of the images ``path`` names: itself (a file) or every image under it
    (a folder, recursively, hidden entries aside), sorted. :class:`EmbedError` for a file that is not an
    image and a folder without any; ``FileNotFoundError`` for a path that does not exist."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise EmbedError(f"{path} is not an image: expected one of {', '.join(IMAGE_EXTENSIONS)}")
        return path.parent, [path.name]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    found = [
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    if not found:
        raise EmbedError(f"{path} holds no image ({', '.join(IMAGE_EXTENSIONS)}) in it or its sub-folders")
    return path, sorted(found)


@dataclasses.dataclass
class Embeddings:
    """Descriptors (float32, L2-normalised) of the images ``root / paths[i]``, with their provenance.

    ``sizes`` and ``mtimes`` (nanoseconds) are each file's when it was embedded; ``skipped`` names
    the unreadable images and why; ``meta`` holds ``model`` (a :class:`ModelInfo` as a dict) and more.
    """

    descriptors: np.ndarray
    paths: list[str]
    root: Path
    sizes: np.ndarray
    mtimes: np.ndarray
    meta: dict[str, Any]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    reused: int = 0

    def files(self) -> list[Path]:
        """Every image's path on this machine."""
        return [self.root / p for p in self.paths]


class _Images(Dataset):
    """Image files -> ``(tensor or None, index, error message)``: an unreadable file is reported, not raised."""

    def __init__(self, files: Sequence[Path], transform: Any) -> None:
        self.files, self.transform = list(files), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            return self.transform(read_image(self.files[i])), i, ""
        except ImageReadError as exc:
            return None, i, str(exc)


def _collate(items: list[tuple[torch.Tensor | None, int, str]]) -> tuple[torch.Tensor | None, torch.Tensor, list]:
    good = [(t, i) for t, i, _ in items if t is not None]
    bad = [(i, msg) for t, i, msg in items if t is None]
    images = torch.stack([t for t, _ in good]) if good else None
    return images, torch.tensor([i for _, i in good], dtype=torch.long), bad


def _compute(
    embedder: Embedder, files: Sequence[Path], batch_size: int, workers: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(descriptors, indices into ``files`` of the readable ones, [(index, why)] of the others)."""
    loader = DataLoader(
        _Images(files, embedder.transform()), batch_size=batch_size, num_workers=workers, collate_fn=_collate
    )
    errors: list[tuple[int, str]] = []
    bar = tqdm(total=len(files), unit="image", desc="embedding", disable=not progress or len(files) < PROGRESS_FROM)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for images, index, bad in loader:
            errors.extend(bad)
            bar.update(len(index) + len(bad))
            if images is not None:
                yield images, index, torch.zeros_like(index)

    with bar:
        stream = batches()
        first = next(stream, None)
        if first is None:  # nothing readable
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), errors
        feats, index = embedder.features(itertools.chain([first], stream))
    return F.normalize(feats.float(), dim=1, eps=NORMALIZE_EPS).numpy(), np.asarray(index, np.int64), errors


def _reusable(embedder: Embedder, previous: Embeddings | None) -> dict[tuple[str, int, int], int]:
    """``{(path, size, mtime_ns): row}`` of ``previous``'s descriptors that ``embedder`` would compute again."""
    if previous is None or not embedder.info.same_input(previous.meta.get("model", {})):
        return {}
    keys = zip(previous.paths, previous.sizes.tolist(), previous.mtimes.tolist(), strict=True)
    return {key: row for row, key in enumerate(keys)}


def embed_images(
    embedder: Embedder,
    path: str | os.PathLike[str],
    previous: Embeddings | None = None,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
) -> Embeddings:
    """The descriptors of the image ``path`` or of every image under the folder ``path`` (:func:`list_images`).

    Files that ``previous`` (embeddings by the same model) holds with the same relative path, size and
    modification time are not read again. Unreadable images are named in a warning and skipped;
    :class:`EmbedError` when none can be read.
    """
    root, rel = list_images(path)
    stats = [(root / r).stat() for r in rel]
    sizes = np.array([s.st_size for s in stats], dtype=np.int64)
    mtimes = np.array([s.st_mtime_ns for s in stats], dtype=np.int64)
    known = _reusable(embedder, previous)
    rows = [known.get(key) for key in zip(rel, sizes.tolist(), mtimes.tolist(), strict=True)]
    todo = [i for i, row in enumerate(rows) if row is None]
    desc, index, errors = _compute(embedder, [root / rel[i] for i in todo], batch_size, workers, progress)
    skipped = [(rel[todo[i]], why) for i, why in errors]
    for name, why in skipped:
        log.warning("skipped %s: %s", name, why)
    ok = np.zeros(len(rel), dtype=bool)
    dim = desc.shape[1] if len(index) else (previous.descriptors.shape[1] if previous is not None and known else 0)
    out = np.zeros((len(rel), dim), dtype=np.float32)
    for i, row in enumerate(rows):
        if row is not None and previous is not None:
            out[i], ok[i] = previous.descriptors[row], True
    if len(index):
        targets = np.asarray(todo, dtype=np.int64)[index]
        out[targets], ok[targets] = desc, True
    if not ok.any():
        raise EmbedError(f"none of the {len(rel)} images of {path} could be read (first: {skipped[0][1]})")
    if skipped:
        log.warning("%d of %d images could not be read and were skipped", len(skipped), len(rel))
    meta = {
        "format": FORMAT,
        "model": dataclasses.asdict(embedder.info),
        "root": str(root.resolve()),
        "descriptor_dim": int(dim),
        "metric": "cosine",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "embedded_with": git_commit(),
    }
    keep = np.flatnonzero(ok)
    return Embeddings(
        out[keep], [rel[i] for i in keep], root, sizes[keep], mtimes[keep], meta, skipped, len(rel) - len(todo)
    )


def save_embeddings(emb: Embeddings, dest: str | os.PathLike[str]) -> Path:
    """Write ``emb`` to ``dest`` (``.npz`` of plain arrays, no pickled objects), atomically."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    meta = {**emb.meta, "skipped": [list(s) for s in emb.skipped]}
    try:
        with tmp.open("wb") as f:
            np.savez(
                f,
                descriptors=np.ascontiguousarray(emb.descriptors, dtype=np.float32),
                paths=np.array(emb.paths, dtype=str),
                sizes=emb.sizes.astype(np.int64),
                mtimes=emb.mtimes.astype(np.int64),
                meta=np.array(json.dumps(meta)),
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


_KEYS = ("descriptors", "paths", "sizes", "mtimes", "meta")


def load_embeddings(path: str | os.PathLike[str]) -> Embeddings:
    """An embeddings file written by :func:`save_embeddings`, read without unpickling anything.

    :class:`EmbedError` naming the file when it is not one (or is damaged); images are looked for
    under the folder it was embedded from.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not all(key in z.files for key in _KEYS):
                raise EmbedError(f"{path} is not an embeddings file of canlib embed (it lacks {', '.join(_KEYS)})")
            arrays = {key: z[key] for key in _KEYS}
        meta = json.loads(str(arrays["meta"]))
    except EmbedError:
        raise
    except Exception as exc:  # a zip that is no npz, a pickled array, a damaged file
        raise EmbedError(f"{path} is not a readable embeddings file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise EmbedError(f"{path}: embeddings format {meta.get('format')!r}, this canlib reads {FORMAT}")
    skipped = [(str(a), str(b)) for a, b in meta.pop("skipped", [])]
    desc = arrays["descriptors"].astype(np.float32, copy=False)
    paths = [str(p) for p in arrays["paths"]]
    return Embeddings(desc, paths, Path(meta["root"]), arrays["sizes"], arrays["mtimes"], meta, skipped)


def embed_folder(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    device: str | None = "auto",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    force: bool = False,
) -> Embeddings:
    """Embed the images under ``images`` with ``model`` (:func:`load_embedder`) into ``out``.

    An existing ``out`` by the same model is reused for unchanged files; one by another model is
    replaced; a file there that is not an embeddings file is refused (``force``: see :func:`load_embedder`).
    """
    out = check_destination(out)
    list_images(images)  # an empty folder or a file that is no image: refused before the model is read
    previous = None
    if out.exists():
        try:
            previous = load_embeddings(out)
        except EmbedError as exc:
            raise EmbedError(f"{exc}: refusing to replace it; name another --out") from None
    embedder = load_embedder(model, device, force)
    if previous is not None and not _reusable(embedder, previous):
        log.info("%s was embedded by another model or input size: every image is embedded again", out)
    emb = embed_images(embedder, images, previous, batch_size, workers, progress)
    save_embeddings(emb, out)
    log.info(
        "embedded %d images (%d reused, %d skipped) -> %s (%d x %d)",
        len(emb.paths),
        emb.reused,
        len(emb.skipped),
        out,
        *emb.descriptors.shape,
    )
    return emb
