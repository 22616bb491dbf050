"""Identities of the synthetic set: who wears what, and the groups of hard negatives.

An identity is a fixed set of appearance attributes (body, hair, clothing colours and
patterns, shoes, bag, belt, logo). Colours come from a palette of common clothing
colours, so unrelated people often share a colour, as in real data. A fraction of the
identities come in HARD-NEGATIVE groups: the members share one outfit and differ in a
single local detail (shoe colour, logo, belt, bag, head wear, lower clothing or the
pattern of the top), like the pairs of the paper's Figure 1. With ``global_share`` > 0, that
share of the groups differ instead by a GLOBAL cue: the tone of the whole outfit, its tint, or
the build, every local detail shared, as real look-alikes often do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

#: Common clothing colours and how often each is drawn (darks dominate, as in street scenes).
CLOTHING: dict[str, tuple[RGB, float]] = {
    "black": ((28, 28, 32), 0.16),
    "white": ((232, 232, 226), 0.10),
    "grey": ((128, 128, 130), 0.08),
    "charcoal": ((68, 68, 74), 0.08),
    "navy": ((32, 42, 92), 0.08),
    "blue": ((40, 92, 184), 0.06),
    "sky": ((140, 182, 224), 0.04),
    "red": ((190, 32, 38), 0.06),
    "maroon": ((112, 28, 40), 0.04),
    "pink": ((232, 142, 172), 0.04),
    "purple": ((112, 62, 152), 0.03),
    "green": ((42, 130, 62), 0.04),
    "olive": ((118, 116, 62), 0.03),
    "beige": ((212, 192, 152), 0.05),
    "brown": ((112, 72, 42), 0.03),
    "yellow": ((232, 202, 42), 0.03),
    "orange": ((236, 122, 32), 0.03),
    "teal": ((32, 142, 142), 0.02),
}
LOWER: dict[str, tuple[RGB, float]] = {
    "black": ((30, 30, 34), 0.28),
    "denim": ((58, 78, 128), 0.22),
    "navy": ((34, 40, 78), 0.08),
    "grey": ((118, 118, 120), 0.12),
    "khaki": ((180, 160, 112), 0.10),
    "white": ((226, 224, 216), 0.06),
    "brown": ((96, 64, 40), 0.06),
    "red": ((170, 36, 40), 0.04),
    "green": ((52, 100, 58), 0.04),
}
#: Strongly contrasting colours for the details that tell hard negatives apart.
ACCENT: dict[str, RGB] = {
    "white": (240, 240, 236),
    "black": (24, 24, 26),
    "red": (214, 30, 36),
    "blue": (36, 84, 214),
    "yellow": (240, 210, 30),
    "green": (40, 170, 70),
    "orange": (244, 132, 28),
    "brown": (120, 76, 40),
}
SKIN: tuple[RGB, ...] = ((246, 214, 190), (232, 190, 160), (210, 160, 122), (176, 124, 88), (128, 86, 58), (92, 60, 42))
HAIR: tuple[RGB, ...] = ((22, 18, 16), (52, 36, 26), (92, 60, 36), (180, 150, 90), (150, 150, 150))

UPPER_PATTERNS = ("plain", "stripes", "checks", "twotone")
LOWER_TYPES = ("trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "ponytail", "bald")
HEADWEAR = ("none", "cap", "beanie")
BAGS = ("none", "backpack", "shoulder")
LOGO_SHAPES = ("circle", "square", "triangle", "bar")
#: The local details in which the members of a hard-negative group differ.
DETAILS = ("shoes", "logo", "belt", "bag", "headwear", "lower", "pattern")
DETAIL_WEIGHTS = (0.26, 0.16, 0.10, 0.20, 0.10, 0.10, 0.08)
#: The global cues in which the members of a global look-alike group differ (every local detail shared):
#: the lightness of the whole outfit, a colour tint over the whole outfit, or the build (height and width).
GLOBAL_CUES = ("tone", "tint", "build")
#: The clothing colours a global cue changes together (the whole outfit, not one part of it).
OUTFIT_COLORS = ("upper", "pattern_color", "lower", "shoes", "bag_color", "headwear_color", "logo_color", "belt")


@dataclass
class Identity:
    """The appearance of one person (every colour is an RGB triple)."""

    pid: int
    height: float = 1.0  # relative body height
    width: float = 1.0  # relative body width
    skin: RGB = SKIN[1]
    hair: RGB = HAIR[0]
    hair_style: str = "short"
    headwear: str = "none"
    headwear_color: RGB = ACCENT["black"]
    upper: RGB = CLOTHING["black"][0]
    upper_pattern: str = "plain"
    pattern_color: RGB = CLOTHING["white"][0]
    long_sleeves: bool = True
    lower_type: str = "trousers"
    lower: RGB = LOWER["denim"][0]
    shoes: RGB = ACCENT["black"]
    bag: str = "none"
    bag_color: RGB = ACCENT["black"]
    bag_side: int = 1  # +1: the person's right, -1: left
    belt: RGB | None = None
    logo: str | None = None
    logo_color: RGB = ACCENT["red"]
    group: int = -1  # hard-negative group index, -1 if none
    detail: str = ""  # the detail that sets it apart within its group

    def to_json(self) -> dict:
        """A JSON-friendly dict of the attributes."""
        return dataclasses.asdict(self)


def _pick(rng: np.random.Generator, table: dict[str, tuple[RGB, float]], jitter: float = 10.0) -> RGB:
    names = list(table)
    weights = np.array([table[n][1] for n in names])
    base = np.array(table[names[int(rng.choice(len(names), p=weights / weights.sum()))]][0], dtype=float)
    r, g, b = (int(v) for v in np.clip(base + rng.normal(0.0, jitter, 3), 0, 255))
    return r, g, b


def _accent(rng: np.random.Generator, avoid: Sequence[RGB] = ()) -> RGB:
    """An accent colour far from every colour in ``avoid``."""
    options = [
        c for c in ACCENT.values() if all(sum(abs(a - b) for a, b in zip(c, o, strict=True)) > 150 for o in avoid)
    ]
    options = options or list(ACCENT.values())
    return options[int(rng.integers(len(options)))]


def random_identity(pid: int, rng: np.random.Generator) -> Identity:
    """Draw an identity with every attribute independent."""
    ident = Identity(pid=pid)
    ident.height = float(rng.uniform(0.93, 1.04))
    ident.width = float(rng.uniform(0.85, 1.15))
    ident.skin = SKIN[int(rng.integers(len(SKIN)))]
    ident.hair = HAIR[int(rng.choice(len(HAIR), p=[0.45, 0.25, 0.12, 0.1, 0.08]))]
    ident.hair_style = HAIR_STYLES[int(rng.choice(4, p=[0.5, 0.25, 0.15, 0.1]))]
    ident.headwear = HEADWEAR[int(rng.choice(3, p=[0.75, 0.15, 0.10]))]
    ident.headwear_color = _pick(rng, CLOTHING)
    ident.upper = _pick(rng, CLOTHING)
    ident.upper_pattern = UPPER_PATTERNS[int(rng.choice(4, p=[0.6, 0.17, 0.11, 0.12]))]
    ident.pattern_color = _accent(rng, [ident.upper])
    ident.long_sleeves = bool(rng.random() < 0.6)
    ident.lower_type = LOWER_TYPES[int(rng.choice(3, p=[0.7, 0.18, 0.12]))]
    ident.lower = _pick(rng, LOWER)
    ident.shoes = _accent(rng) if rng.random() < 0.5 else _pick(rng, LOWER, 6.0)
    ident.bag = BAGS[int(rng.choice(3, p=[0.55, 0.28, 0.17]))]
    ident.bag_color = _pick(rng, CLOTHING)
    ident.bag_side = 1 if rng.random() < 0.5 else -1
    ident.belt = _accent(rng, [ident.upper, ident.lower]) if rng.random() < 0.15 else None
    if rng.random() < 0.2:
        ident.logo = LOGO_SHAPES[int(rng.integers(len(LOGO_SHAPES)))]
        ident.logo_color = _accent(rng, [ident.upper])
    return ident


def _vary(base: Identity, pid: int, detail: str, others: Sequence[Identity], rng: np.random.Generator) -> Identity:
    """A copy of ``base`` that differs from ``base`` and every one of ``others`` only in ``detail``."""
    ident = dataclasses.replace(base, pid=pid, detail=detail)
    if not others:
        return ident
    free = {
        "bag": [b for b in BAGS if b not in {o.bag for o in others}],
        "headwear": [h for h in HEADWEAR if h not in {o.headwear for o in others}],
        "pattern": [p for p in UPPER_PATTERNS if p not in {o.upper_pattern for o in others}],
    }
    if detail in free and not free[detail]:  # a large group ran out of values: vary the shoes too
        ident.shoes = _accent(rng, [o.shoes for o in others] + [base.lower])
    if detail == "shoes":
        ident.shoes = _accent(rng, [o.shoes for o in others] + [base.lower])
    elif detail == "logo":
        used = [o.logo for o in others]
        shapes = [s for s in LOGO_SHAPES if s not in used] or list(LOGO_SHAPES)
        ident.logo = None if None not in used else shapes[int(rng.integers(len(shapes)))]
        ident.logo_color = _accent(rng, [base.upper] + [o.logo_color for o in others if o.logo])
    elif detail == "belt":
        used_belts = [o.belt for o in others]
        ident.belt = (
            None
            if None not in used_belts
            else _accent(rng, [base.upper, base.lower] + [b for b in used_belts if b is not None])
        )
    elif detail == "bag":
        ident.bag = free["bag"][0] if free["bag"] else ident.bag
        ident.bag_color = _accent(rng, [base.upper])
    elif detail == "headwear":
        ident.headwear = free["headwear"][0] if free["headwear"] else ident.headwear
        ident.headwear_color = _accent(rng, [base.hair, base.upper])
        if ident.headwear != "none" and ident.hair_style == "bald":
            ident.hair_style = "short"
    elif detail == "lower":
        ident.lower = _accent(rng, [o.lower for o in others] + [base.upper])
    elif detail == "pattern":
        ident.upper_pattern = free["pattern"][0] if free["pattern"] else ident.upper_pattern
    return ident


def _mix(color: RGB, target: RGB, amount: float) -> RGB:
    """``color`` moved by ``amount`` (0..1) towards ``target``."""
    r, g, b = (round(c + (t - c) * amount) for c, t in zip(color, target, strict=True))
    return r, g, b


def _global_cue(seed: int, group: int, share: float) -> tuple[str, int] | None:
    """The global cue of look-alike group ``group`` and its first tint, or None (a local group).

    Its own generator: ``share`` 0 draws nothing, and the groups' other draws do not move.
    """
    if share <= 0:
        return None
    rng = np.random.default_rng([seed, 202, group])
    if rng.random() >= share:
        return None
    return GLOBAL_CUES[int(rng.integers(len(GLOBAL_CUES)))], int(rng.integers(len(ACCENT)))


def _vary_global(base: Identity, pid: int, k: int, cue: str, tint: int) -> Identity:
    """Member ``k`` of a global look-alike group: ``base`` with the whole outfit (or the build) shifted.

    Member 0 is ``base`` itself; member ``k`` > 0 is ``k`` steps away, so members differ pairwise.
    tone: every clothing colour mixed by 0.15 k towards white (a dark outfit) or black (a light one);
    tint: every clothing colour mixed by 0.26 towards accent colour ``tint + k`` (its own);
    build: height and width 0.05 and 0.1 per step, alternately up and down.
    """
    ident = dataclasses.replace(base, pid=pid, detail=cue)
    if k == 0:
        return ident
    sign = 1 if k % 2 else -1
    steps = (k + 1) // 2
    if cue == "build":
        ident.height = float(base.height + sign * 0.05 * steps)
        ident.width = float(base.width - sign * 0.1 * steps)
        return ident
    accents = list(ACCENT.values())
    dark = sum(base.upper) + sum(base.lower) < 6 * 128
    target = accents[(tint + k) % len(accents)] if cue == "tint" else (244, 244, 240) if dark else (12, 12, 14)
    amount = 0.26 if cue == "tint" else min(0.15 * k, 0.75)
    for name in OUTFIT_COLORS:
        color = getattr(ident, name)
        if color is not None:
            setattr(ident, name, _mix(color, target, amount))
    return ident


def _groups(order: Sequence[int], n_grouped: int, group_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Consecutive runs of ``order`` of 2..``group_size`` members, ``n_grouped`` ids in all."""
    groups: list[list[int]] = []
    i = 0
    while group_size >= 2 and n_grouped - i >= 2:
        size = min(int(rng.integers(2, group_size + 1)), n_grouped - i)
        groups.append(sorted(order[i : i + size]))
        i += size
    return groups


