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

Difficulty levels (:data:`LEVELS`, ``--level``): level 0 is the defaults, byte for byte the set
of before the levels existed. ``realistic`` makes the people harder to tell apart (look-alike
groups of up to six that differ by a global cue, the whole outfit's tone or tint or the build, as
often as by a local detail; any view in any image; a freer pose; detector-like crops and cut boxes;
more identities) and the cameras more different, as calibrated against real data. Its knobs draw
from generators of their own, so at their level-0 values nothing else moves.
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
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from PIL import Image, ImageDraw
from pydantic import Field, Strict, ValidationError, model_validator
from pydantic_core import ArgsKwargs
from typing_extensions import dataclass_transform

from canlib.config import frozen_schema
from canlib.data.synthetic_draw import VIEWS, PersonPainter, Pose
from canlib.data.synthetic_identity import Identity, make_identities, random_identity
from canlib.data.synthetic_scene import Camera, apply_camera, draw_background, draw_occluder, make_cameras

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
SUBSETS = ("bounding_box_train", "query", "bounding_box_test")
_KIND_CODE = {"id": 1, "distractor": 2, "junk": 3}


#: The fields a level-0 set's records leave out while they hold their level-0 values, so that
#: ``meta.json`` and ``README.txt`` of a level-0 set stay what they were before these knobs existed.
LEVEL0_SILENT = (
    "global_lookalike_share",
    "viewpoint",
    "pose_strength",
    "box_jitter",
    "partial_view",
    "level",
    "camera_seed",
)


@dataclass(frozen=True)
class Level:
    """A named difficulty: the knobs it sets (explicit arguments override them) and why each value."""

    knobs: dict[str, Any]
    reasons: dict[str, str]


#: The named difficulty levels. ``0``: today's set (the defaults, byte for byte). ``realistic``: a
#: set made harder where real data is hard (identity, views, poses, boxes, cameras): the candidate
#: "identity, camera 0.8" of :data:`canlib.lab.calibrate.LADDER`, the first to bring the pre-trained
#: trunk alone to at most 10 mAP and the cpu recipe fine-tuned to at most 30 mAP on the calibration
#: draws (real re-ID data: 4-5 and 10-28 mAP); the measurements: ``results/controls/calibration-realistic/``.
LEVELS: dict[str, Level] = {
    "0": Level({}, {}),
    "realistic": Level(
        knobs={
            "ids": 1000,
            "hard_negative_fraction": 0.9,
            "group_size": 6,
            "global_lookalike_share": 0.5,
            "viewpoint": 1.0,
            "pose_strength": 2.0,
            "box_jitter": 2.0,
            "partial_view": 0.15,
            "occlusion": 0.15,
            "misalignment": 0.6,
            "camera_strength": 0.8,
        },
        reasons={
            "ids": "real sets train on 485-1,500 ids; 500 train and 500 test ids, twice level 0's gallery",
            "hard_negative_fraction": "most people have look-alikes, as in crowds dressed alike",
            "group_size": "a query meets up to five look-alikes, not two",
            "global_lookalike_share": "real look-alikes differ by overall colour, tone or build as often as by one "
            "local detail; level 0's differ only locally, which favours part features by construction",
            "viewpoint": "any image shows any of the four views: a camera does not see a person from one side only",
            "pose_strength": "longer strides, freer arms and a lean change the silhouette from image to image",
            "box_jitter": "detector boxes vary in scale and aspect per image",
            "partial_view": "some boxes cut the legs or one side off, as detectors do near edges and crowds",
            "occlusion": "more images partly covered (still a minority)",
            "misalignment": "larger box shifts, between level 0's and the knob's maximum",
            "camera_strength": "stronger colour casts and exposure differences between cameras; the calibration's "
            "step that brought the trunk alone into the real range",
        },
    ),
}


Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Strict(), Field(ge=0.0, allow_inf_nan=False)]
Int = Annotated[int, Strict()]


