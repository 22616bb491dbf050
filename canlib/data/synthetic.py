"""The synthetic re-ID data set: the embedded default of every chapter, test and CI run.

``make_synthetic(out_dir, ids=500, seed=0)`` writes a Market-1501-layout folder
(``bounding_box_train/``, ``bounding_box_test/``, ``query/``, names
``PPPP_cCsS_FFFFFF_BB.jpg``) of procedurally drawn people seen by several cameras, with
distractors (pid 0) and junk (pid -1) in the gallery, plus ``README.txt``, ``meta.json``
and ``identities.json``. Train and test ids are disjoint; every test id is seen by at
least two cameras and has one query per camera (Market style), so each query has a
gallery match from another camera. About ``hard_negative_fraction`` of the ids come in
groups that share an outfit and differ in one local detail (shoes, logo, belt, bag,
head wear, trousers or the pattern of the top), the situation of the paper's Figure 1.

The same arguments give byte-identical files: every image has its own random generator
seeded from (seed, pid, camera, index), JPEG quality is fixed and nothing records a time.
The defaults (500 ids, 10 images per id, 6 cameras, 128x64 pixels) give about 5,300
images in about 12 s on one core; ``--help`` of ``python -m canlib make-synthetic`` lists
the difficulty knobs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from canlib.data.synthetic_draw import VIEWS, PersonPainter, Pose
from canlib.data.synthetic_identity import Identity, make_identities, random_identity
from canlib.data.synthetic_scene import Camera, apply_camera, draw_background, draw_occluder, make_cameras

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
SUBSETS = ("bounding_box_train", "query", "bounding_box_test")
_KIND_CODE = {"id": 1, "distractor": 2, "junk": 3}


@dataclass
class SyntheticConfig:
    """Every argument of the generator, with its default (see the CLI's help texts)."""

    ids: int = 500
    seed: int = 0
    train_fraction: float = 0.5
    images_per_id: int = 10
    cameras: int = 6
    min_cameras: int = 2
    max_cameras: int = 5
    height: int = 128
    width: int = 64
    hard_negative_fraction: float = 0.4
    group_size: int = 3
    camera_strength: float = 0.35
    noise: float = 0.35
    blur: float = 0.35
    occlusion: float = 0.05
    misalignment: float = 0.35
    distractors: float = 0.12
    junk: float = 0.06
    supersample: int = 2
    jpeg_quality: int = 90

    def validate(self) -> None:
        """Raise ``ValueError`` for arguments that cannot make a valid set."""
        if self.ids < 4:
            raise ValueError("ids must be at least 4 (2 train and 2 test ids)")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError("train_fraction must be in (0, 1)")
        if self.cameras < 2 or not 2 <= self.min_cameras <= self.max_cameras:
            raise ValueError("need cameras >= 2 and 2 <= min_cameras <= max_cameras")
        if self.height < 16 or self.width < 8 or self.supersample < 1:
            raise ValueError("image size too small")


@dataclass(frozen=True)
class ImageSpec:
    """One file to draw."""

    subset: str
    kind: str  # "id", "distractor" or "junk"
    pid: int
    cam: int  # 0-based
    seq: int
    frame: int
    index: int  # position within its (pid, cam) track, or a running number
    box: int = 1

    @property
    def filename(self) -> str:
        pid = "-1" if self.pid < 0 else f"{self.pid:04d}"
        return f"{pid}_c{self.cam + 1}s{self.seq}_{self.frame:06d}_{self.box:02d}.jpg"


def split_ids(cfg: SyntheticConfig, groups: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Train and test pids; hard-negative groups stay on one side."""
    rng = np.random.default_rng([cfg.seed, 400])
    grouped = {p for g in groups for p in g}
    units = [list(g) for g in groups] + [[p] for p in range(1, cfg.ids + 1) if p not in grouped]
    order = rng.permutation(len(units))
    n_train = round(cfg.train_fraction * cfg.ids)
    train: list[int] = []
    test: list[int] = []
    for i in order:
        (train if len(train) < n_train else test).extend(units[i])
    if len(test) < 2 or len(train) < 2:
        raise ValueError("too few ids for a train/test split")
    return sorted(train), sorted(test)


def plan_images(cfg: SyntheticConfig, train: Sequence[int], test: Sequence[int]) -> list[ImageSpec]:
    """Every image of the set: cameras and tracks per id, queries, distractors and junk."""
    specs: list[ImageSpec] = []
    test_set = set(test)
    for pid in sorted([*train, *test]):
        rng = np.random.default_rng([cfg.seed, 401, pid])
        n_cams = int(rng.integers(cfg.min_cameras, min(cfg.max_cameras, cfg.cameras) + 1))
        cams = sorted(int(c) for c in rng.choice(cfg.cameras, n_cams, replace=False))
        per_cam = 2 if pid in test_set else 1
        total = max(n_cams * per_cam, round(cfg.images_per_id * rng.uniform(0.6, 1.4)))
        counts = per_cam + rng.multinomial(total - n_cams * per_cam, rng.dirichlet(np.full(n_cams, 2.0)))
        for cam, n in zip(cams, counts, strict=True):
            seq, frame = int(rng.integers(1, 7)), int(rng.integers(100, 9000)) * 10
            query_at = int(rng.integers(n)) if pid in test_set else -1
            for i in range(int(n)):
                subset = (
                    "bounding_box_train" if pid not in test_set else "query" if i == query_at else "bounding_box_test"
                )
                specs.append(ImageSpec(subset, "id", pid, cam, seq, frame, i))
                frame += int(rng.integers(5, 60))
    n_gallery = sum(1 for s in specs if s.subset == "bounding_box_test")
    rng = np.random.default_rng([cfg.seed, 402])
    names = {s.filename for s in specs}
    for kind, pid, fraction in (("distractor", 0, cfg.distractors), ("junk", -1, cfg.junk)):
        for i in range(round(fraction * n_gallery)):
            spec = ImageSpec(
                "bounding_box_test",
                kind,
                pid,
                int(rng.integers(cfg.cameras)),
                int(rng.integers(1, 7)),
                int(rng.integers(100, 99999)) * 10,
                i,
            )
            while spec.filename in names:
                spec = dataclasses.replace(spec, box=spec.box + 1)
            names.add(spec.filename)
            specs.append(spec)
    return specs


class Renderer:
    """Draws the images of one configuration (identities and cameras fixed)."""

    def __init__(self, cfg: SyntheticConfig, identities: dict[int, Identity], cameras: Sequence[Camera]) -> None:
        self.cfg, self.identities, self.cameras = cfg, identities, list(cameras)

    def render(self, spec: ImageSpec) -> Image.Image:
        """The image of ``spec`` (deterministic)."""
        cfg, cam = self.cfg, self.cameras[spec.cam]
        code = _KIND_CODE[spec.kind]
        rng = np.random.default_rng([cfg.seed, 600 + code, max(spec.pid, 0), spec.cam, spec.seq, spec.index])
        track = np.random.default_rng(
            [cfg.seed, 500 + code, max(spec.pid, 0), spec.cam, spec.seq, spec.index if spec.kind != "id" else 0]
        )
        ss = cfg.supersample
        size = (cfg.width * ss, cfg.height * ss)
        img = Image.new("RGB", size)
        draw = ImageDraw.Draw(img)
        draw_background(draw, size, cam, rng)
        view = VIEWS[int(track.choice(4, p=cam.views))]
        if rng.random() < 0.15:
            view = VIEWS[int(rng.choice(4, p=cam.views))]
        light = float(track.uniform(0.88, 1.12) * rng.uniform(0.96, 1.04))
        m = cfg.misalignment
        scale = track.uniform(0.94, 1.02) * rng.uniform(1.0 - 0.1 * m, 1.0 + 0.04 * m)
        dx, dy = rng.uniform(-1, 1) * 0.09 * m, rng.uniform(-1, 1) * 0.045 * m
        ident: Identity | None = self.identities.get(spec.pid)
        if spec.kind == "distractor":
            ident = random_identity(0, rng) if rng.random() < 0.6 else None
        elif spec.kind == "junk":
            ident = random_identity(0, rng)
            if rng.random() < 0.5:
                scale, dy = rng.uniform(1.6, 2.6), rng.uniform(-0.9, 0.3)
            else:
                dx = rng.choice([-1, 1]) * rng.uniform(0.35, 0.6)
        if ident is not None:
            ph = size[1] * 0.9 * ident.height * scale
            cx, top = size[0] * (0.5 + dx), (size[1] - ph) / 2 + dy * size[1]
            sx, sy = cx, top + ph * 0.985
            draw.ellipse(
                [sx - 0.16 * ph, sy - 0.02 * ph, sx + 0.16 * ph, sy + 0.02 * ph],
                fill=tuple(int(c * 0.6) for c in cam.ground_color),
            )
            stride = float(rng.uniform(0.05, 0.4))
            pose = Pose(view=view, phase=float(rng.uniform(0, 2 * np.pi)), stride=stride, arm_swing=0.7 * stride)
            PersonPainter(draw, cx, top, ph).person(ident, pose)
        if spec.kind == "id" and rng.random() < cfg.occlusion:
            draw_occluder(draw, size, rng)
        if ss > 1:
            img = img.reduce(ss)
        return apply_camera(img, cam, rng, light)


#: This process's renderer, set by :func:`_init_worker` (in every pool worker, or in the main process).
_WORKER: dict[str, Renderer] = {}


def _init_worker(renderer: Renderer) -> None:
    _WORKER["renderer"] = renderer


def _write_batch(args: tuple[str, list[ImageSpec]]) -> int:
    out, specs = args
    renderer = _WORKER["renderer"]
    for spec in specs:
        renderer.render(spec).save(Path(out) / spec.subset / spec.filename, "JPEG", quality=renderer.cfg.jpeg_quality)
    return len(specs)


def dataset_statistics(specs: Sequence[ImageSpec]) -> dict[str, int]:
    """The counts :meth:`canlib.data.base.ReIDDataset.statistics` will find (junk dropped)."""
    by = {s: [x for x in specs if x.subset == s] for s in SUBSETS}
    gallery = [x for x in by["bounding_box_test"] if x.pid != -1]
    return {
        "train_ids": len({x.pid for x in by["bounding_box_train"]}),
        "train_images": len(by["bounding_box_train"]),
        "query_ids": len({x.pid for x in by["query"]}),
        "query_images": len(by["query"]),
        "gallery_ids": len({x.pid for x in gallery}),
        "gallery_images": len(gallery),
        "gallery_junk": len(by["bounding_box_test"]) - len(gallery),
        "cameras": len({x.cam for x in [*by["bounding_box_train"], *by["query"], *gallery]}),
    }


def make_synthetic(
    out_dir: str | os.PathLike[str],
    ids: int = 500,
    seed: int = 0,
    *,
    workers: int = 1,
    overwrite: bool = False,
    **knobs: Any,
) -> dict[str, Any]:
    """Generate the set in ``out_dir``; ``knobs`` are the other fields of :class:`SyntheticConfig`.

    Returns the statistics (also in ``meta.json``) plus ``seconds`` and ``images_per_second``.
    Refuses a folder that already holds a generated set unless ``overwrite``.
    """
    cfg = SyntheticConfig(ids=ids, seed=seed, **knobs)
    cfg.validate()
    out = Path(out_dir)
    existing = [out / s for s in SUBSETS if (out / s).exists()] + [out / "meta.json"] * (out / "meta.json").exists()
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a data set ({existing[0].name}); pass overwrite=True / --overwrite")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    start = time.perf_counter()
    identities, groups = make_identities(
        list(range(1, cfg.ids + 1)), cfg.seed, cfg.hard_negative_fraction, cfg.group_size
    )
    train, test = split_ids(cfg, groups)
    specs = plan_images(cfg, train, test)
    cameras = make_cameras(cfg.cameras, cfg.seed, cfg.camera_strength, cfg.noise, cfg.blur)
    _write_images(out, specs, Renderer(cfg, {i.pid: i for i in identities}, cameras), workers)
    stats = dataset_statistics(specs)
    meta = {
        "generator": "canlib.data.synthetic",
        "version": GENERATOR_VERSION,
        "arguments": dataclasses.asdict(cfg),
        "statistics": stats,
        "files": {s: sum(1 for x in specs if x.subset == s) for s in SUBSETS},
        "distractors": sum(1 for x in specs if x.kind == "distractor"),
        "train_pids": train,
        "test_pids": test,
        "groups": [{"pids": g, "detail": identities[g[0] - 1].detail} for g in groups],
        "cameras": [dataclasses.asdict(c) for c in cameras],
    }
    _write_records(out, meta, identities, _readme(cfg, stats))
    seconds = time.perf_counter() - start
    log.info("synthetic set: %d images in %.1f s (%.0f images/s) at %s", len(specs), seconds, len(specs) / seconds, out)
    return {**stats, "files_total": len(specs), "seconds": seconds, "images_per_second": len(specs) / seconds}


#: Where :func:`gallery_identities` puts its images, under the set's folder.
GALLERY_IDENTITIES = "gallery_identities"
#: Added to the set's seed for the appearance of :func:`gallery_identities`' people (their cameras
#: keep the set's seed, so they are filmed as the set's own identities are).
_GALLERY_SEED_OFFSET = 7919


def gallery_identities(root: str | os.PathLike[str], ids: int, workers: int = 1) -> list[tuple[str, int, int]]:
    """Gallery images of ``ids`` more people for the synthetic set at ``root``, none of them in it.

    A validation gallery drawn from 50 training identities holds 50 people; the test gallery holds
    250. These people fill a validation gallery to the test gallery's size, as Market-1501's
    distractor set fills its gallery: new identities (pids after the set's last, look-alike groups
    among themselves, appearance, tracks and noise from another seed), filmed by the set's own
    cameras, with the test identities' number of gallery images and the generator's share of
    distractor images (pid 0; no junk, which evaluation drops). Written once to
    ``root/gallery_identities/<ids>/`` (deterministic, under a file lock) and returned as
    (path, pid, camid) records.
    """
    from filelock import FileLock

    base = Path(root)
    meta = json.loads((base / "meta.json").read_text())
    cameras_of = SyntheticConfig(**meta["arguments"])
    cfg = dataclasses.replace(cameras_of, seed=cameras_of.seed + _GALLERY_SEED_OFFSET)
    pids = list(range(cfg.ids + 1, cfg.ids + 1 + int(ids)))
    specs = [s for s in plan_images(cfg, [], pids) if s.subset == "bounding_box_test" and s.kind != "junk"]
    out = base / GALLERY_IDENTITIES / str(int(ids))
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        done = out / "done.json"
        if not done.is_file():
            identities, _ = make_identities(pids, cfg.seed, cfg.hard_negative_fraction, cfg.group_size)
            c = cameras_of
            cameras = make_cameras(c.cameras, c.seed, c.camera_strength, c.noise, c.blur)
            shutil.rmtree(out, ignore_errors=True)
            _write_images(out, specs, Renderer(cfg, {i.pid: i for i in identities}, cameras), workers)
            for subset in ("bounding_box_train", "query"):
                (out / subset).rmdir()
            done.write_text(json.dumps({"ids": int(ids), "pids": [pids[0], pids[-1]], "images": len(specs)}) + "\n")
            log.info("synthetic gallery identities: %d images of %d new people in %s", len(specs), ids, out)
    return [(str(out / s.subset / s.filename), s.pid, s.cam) for s in specs]


def _write_images(out: Path, specs: list[ImageSpec], renderer: Renderer, workers: int) -> None:
    """Render and save every image, in batches of 64 (in ``workers`` processes when more than one)."""
    for s in SUBSETS:
        (out / s).mkdir(parents=True, exist_ok=True)
    batches = [(str(out), specs[i : i + 64]) for i in range(0, len(specs), 64)]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(renderer,)) as pool:
            list(pool.map(_write_batch, batches))
    else:
        _init_worker(renderer)
        for batch in batches:
            _write_batch(batch)


def _write_records(out: Path, meta: dict[str, Any], identities: Sequence[Identity], readme: str) -> None:
    """``meta.json``, ``identities.json`` and ``README.txt`` beside the images."""
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    (out / "identities.json").write_text(json.dumps([i.to_json() for i in identities], indent=1, sort_keys=True) + "\n")
    (out / "README.txt").write_text(readme)


def _readme(cfg: SyntheticConfig, stats: dict[str, int]) -> str:
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in dataclasses.asdict(cfg).items())
    return (
        f"Synthetic person re-identification set, canlib generator version {GENERATOR_VERSION}.\n"
        "Market-1501 layout: bounding_box_train/, query/, bounding_box_test/; names PPPP_cCsS_FFFFFF_BB.jpg;\n"
        "pid 0000 = distractor, -1 = junk (ignored by the evaluator). meta.json: arguments, counts, hard-negative\n"
        "groups, cameras; identities.json: the attributes of every id. Procedurally drawn; no real person.\n"
        f"Regenerate byte-identically with: python -m canlib make-synthetic --out DIR {args}\n"
        f"Counts: {json.dumps(stats, sort_keys=True)}\n"
    )


def sample_grid(
    root: str | os.PathLike[str], pids: Sequence[int] | None = None, rows: int = 8, scale: int = 2, label: bool = True
) -> Image.Image:
    """A grid of samples: one row per id (a hard-negative group first, side by side), one column per camera."""
    root = Path(root)
    meta = json.loads((root / "meta.json").read_text())
    n_cams = int(meta["arguments"]["cameras"])
    h, w = int(meta["arguments"]["height"]), int(meta["arguments"]["width"])
    files: dict[tuple[int, int], Path] = {}
    for s in SUBSETS:
        for path in sorted((root / s).glob("*.jpg")):
            pid, cam = int(path.name.split("_")[0]), int(path.name.split("_c")[1].split("s")[0]) - 1
            files.setdefault((pid, cam), path)
    if pids is None:
        chosen: list[int] = []
        for g in sorted(meta["groups"], key=lambda g: -len(g["pids"])):
            if len(chosen) + len(g["pids"]) <= max(rows - 2, 2):
                chosen += [p for p in g["pids"] if p not in chosen]
        others = [p for p in meta["test_pids"] + meta["train_pids"] if p not in chosen]
        pids = chosen + others[: max(0, rows - len(chosen))]
    details = {p: g["detail"] for g in meta["groups"] for p in g["pids"]}
    margin = 70 if label else 0
    grid = Image.new("RGB", (margin + n_cams * (w + 2), len(pids) * (h + 2) + 14), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c in range(n_cams):
        draw.text((margin + c * (w + 2) + 4, 1), f"cam {c + 1}", fill=(0, 0, 0))
    for r, pid in enumerate(pids):
        y = 14 + r * (h + 2)
        if label:
            draw.text((2, y + h // 2 - 10), f"id {pid}", fill=(0, 0, 0))
            if pid in details:
                draw.text((2, y + h // 2 + 2), details[pid], fill=(170, 0, 0))
        for c in range(n_cams):
            found = files.get((pid, c))
            cell = Image.open(found).convert("RGB") if found else Image.new("RGB", (w, h), (225, 225, 225))
            grid.paste(cell, (margin + c * (w + 2), y))
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST) if scale > 1 else grid


SYNTHETIC_DESCRIPTION = (
    "Write a Market-1501-layout folder (bounding_box_train/, query/, bounding_box_test/) of procedurally drawn "
    "people seen by several cameras, with distractors (0000_*) and junk (-1_*) in the gallery and groups of hard "
    "negatives that differ in one local detail. The same arguments give byte-identical files."
)

SYNTHETIC_HELP = {
    "train_fraction": "fraction of the ids used for training (rest: test)",
    "images_per_id": "mean images per id (drawn uniformly in 0.6x..1.4x)",
    "cameras": "number of cameras",
    "min_cameras": "fewest cameras an id is seen by (>= 2)",
    "max_cameras": "most cameras an id is seen by",
    "height": "image height in pixels (Market-1501's boxes: 128)",
    "width": "image width in pixels (Market-1501's boxes: 64)",
    "hard_negative_fraction": "fraction of ids in groups sharing an outfit, differing in one local detail",
    "group_size": "largest hard-negative group (groups have 2..N members)",
    "camera_strength": "scale of the cameras' colour cast / exposure / contrast / saturation differences (0: none)",
    "noise": "scale of the cameras' sensor noise (0: none)",
    "blur": "scale of the cameras' blur (0: none)",
    "occlusion": "probability that an object covers part of the person",
    "misalignment": "scale of detector-like box errors (random scale and shift; 0: centred)",
    "distractors": "distractor images (pid 0) as a fraction of the gallery",
    "junk": "junk images (pid -1) as a fraction of the gallery",
    "supersample": "drawing resolution factor before downsampling (anti-aliasing)",
    "jpeg_quality": "JPEG quality (fixed, for byte-identical output)",
}