def make_identities(
    pids: Sequence[int],
    seed: int,
    hard_negative_fraction: float = 0.4,
    group_size: int = 3,
    *,
    global_share: float = 0.0,
) -> tuple[list[Identity], list[list[int]]]:
    """Identities for ``pids`` and the hard-negative groups (lists of pids).

    About ``hard_negative_fraction`` of the ids fall in groups of 2..``group_size`` members; about
    ``global_share`` of the groups differ by a global cue (:data:`GLOBAL_CUES`), the others by one
    local detail. Deterministic in ``seed`` and ``pids``; ``global_share`` 0 draws nothing new.
    """
    rng = np.random.default_rng([seed, 200])
    order = [int(p) for p in rng.permutation(np.asarray(pids))]
    groups = _groups(order, round(hard_negative_fraction * len(order)), group_size, rng)
    identities: dict[int, Identity] = {}
    for g, members in enumerate(groups):
        grng = np.random.default_rng([seed, 201, g])
        base = random_identity(members[0], grng)
        detail = DETAILS[int(grng.choice(len(DETAILS), p=DETAIL_WEIGHTS))]
        cue = _global_cue(seed, g, global_share)
        made: list[Identity] = []
        for k, pid in enumerate(members):
            made.append(_vary_global(base, pid, k, *cue) if cue else _vary(base, pid, detail, made, grng))
            made[-1].group = g
            identities[pid] = made[-1]
    for pid in pids:
        if pid not in identities:
            identities[pid] = random_identity(pid, np.random.default_rng([seed, 100, pid]))
    return [identities[p] for p in pids], groups
