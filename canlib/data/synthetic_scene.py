"""Cameras of the synthetic set: background, typical viewpoint, colour cast, blur and noise.

Each camera has its own scene (a wall or vegetation above a textured ground, in its
own palette), its own mix of viewpoints (a walkway camera sees fronts and backs, a
street camera mostly profiles) and its own imaging chain (colour gains, brightness,
contrast, saturation, blur, noise, and for one camera a lower resolution, as
Market-1501's sixth camera). Occluders and background clutter are drawn here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from canlib.data.synthetic_identity import RGB

WALLS = ("bricks", "windows", "foliage", "panels", "plain")
GROUNDS = ("tiles", "asphalt", "grass", "crossing")
#: Viewpoint mixes (front, back, left, right).
VIEW_MIXES = ((0.45, 0.45, 0.05, 0.05), (0.1, 0.1, 0.4, 0.4), (0.3, 0.3, 0.2, 0.2), (0.6, 0.2, 0.1, 0.1))
#: Natural wall and ground colours (concrete, brick, stone, glass, hedge; asphalt, paving, sand).
WALL_COLORS: tuple[RGB, ...] = (
    (150, 150, 145),
    (190, 175, 150),
    (150, 82, 62),
    (112, 62, 52),
    (202, 196, 186),
    (110, 130, 146),
    (82, 112, 70),
    (220, 210, 182),
    (84, 84, 90),
    (186, 150, 112),
)
GROUND_COLORS: tuple[RGB, ...] = (
    (96, 96, 100),
    (70, 70, 74),
    (168, 160, 146),
    (140, 84, 72),
    (128, 124, 116),
    (184, 170, 140),
)


@dataclass
class Camera:
    """Scene and imaging parameters of one camera."""

    index: int
    wall: str = "plain"
    ground: str = "asphalt"
    wall_color: RGB = (150, 150, 150)
    ground_color: RGB = (110, 110, 110)
    horizon: float = 0.6  # fraction of the image height where the ground starts
    views: tuple[float, float, float, float] = VIEW_MIXES[2]
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    blur: float = 0.0  # Gaussian radius in output pixels
    noise: float = 3.0  # standard deviation, 0-255 scale
    downscale: int = 1  # > 1: a low-resolution camera
    clutter: float = 0.4  # probability of a pole, bench or passer-by in the background
    extra: dict = field(default_factory=dict)


def make_cameras(n: int, seed: int, strength: float = 1.0, noise: float = 1.0, blur: float = 1.0) -> list[Camera]:
    """``n`` cameras; ``strength`` scales their colour/exposure differences, ``noise``/``blur`` their degradations."""
    cams = []
    for i in range(n):
        rng = np.random.default_rng([seed, 300, i])
        cam = Camera(index=i)
        cam.wall = WALLS[(i * 2) % len(WALLS)] if i < len(WALLS) else WALLS[int(rng.integers(len(WALLS)))]
        cam.ground = GROUNDS[i % len(GROUNDS)]
        cam.wall_color = _jitter(WALL_COLORS[(3 * i + int(rng.integers(2))) % len(WALL_COLORS)], rng, 10)
        cam.ground_color = _jitter(GROUND_COLORS[(i + int(rng.integers(2))) % len(GROUND_COLORS)], rng, 8)
        if cam.ground == "grass":
            cam.ground_color = (int(rng.integers(60, 100)), int(rng.integers(110, 150)), int(rng.integers(50, 80)))
        cam.horizon = float(rng.uniform(0.45, 0.7))
        cam.views = VIEW_MIXES[i % len(VIEW_MIXES)]
        red, green, blue = (float(g) for g in 1.0 + strength * rng.uniform(-0.18, 0.18, 3))
        cam.gains = (red, green, blue)
        cam.brightness = float(1.0 + strength * rng.uniform(-0.28, 0.22))
        cam.contrast = float(1.0 + strength * rng.uniform(-0.25, 0.12))
        cam.saturation = float(1.0 + strength * rng.uniform(-0.4, 0.15))
        cam.blur = float(blur * rng.uniform(0.1, 0.8))
        cam.noise = float(noise * rng.uniform(2.0, 7.0))
        cam.downscale = 2 if (n >= 3 and i == n - 1) else 1
        cam.clutter = float(rng.uniform(0.2, 0.6))
        cams.append(cam)
    return cams


def _jitter(color: RGB, rng: np.random.Generator, amount: float) -> RGB:
    jittered = np.clip(np.array(color) + rng.normal(0, amount, 3), 0, 255)
    r, g, b = (int(c) for c in jittered)
    return r, g, b


def draw_background(draw: ImageDraw.ImageDraw, size: tuple[int, int], cam: Camera, rng: np.random.Generator) -> None:
    """Paint the camera's scene on the whole canvas (``size`` = (width, height))."""
    w, h = size
    hy = int(h * (cam.horizon + rng.uniform(-0.04, 0.04)))
    wall, ground = _jitter(cam.wall_color, rng, 8), _jitter(cam.ground_color, rng, 6)
    draw.rectangle([0, 0, w, hy], fill=wall)
    draw.rectangle([0, hy, w, h], fill=ground)
    ox, oy = int(rng.integers(0, 40)), int(rng.integers(0, 20))
    unit = max(2, h // 32)
    _draw_wall(draw, cam.wall, wall, w, hy, ox, oy, unit, rng)
    _draw_ground(draw, cam.ground, ground, size, hy, ox, unit, rng)
    draw.line([(0, hy), (w, hy)], fill=tuple(int(c * 0.6) for c in wall), width=unit)
    if rng.random() < cam.clutter:
        draw_clutter(draw, size, hy, rng)


def _draw_wall(
    draw: ImageDraw.ImageDraw,
    kind: str,
    wall: RGB,
    w: int,
    hy: int,
    ox: int,
    oy: int,
    unit: int,
    rng: np.random.Generator,
) -> None:
    """The wall's pattern above the horizon ``hy`` (``ox``, ``oy``: its offset; ``unit``: its scale)."""
    darker = tuple(int(c * 0.78) for c in wall)
    lighter = tuple(min(255, int(c * 1.18)) for c in wall)
    if kind == "bricks":
        bh, bw = 3 * unit, 8 * unit
        for r, y in enumerate(range(-oy, hy, bh)):
            draw.line([(0, y), (w, y)], fill=darker, width=max(1, unit // 2))
            for x in range(-ox + (bw // 2) * (r % 2), w, bw):
                draw.line([(x, y), (x, y + bh)], fill=darker, width=max(1, unit // 2))
    elif kind == "windows":
        for y in range(-oy + 2 * unit, hy - 4 * unit, 14 * unit):
            for x in range(-ox, w, 12 * unit):
                draw.rectangle([x, y, x + 7 * unit, y + 9 * unit], fill=darker)
                draw.rectangle([x + unit, y + unit, x + 6 * unit, y + 4 * unit], fill=lighter)
    elif kind == "foliage":
        for _ in range(14):
            fx, fy, radius = rng.uniform(0, w), rng.uniform(0, hy), rng.uniform(4, 12) * unit
            col = (int(rng.integers(30, 80)), int(rng.integers(80, 140)), int(rng.integers(30, 70)))
            draw.ellipse([fx - radius, fy - radius, fx + radius, fy + radius], fill=col)
    elif kind == "panels":
        for x in range(-ox, w, 10 * unit):
            draw.rectangle([x, 0, x + 4 * unit, hy], fill=darker)
    else:
        for y in range(0, hy, 4 * unit):
            shade = 0.88 + 0.12 * y / max(hy, 1)
            draw.rectangle([0, y, w, y + 4 * unit], fill=tuple(int(c * shade) for c in wall))


def _draw_ground(
    draw: ImageDraw.ImageDraw,
    kind: str,
    ground: RGB,
    size: tuple[int, int],
    hy: int,
    ox: int,
    unit: int,
    rng: np.random.Generator,
) -> None:
    """The ground's pattern below the horizon ``hy``."""
    w, h = size
    gdark = tuple(int(c * 0.8) for c in ground)
    if kind == "tiles":
        for y in range(hy, h, 6 * unit):
            draw.line([(0, y), (w, y)], fill=gdark, width=max(1, unit // 2))
        for x in range(-ox, w + 40 * unit, 10 * unit):
            draw.line([(x, hy), (x + (x - w / 2) * 0.6, h)], fill=gdark, width=max(1, unit // 2))
    elif kind == "crossing":
        for x in range(-ox, w, 10 * unit):
            draw.rectangle([x, hy + 2 * unit, x + 5 * unit, h], fill=(200, 200, 196))
    elif kind == "grass":
        for _ in range(40):
            gx, gy = rng.uniform(0, w), rng.uniform(hy, h)
            draw.line([(gx, gy), (gx + rng.uniform(-1, 1) * unit, gy - 2 * unit)], fill=gdark, width=max(1, unit // 2))


def draw_clutter(draw: ImageDraw.ImageDraw, size: tuple[int, int], hy: int, rng: np.random.Generator) -> None:
    """A pole, a bench or a far-away passer-by in the background."""
    w, h = size
    kind = int(rng.integers(3))
    x = rng.uniform(0.0, 1.0) * w
    col = tuple(int(v) for v in rng.integers(20, 200, 3))
    if kind == 0:
        pw = rng.uniform(0.03, 0.07) * w
        draw.rectangle([x, 0, x + pw, hy + rng.uniform(0.05, 0.25) * h], fill=col)
    elif kind == 1:
        y = hy + rng.uniform(0.0, 0.15) * h
        draw.rectangle([x - 0.3 * w, y - 0.04 * h, x + 0.3 * w, y], fill=col)
        draw.rectangle([x - 0.25 * w, y, x - 0.22 * w, y + 0.06 * h], fill=col)
        draw.rectangle([x + 0.22 * w, y, x + 0.25 * w, y + 0.06 * h], fill=col)
    else:
        s = rng.uniform(0.25, 0.45) * h
        y = hy - 0.7 * s
        draw.ellipse([x - 0.05 * s, y, x + 0.05 * s, y + 0.13 * s], fill=(150, 110, 90))
        draw.rectangle([x - 0.11 * s, y + 0.15 * s, x + 0.11 * s, y + 0.5 * s], fill=col)
        draw.rectangle([x - 0.08 * s, y + 0.5 * s, x + 0.08 * s, y + s], fill=tuple(int(c * 0.5) for c in col))


def draw_occluder(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator) -> str:
    """Cover part of the person: an object at the bottom, a pole at one side, or a passer-by. Returns its kind."""
    w, h = size
    kind = ("bottom", "side", "person")[int(rng.integers(3))]
    col = tuple(int(v) for v in rng.integers(20, 230, 3))
    if kind == "bottom":
        top = h * rng.uniform(0.55, 0.8)
        draw.rectangle([0, top, w, h], fill=col)
        draw.rectangle([0, top, w, top + 0.03 * h], fill=tuple(int(c * 0.7) for c in col))
        if rng.random() < 0.5:
            draw.ellipse(
                [w * rng.uniform(0, 0.5), top + 0.05 * h, w * rng.uniform(0.5, 1.0), h],
                fill=tuple(int(c * 0.8) for c in col),
            )
    elif kind == "side":
        pw = w * rng.uniform(0.2, 0.4)
        x0 = 0 if rng.random() < 0.5 else w - pw
        draw.rectangle([x0, 0, x0 + pw, h], fill=col)
        draw.rectangle([x0 + pw * 0.1, 0, x0 + pw * 0.25, h], fill=tuple(min(255, int(c * 1.15)) for c in col))
    else:
        side = -1 if rng.random() < 0.5 else 1
        cx = w / 2 + side * w * rng.uniform(0.45, 0.65)
        draw.ellipse([cx - 0.1 * w, 0.02 * h, cx + 0.1 * w, 0.14 * h], fill=(160, 120, 100))
        draw.rectangle([cx - 0.28 * w, 0.15 * h, cx + 0.28 * w, 0.5 * h], fill=col)
        draw.rectangle([cx - 0.2 * w, 0.5 * h, cx + 0.2 * w, h], fill=tuple(int(v) for v in rng.integers(20, 120, 3)))
    return kind


def apply_camera(img: Image.Image, cam: Camera, rng: np.random.Generator, light: float = 1.0) -> Image.Image:
    """The camera's imaging chain: resolution, blur, colour cast, exposure, contrast, saturation, noise."""
    if cam.downscale > 1:
        small = img.resize((img.width // cam.downscale, img.height // cam.downscale), Image.Resampling.BILINEAR)
        img = small.resize(img.size, Image.Resampling.BILINEAR)
    radius = cam.blur * rng.uniform(0.7, 1.3)
    if radius > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    x = np.asarray(img, dtype=np.float32)
    gray = x @ np.full((3, 1), 1.0 / 3.0, dtype=np.float32)
    x = gray + (x - gray) * np.float32(cam.saturation)
    gain = np.asarray(cam.gains, dtype=np.float32) * np.float32(cam.brightness * light * cam.contrast)
    x = x * gain + np.float32(128.0 * (1.0 - cam.contrast))
    if cam.noise > 0:
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(cam.noise)
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))