class SyntheticConfigError(ValueError):
    """Arguments of the generator that cannot make a set (one line naming each argument at fault)."""


_T = TypeVar("_T")


@dataclass_transform(field_specifiers=(dataclasses.field, Field), frozen_default=True)
def _arguments(cls: type[_T]) -> type[_T]:
    """A frozen pydantic dataclass refusing unknown arguments; a bad value raises :class:`SyntheticConfigError`."""
    return frozen_schema(cls, lambda exc, *_: SyntheticConfigError(_one_line(exc)))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _one_line(exc: ValidationError) -> str:
    """Each problem of ``exc`` as ``--flag must be ...; got value``, joined on one line."""
    words = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    problems: dict[str, list[str]] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] in words:
            want = f"{words[error['type']]} {next(iter(error['ctx'].values()))}"
        elif error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            problems[name] = [f"unknown argument {_flag(name)}"]
            continue
        elif error["type"] == "value_error":
            problems[name] = [str(error["ctx"]["error"])]
            continue
        else:
            want = error["msg"].removeprefix("Input should be ").replace("a valid integer", "an integer")
        problems.setdefault(name, []).append(want)
    lines = [
        p[0] if p[0].startswith(("unknown", "--")) else f"{_flag(n)} must be {' and '.join(p)}; got {_given(exc, n)}"
        for n, p in problems.items()
    ]
    return "synthetic set: " + "; ".join(lines)


def _given(exc: ValidationError, name: str) -> str:
    return next((repr(e["input"]) for e in exc.errors() if e["loc"] and e["loc"][0] == name), "?")


@_arguments
class SyntheticConfig:
    """Every argument of the generator: its default (level 0), its range and its help text.

    ``level`` names a preset of :data:`LEVELS`: the knobs it sets replace the defaults, and the
    arguments given explicitly replace the preset. Wrong values raise :class:`SyntheticConfigError`.
    """

    ids: Int = Field(default=500, ge=4, description="number of identities (train + test; at least 2 of each)")
    seed: Int = Field(default=0, description="random seed (same arguments: byte-identical files)")
    train_fraction: Annotated[float, Strict()] = Field(
        default=0.5, gt=0.0, lt=1.0, description="fraction of the ids used for training (rest: test)"
    )
    images_per_id: Int = Field(default=10, ge=1, description="mean images per id (drawn uniformly in 0.6x..1.4x)")
    cameras: Int = Field(default=6, ge=2, description="number of cameras")
    min_cameras: Int = Field(default=2, ge=2, description="fewest cameras an id is seen by (>= 2)")
    max_cameras: Int = Field(default=5, ge=2, description="most cameras an id is seen by")
    height: Int = Field(default=128, ge=16, description="image height in pixels (Market-1501's boxes: 128)")
    width: Int = Field(default=64, ge=8, description="image width in pixels (Market-1501's boxes: 64)")
    hard_negative_fraction: Fraction = Field(
        default=0.4, description="fraction of ids in look-alike groups sharing an outfit (the rest: unrelated people)"
    )
    group_size: Int = Field(default=3, ge=1, description="largest look-alike group (groups have 2..N members; 1: none)")
    camera_strength: NonNegative = Field(
        default=0.35,
        description="scale of the cameras' colour cast / exposure / contrast / saturation differences (0: none)",
    )
    noise: NonNegative = Field(default=0.35, description="scale of the cameras' sensor noise (0: none)")
    blur: NonNegative = Field(default=0.35, description="scale of the cameras' blur (0: none)")
    occlusion: Fraction = Field(default=0.05, description="probability that an object covers part of the person")
    misalignment: NonNegative = Field(
        default=0.35, description="scale of detector-like box errors (random scale and shift; 0: centred)"
    )
    distractors: NonNegative = Field(default=0.12, description="distractor images (pid 0) as a fraction of the gallery")
    junk: NonNegative = Field(default=0.06, description="junk images (pid -1) as a fraction of the gallery")
    supersample: Int = Field(
        default=2, ge=1, description="drawing resolution factor before downsampling (anti-aliasing)"
    )
    jpeg_quality: Int = Field(default=90, ge=1, le=95, description="JPEG quality (fixed, for byte-identical output)")
    global_lookalike_share: Fraction = Field(
        default=0.0,
        description="share of the look-alike groups whose members differ by a global cue (the whole outfit's "
        "tone or tint, or the build) instead of one local detail",
    )
    viewpoint: Fraction = Field(
        default=0.0, description="probability that an image shows any of the four views (0: mostly its track's view)"
    )
    pose_strength: NonNegative = Field(
        default=0.0, description="scale of the extra pose change per image: stride, arm swing, lean (0: level 0's walk)"
    )
    box_jitter: NonNegative = Field(
        default=0.0,
        description="scale of the per-image crop of the person box: scale and aspect, as detectors give (0: none)",
    )
    partial_view: Fraction = Field(
        default=0.0, description="probability that the box cuts the person: legs or one side out of frame"
    )
    level: Literal["0", "realistic"] = Field(
        default="0",
        description="named difficulty (LEVELS in canlib.data.synthetic); explicit knobs override its preset",
    )
    camera_seed: Annotated[int, Strict()] | None = Field(
        default=None,
        description="seed of the cameras (their scenes, views and imaging; default: --seed): a test draw keeps "
        "the reporting set's cameras and draws new people with its own --seed",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """The level's knobs under the arguments given (keyword arguments only)."""
        given = data.kwargs if isinstance(data, ArgsKwargs) and not data.args else data
        if not isinstance(given, dict) or given.get("level", "0") not in LEVELS:
            return data
        return {**LEVELS[given.get("level", "0")].knobs, **given}

    @model_validator(mode="after")
    def _cameras(self) -> SyntheticConfig:
        if self.min_cameras > self.max_cameras:
            raise ValueError(f"--min-cameras ({self.min_cameras}) must be <= --max-cameras ({self.max_cameras})")
        if self.min_cameras > self.cameras:
            raise ValueError(f"--min-cameras ({self.min_cameras}) must be <= --cameras ({self.cameras})")
        return self


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


@dataclass(frozen=True)
class Variation:
    """The per-image changes of the difficulty knobs: a view, a pose and a crop of the person box."""

    view: str | None  # None: the view level 0 draws
    stride_gain: float
    arm_gain: float
    lean: float
    box: tuple[float, float, float, float]  # (left, top, right, bottom) as fractions of the image

    @classmethod
    def draw(cls, cfg: SyntheticConfig, rng: np.random.Generator) -> Variation:
        """This image's variation (a fixed number of draws from ``rng``, the image's own generator)."""
        u = rng.random(12)
        view = VIEWS[int(u[1] * 4)] if u[0] < cfg.viewpoint else None
        p = cfg.pose_strength
        stride_gain, arm_gain, lean = 1.0 + p * 1.2 * u[2], 1.0 + p * (1.6 * u[3] - 0.6), p * 0.16 * (u[4] - 0.5)
        j = cfg.box_jitter
        w, h = 1.0 - j * 0.25 * u[5], 1.0 - j * 0.2 * u[6]
        left, top = (1.0 - w) * u[7], (1.0 - h) * u[8]
        box = (left, top, left + w, top + h)
        if u[9] < cfg.partial_view:
            keep = 0.55 + 0.25 * u[11]
            if u[10] < 0.6:  # the legs out of frame
                box = (box[0], box[1], box[2], box[1] + (box[3] - box[1]) * keep)
            elif u[10] < 0.8:  # the left side
                box = (box[2] - (box[2] - box[0]) * keep, box[1], box[2], box[3])
            else:  # the right side
                box = (box[0], box[1], box[0] + (box[2] - box[0]) * keep, box[3])
        return cls(view, stride_gain, arm_gain, lean, box)

    def pose(self, pose: Pose) -> Pose:
        """``pose`` with this image's view, stride, arm swing and lean."""
        view = self.view or pose.view
        stride = pose.stride * self.stride_gain
        return Pose(
            view=view, phase=pose.phase, stride=stride, arm_swing=pose.arm_swing * self.arm_gain, lean=self.lean
        )

    def crop(self, img: Image.Image) -> Image.Image:
        """The box cut from ``img`` and resized to its size (a detector's box, scale and aspect its own)."""
        if self.box == (0.0, 0.0, 1.0, 1.0):
            return img
        w, h = img.size
        extent = (self.box[0] * w, self.box[1] * h, self.box[2] * w, self.box[3] * h)
        return img.transform(img.size, Image.Transform.EXTENT, extent, Image.Resampling.BILINEAR)


def _varies(cfg: SyntheticConfig) -> bool:
    """Whether any per-image knob is on (else no image draws from its variation generator)."""
    return any(v > 0 for v in (cfg.viewpoint, cfg.pose_strength, cfg.box_jitter, cfg.partial_view))


class Renderer:
    """Draws the images of one configuration (identities and cameras fixed)."""

    def __init__(self, cfg: SyntheticConfig, identities: dict[int, Identity], cameras: Sequence[Camera]) -> None:
        self.cfg, self.identities, self.cameras = cfg, identities, list(cameras)

    def render(self, spec: ImageSpec) -> Image.Image:
        """The image of ``spec`` (deterministic)."""
        cfg, cam = self.cfg, self.cameras[spec.cam]
        code = _KIND_CODE[spec.kind]
        key = [cfg.seed, max(spec.pid, 0), spec.cam, spec.seq]
        rng = np.random.default_rng([key[0], 600 + code, *key[1:], spec.index])
        track = np.random.default_rng([key[0], 500 + code, *key[1:], spec.index if spec.kind != "id" else 0])
        variation = None
        if _varies(cfg):  # its own generator: level 0 draws nothing more from the others
            variation = Variation.draw(cfg, np.random.default_rng([key[0], 700 + code, *key[1:], spec.index]))
        ss = cfg.supersample
        size = (cfg.width * ss, cfg.height * ss)
        img = Image.new("RGB", size)
        draw = ImageDraw.Draw(img)
        draw_background(draw, size, cam, rng)
        view = VIEWS[int(track.choice(4, p=cam.views))]
        if rng.random() < 0.15:
            view = VIEWS[int(rng.choice(4, p=cam.views))]
        light = float(track.uniform(0.88, 1.12) * rng.uniform(0.96, 1.04))
        self._person(draw, size, spec, (rng, track), view, variation)
        if spec.kind == "id" and rng.random() < cfg.occlusion:
            draw_occluder(draw, size, rng)
        if variation is not None:
            img = variation.crop(img)
        if ss > 1:
            img = img.reduce(ss)
        return apply_camera(img, cam, rng, light)

    def _person(
        self,
        draw: ImageDraw.ImageDraw,
        size: tuple[int, int],
        spec: ImageSpec,
        generators: tuple[np.random.Generator, np.random.Generator],
        view: str,
        variation: Variation | None,
    ) -> None:
        """The person of ``spec`` (none for some distractors) and its shadow, placed as a detector's box would."""
        rng, track = generators
        m, cam = self.cfg.misalignment, self.cameras[spec.cam]
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
        if ident is None:
            return
        ph = size[1] * 0.9 * ident.height * scale
        cx, top = size[0] * (0.5 + dx), (size[1] - ph) / 2 + dy * size[1]
        sx, sy = cx, top + ph * 0.985
        draw.ellipse(
            [sx - 0.16 * ph, sy - 0.02 * ph, sx + 0.16 * ph, sy + 0.02 * ph],
            fill=tuple(int(c * 0.6) for c in cam.ground_color),
        )
        stride = float(rng.uniform(0.05, 0.4))
        pose = Pose(view=view, phase=float(rng.uniform(0, 2 * np.pi)), stride=stride, arm_swing=0.7 * stride)
        PersonPainter(draw, cx, top, ph).person(ident, variation.pose(pose) if variation else pose)


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
    ids: int | None = None,
    seed: int = 0,
    *,
    workers: int = 1,
    overwrite: bool = False,
    **knobs: Any,
) -> dict[str, Any]:
    """Generate the set in ``out_dir``; ``knobs`` are the other fields of :class:`SyntheticConfig`.

    ``ids`` None: the level's (500 at level 0). Returns the statistics (also in ``meta.json``) plus
    ``seconds`` and ``images_per_second``. Refuses a folder that already holds a generated set
    unless ``overwrite``; refuses bad arguments with :class:`SyntheticConfigError`.
    """
    arguments: dict[str, Any] = {"seed": seed, **knobs}
    if ids is not None:
        arguments["ids"] = ids
    cfg = SyntheticConfig(**arguments)
    out = Path(out_dir)
    existing = [out / s for s in SUBSETS if (out / s).exists()] + [out / "meta.json"] * (out / "meta.json").exists()
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a data set ({existing[0].name}); pass overwrite=True / --overwrite")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    start = time.perf_counter()
    identities, groups = _identities(cfg, list(range(1, cfg.ids + 1)))
    train, test = split_ids(cfg, groups)
    specs = plan_images(cfg, train, test)
    cameras = make_cameras(cfg.cameras, cameras_seed(cfg), cfg.camera_strength, cfg.noise, cfg.blur)
    _write_images(out, specs, Renderer(cfg, {i.pid: i for i in identities}, cameras), workers)
    stats = dataset_statistics(specs)
    meta = {
        "generator": "canlib.data.synthetic",
        "version": GENERATOR_VERSION,
        "arguments": recorded_arguments(cfg),
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


def cameras_seed(cfg: SyntheticConfig) -> int:
    """The seed the cameras are drawn from: ``camera_seed``, or ``seed`` when it is not set."""
    return cfg.seed if cfg.camera_seed is None else cfg.camera_seed


def recorded_arguments(cfg: SyntheticConfig) -> dict[str, Any]:
    """The arguments ``meta.json`` and ``README.txt`` record, in field order.

    At level 0 the knobs of :data:`LEVEL0_SILENT` are left out while they hold their defaults, so a
    level-0 set records what it did before they existed; any other level records every field.
    """
    values = dataclasses.asdict(cfg)
    if cfg.level != "0":
        return values
    defaults = dataclasses.asdict(SyntheticConfig())
    return {k: v for k, v in values.items() if k not in LEVEL0_SILENT or v != defaults[k]}


def _identities(cfg: SyntheticConfig, pids: list[int]) -> tuple[list[Identity], list[list[int]]]:
    return make_identities(
        pids, cfg.seed, cfg.hard_negative_fraction, cfg.group_size, global_share=cfg.global_lookalike_share
    )


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
            identities, _ = _identities(cfg, pids)
            c = cameras_of
            cameras = make_cameras(c.cameras, cameras_seed(c), c.camera_strength, c.noise, c.blur)
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
    args = " ".join(f"{_flag(k)} {v}" for k, v in recorded_arguments(cfg).items())
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
    "negatives that differ in one local detail (at level realistic also in a global cue: outfit tone or tint, "
    "build). The same arguments give byte-identical files."
)


def synthetic_help(name: str) -> str:
    """The help text of argument ``name``: its description, with the presets of the levels that set it."""
    schema: Any = SyntheticConfig
    text = schema.__pydantic_fields__[name].description or ""
    presets = [f"{level}: {lv.knobs[name]}" for level, lv in LEVELS.items() if name in lv.knobs]
    default = getattr(SyntheticConfig(), name)
    return f"{text} (default {default}" + "".join(f"; level {p}" for p in presets) + ")"
