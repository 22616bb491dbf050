"""Drawing one person with PIL: body, clothing, hair, head wear, bag, belt and logo.

Coordinates are in units of the person's height: ``u`` across (positive to the image's
right) and ``v`` down from the top of the head (0) to the soles (1). A :class:`Pose`
gives the viewpoint (front, back, or a side view facing left or right) and the phase
and amplitude of the walking cycle, so legs and arms move from image to image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import ImageDraw

from canlib.data.synthetic_identity import RGB, Identity

VIEWS = ("front", "back", "left", "right")


@dataclass
class Pose:
    """Viewpoint and walking pose of one image."""

    view: str = "front"
    phase: float = 0.0  # walking cycle, radians
    stride: float = 0.3  # leg swing amplitude, radians
    arm_swing: float = 0.2  # arm swing amplitude, radians
    lean: float = 0.0  # the head's shift across, in body heights (a shear about the soles)


def dim(color: RGB, factor: float) -> RGB:
    """``color`` scaled by ``factor`` (a shade)."""
    r, g, b = (max(0, min(255, int(c * factor))) for c in color)
    return r, g, b


class PersonPainter:
    """Draws person figures on an :class:`ImageDraw.ImageDraw` at a given place and scale."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, height: float) -> None:
        self.draw, self.cx, self.top, self.h = draw, cx, top, height
        self.lean = 0.0

    # -- primitives (coordinates in body units) -----------------------------------
    def pt(self, u: float, v: float) -> tuple[float, float]:
        if self.lean:
            u = u + self.lean * (0.985 - v)
        return self.cx + u * self.h, self.top + v * self.h

    def poly(self, points: Sequence[tuple[float, float]], color: RGB) -> None:
        self.draw.polygon([self.pt(u, v) for u, v in points], fill=color)

    def rect(self, u0: float, v0: float, u1: float, v1: float, color: RGB) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], color)

    def ellipse(self, u: float, v: float, ru: float, rv: float, color: RGB) -> None:
        x, y = self.pt(u, v)
        self.draw.ellipse([x - ru * self.h, y - rv * self.h, x + ru * self.h, y + rv * self.h], fill=color)

    def slice(self, u: float, v: float, ru: float, rv: float, start: float, end: float, color: RGB) -> None:
        x, y = self.pt(u, v)
        self.draw.pieslice([x - ru * self.h, y - rv * self.h, x + ru * self.h, y + rv * self.h], start, end, fill=color)

    def limb(self, a: tuple[float, float], b: tuple[float, float], wa: float, wb: float, color: RGB) -> None:
        """A tapered segment from ``a`` (width ``wa``) to ``b`` (width ``wb``) with round ends."""
        du, dv = b[0] - a[0], b[1] - a[1]
        n = math.hypot(du, dv) or 1e-6
        pu, pv = -dv / n, du / n
        self.poly(
            [
                (a[0] + pu * wa / 2, a[1] + pv * wa / 2),
                (b[0] + pu * wb / 2, b[1] + pv * wb / 2),
                (b[0] - pu * wb / 2, b[1] - pv * wb / 2),
                (a[0] - pu * wa / 2, a[1] - pv * wa / 2),
            ],
            color,
        )
        self.ellipse(a[0], a[1], wa / 2, wa / 2, color)
        self.ellipse(b[0], b[1], wb / 2, wb / 2, color)

    # -- the figure ---------------------------------------------------------------
    def person(self, p: Identity, pose: Pose) -> None:
        """Draw ``p`` in ``pose``; the order of the parts depends on the viewpoint."""
        self.lean = pose.lean
        if pose.view in ("front", "back"):
            self._frontal(p, pose)
        else:
            self._side(p, pose, 1 if pose.view == "right" else -1)

    def _leg_colors(self, p: Identity) -> tuple[RGB, RGB]:
        """Colours of thigh and shin."""
        if p.lower_type == "trousers":
            return p.lower, p.lower
        if p.lower_type == "shorts":
            return p.lower, p.skin
        return p.skin, p.skin

    def _torso_pattern(self, p: Identity, half_width: Sequence[float], center: float) -> None:
        """Stripes, checks or a two-tone yoke over the torso (``half_width`` at v 0.185 and 0.47)."""
        c = p.pattern_color
        if p.upper_pattern == "stripes":
            for k in range(6):
                self._band(half_width, center, 0.205 + k * 0.045, 0.018, c)
        elif p.upper_pattern == "checks":
            for k in range(7):
                self._band(half_width, center, 0.19 + k * 0.04, 0.01, c)
            for k in (-2, -1, 0, 1, 2):
                f = k / 2.6
                self.poly(
                    [
                        (center + f * half_width[0] - 0.006, 0.17),
                        (center + f * half_width[0] + 0.006, 0.17),
                        (center + f * half_width[1] + 0.006, 0.465),
                        (center + f * half_width[1] - 0.006, 0.465),
                    ],
                    c,
                )
        elif p.upper_pattern == "twotone":
            v1 = 0.29
            self.poly(
                [
                    (center - half_width[0], 0.185),
                    (center - half_width[0] + 0.03, 0.155),
                    (center + half_width[0] - 0.03, 0.155),
                    (center + half_width[0], 0.185),
                    (center + _torso_half_width(half_width, v1), v1),
                    (center - _torso_half_width(half_width, v1), v1),
                ],
                c,
            )

    def _band(self, half_width: Sequence[float], center: float, v0: float, thickness: float, color: RGB) -> None:
        """A horizontal band across the torso from ``v0`` down by ``thickness``."""
        v1 = v0 + thickness
        top, bottom = _torso_half_width(half_width, v0), _torso_half_width(half_width, v1)
        self.poly([(center - top, v0), (center + top, v0), (center + bottom, v1), (center - bottom, v1)], color)

    def _head(self, p: Identity, view: str, d: int = 0) -> None:
        """Head, hair and head wear; ``d`` is the facing direction in side views."""
        hair_visible = p.hair_style != "bald"
        if view == "back":
            self.ellipse(0, 0.072, 0.048, 0.062, p.hair if hair_visible else p.skin)
        elif view == "front":
            if hair_visible:
                self.ellipse(0, 0.066, 0.050, 0.060, p.hair)
            self.ellipse(0, 0.082, 0.041, 0.053, p.skin)
            if hair_visible:
                self.slice(0, 0.072, 0.046, 0.05, 190, 350, p.hair)
        else:
            self.ellipse(0.006 * d, 0.074, 0.046, 0.061, p.skin)
            self.ellipse(0.044 * d, 0.084, 0.008, 0.014, p.skin)  # nose
            if hair_visible:
                start, end = (110, 330) if d > 0 else (210, 430)
                self.slice(0.0, 0.07, 0.05, 0.062, start, end, p.hair)
        if p.headwear == "cap":
            self.slice(0, 0.07, 0.052, 0.056, 180, 360, p.headwear_color)
            if view == "front":
                self.ellipse(0, 0.068, 0.056, 0.012, dim(p.headwear_color, 0.8))
            elif view in ("left", "right"):
                brim = [(0.0, 0.062), (0.085 * d, 0.066), (0.085 * d, 0.074), (0.0, 0.074)]
                self.poly(brim, dim(p.headwear_color, 0.8))
        elif p.headwear == "beanie":
            self.slice(0, 0.074, 0.053, 0.066, 180, 360, p.headwear_color)
            self.poly([(-0.053, 0.064), (0.053, 0.064), (0.053, 0.08), (-0.053, 0.08)], dim(p.headwear_color, 0.85))

    def _frontal(self, p: Identity, pose: Pose) -> None:
        """Front or back view: legs, lower garment, torso, arms, belt, logo and bag, then the head."""
        back = pose.view == "back"
        w = p.width
        sw, hw = 0.118 * w, 0.094 * w
        if p.hair_style == "long" and not back:
            self.poly([(-0.055, 0.07), (0.055, 0.07), (0.06, 0.2), (-0.06, 0.2)], p.hair)
        self._frontal_legs(p, w, math.sin(pose.phase))
        self._frontal_lower(p, w, hw)
        # neck and torso
        self.poly([(-0.02, 0.115), (0.02, 0.115), (0.022, 0.165), (-0.022, 0.165)], p.skin)
        torso = [(-sw, 0.185), (-sw + 0.03, 0.155), (sw - 0.03, 0.155), (sw, 0.185), (hw, 0.47), (-hw, 0.47)]
        self.poly(torso, p.upper)
        self._torso_pattern(p, (sw, hw), 0.0)
        shade = [(sw * 0.55, 0.16), (sw - 0.03, 0.155), (sw, 0.185), (hw, 0.47), (hw * 0.6, 0.47)]
        self.poly(shade, dim(p.upper, 0.86))
        self._frontal_arms(p, pose, w, sw)
        if p.belt is not None:
            self.poly([(-hw, 0.44), (hw, 0.44), (hw, 0.468), (-hw, 0.468)], p.belt)
            if not back:
                self.poly([(-0.014, 0.438), (0.014, 0.438), (0.014, 0.47), (-0.014, 0.47)], (200, 190, 150))
        if p.logo and not back:
            self._logo(p, -0.035, 0.255)
        self._frontal_bag(p, back, w, hw)
        self._head(p, pose.view)
        if back and p.hair_style == "long":
            self.poly([(-0.05, 0.07), (0.05, 0.07), (0.056, 0.235), (-0.056, 0.235)], p.hair)
        elif back and p.hair_style == "ponytail":
            self.ellipse(0, 0.14, 0.022, 0.05, p.hair)

    def _frontal_legs(self, p: Identity, w: float, s: float) -> None:
        """Both legs and feet, front or back (``s``: the sine of the walking phase)."""
        thigh, shin = self._leg_colors(p)
        for side in (-1, 1):
            lift = max(0.0, side * s) * 0.02
            hip, knee = (side * 0.048 * w, 0.53), (side * 0.05 * w, 0.73 - lift)
            ankle = (side * (0.05 * w + 0.008 * s), 0.93 - lift)
            self.limb(hip, knee, 0.07 * w, 0.058 * w, thigh)
            self.limb(knee, ankle, 0.058 * w, 0.046 * w, shin)
            if p.lower_type == "trousers":
                self.limb(knee, ankle, 0.058 * w, 0.05 * w, p.lower)
            self.ellipse(ankle[0] + side * 0.008, 0.958 - lift, 0.034, 0.022, p.shoes)

    def _frontal_lower(self, p: Identity, w: float, hw: float) -> None:
        """The lower garment at the hips (a skirt, or the top of trousers or shorts)."""
        if p.lower_type == "skirt":
            self.poly([(-hw, 0.45), (hw, 0.45), (hw + 0.055, 0.70), (-hw - 0.055, 0.70)], p.lower)
        else:
            bottom = 0.6 if p.lower_type == "trousers" else 0.66
            self.poly([(-hw, 0.45), (hw, 0.45), (hw + 0.006, 0.56), (0, 0.57), (-hw - 0.006, 0.56)], p.lower)
            if p.lower_type == "shorts":
                for side in (-1, 1):
                    self.limb((side * 0.048 * w, 0.53), (side * 0.05 * w, bottom), 0.074 * w, 0.068 * w, p.lower)

    def _frontal_arms(self, p: Identity, pose: Pose, w: float, sw: float) -> None:
        """Both arms, swinging with the walking phase."""
        for side in (-1, 1):
            a = 0.12 + 0.05 * abs(math.sin(pose.phase + side))
            shorten = 1.0 - 0.18 * abs(pose.arm_swing * math.sin(pose.phase) / 0.4)
            sh = (side * (sw - 0.014), 0.185)
            el = (sh[0] + side * 0.15 * shorten * math.sin(a), sh[1] + 0.15 * shorten * math.cos(a))
            wr = (el[0] + side * 0.13 * shorten * math.sin(a * 0.4), el[1] + 0.13 * shorten * math.cos(a * 0.4))
            sleeve = dim(p.upper, 0.93)
            self.limb(sh, el, 0.05 * w, 0.044 * w, sleeve)
            self.limb(el, wr, 0.042 * w, 0.036 * w, sleeve if p.long_sleeves else p.skin)
            self.ellipse(wr[0], wr[1] + 0.014, 0.019, 0.022, p.skin)

    def _frontal_bag(self, p: Identity, back: bool, w: float, hw: float) -> None:
        """A backpack (its body from behind, its straps from the front) or a shoulder bag and its strap."""
        bag_u = (p.bag_side if back else -p.bag_side) * (hw + 0.045)
        if p.bag == "backpack":
            if back:
                self.poly([(-0.088 * w, 0.2), (0.088 * w, 0.2), (0.092 * w, 0.42), (-0.092 * w, 0.42)], p.bag_color)
                self.rect(-0.088 * w, 0.2, 0.088 * w, 0.245, dim(p.bag_color, 0.75))
            else:
                for side in (-1, 1):
                    self.limb((side * 0.07 * w, 0.16), (side * 0.085 * w, 0.34), 0.022, 0.018, p.bag_color)
        elif p.bag == "shoulder":
            self.limb((-bag_u * 0.55, 0.165), (bag_u * 0.8, 0.41), 0.014, 0.014, dim(p.bag_color, 0.8))
            bag = [(bag_u - 0.04, 0.40), (bag_u + 0.04, 0.40), (bag_u + 0.042, 0.52), (bag_u - 0.042, 0.52)]
            self.poly(bag, p.bag_color)

    def _logo(self, p: Identity, u: float, v: float, r: float = 0.03) -> None:
        c = p.logo_color
        if p.logo == "circle":
            self.ellipse(u, v, r, r, c)
        elif p.logo == "square":
            self.poly([(u - r, v - r), (u + r, v - r), (u + r, v + r), (u - r, v + r)], c)
        elif p.logo == "triangle":
            self.poly([(u, v - r * 1.2), (u + r * 1.1, v + r), (u - r * 1.1, v + r)], c)
        else:
            self.rect(u - r * 1.6, v - r * 0.5, u + r * 1.6, v + r * 0.5, c)

    def _side(self, p: Identity, pose: Pose, d: int) -> None:
        """Side view facing ``d`` (1: right, -1: left): far limbs first, then body, near limbs and head."""
        w = 0.85 + 0.15 * p.width
        bag_near = p.bag_side == -d
        legs, arms = _side_limbs(pose, d)
        if p.hair_style == "long":
            self.poly([(-0.045 * d, 0.07), (-0.005 * d, 0.07), (-0.01 * d, 0.23), (-0.06 * d, 0.23)], p.hair)
        self._side_arm(p, arms[0], 0.8, w)
        self._side_leg(p, legs[1], 0.8, w, d)
        if p.bag == "shoulder" and not bag_near:
            self.poly([(0.02 * d, 0.40), (0.075 * d, 0.40), (0.075 * d, 0.51), (0.02 * d, 0.51)], dim(p.bag_color, 0.8))
        if p.lower_type == "skirt":
            self.poly([(-0.065 * w, 0.45), (0.07 * w, 0.45), (0.1 * w, 0.70), (-0.095 * w, 0.70)], p.lower)
        self._side_leg(p, legs[0], 1.0, w, d)
        if p.lower_type != "skirt":
            self.poly([(-0.062 * w, 0.45), (0.066 * w, 0.45), (0.06 * w, 0.57), (-0.058 * w, 0.57)], p.lower)
        self._side_body(p, w, d)
        self._side_arm(p, arms[1], 1.0, w)
        if p.bag == "shoulder" and bag_near:
            self.limb((0.0, 0.17), (-0.01 * d, 0.41), 0.014, 0.014, dim(p.bag_color, 0.8))
            self.poly([(-0.05 * d, 0.40), (0.03 * d, 0.40), (0.032 * d, 0.52), (-0.052 * d, 0.52)], p.bag_color)
        self._head(p, pose.view, d)
        if p.hair_style == "ponytail":
            self.ellipse(-0.055 * d, 0.1, 0.02, 0.045, p.hair)

    def _side_body(self, p: Identity, w: float, d: int) -> None:
        """Neck, torso (with its pattern and belt) and a backpack, in a side view."""
        self.poly([(-0.02, 0.115), (0.02, 0.115), (0.022, 0.17), (-0.022, 0.17)], p.skin)
        torso = [
            (-0.062 * w * d, 0.165),
            (0.05 * w * d, 0.16),
            (0.072 * w * d, 0.27),
            (0.064 * w * d, 0.47),
            (-0.064 * w * d, 0.47),
        ]
        self.poly(torso, p.upper)
        self._torso_pattern(p, (0.062 * w, 0.064 * w), 0.0)
        if p.belt is not None:
            self.poly([(-0.064 * w, 0.44), (0.064 * w, 0.44), (0.064 * w, 0.468), (-0.064 * w, 0.468)], p.belt)
        if p.bag == "backpack":
            pack = [(-0.05 * w * d, 0.2), (-0.125 * w * d, 0.22), (-0.13 * w * d, 0.41), (-0.05 * w * d, 0.42)]
            self.poly(pack, p.bag_color)
            self.limb((-0.02 * d, 0.17), (0.01 * d, 0.33), 0.02, 0.018, dim(p.bag_color, 0.8))

    def _side_leg(self, p: Identity, leg: Joints, shade: float, w: float, d: int) -> None:
        """One leg (hip, knee, ankle) in a side view; ``shade`` darkens the far one."""
        thigh, shin = self._leg_colors(p)
        hip, knee, ankle = leg
        self.limb(hip, knee, 0.072 * w, 0.058 * w, dim(thigh, shade))
        self.limb(knee, ankle, 0.056 * w, 0.046 * w, dim(p.lower if p.lower_type == "trousers" else shin, shade))
        if p.lower_type == "shorts":
            mid = (hip[0] + (knee[0] - hip[0]) * 0.75, hip[1] + (knee[1] - hip[1]) * 0.75)
            self.limb(hip, mid, 0.076 * w, 0.068 * w, dim(p.lower, shade))
        self.ellipse(ankle[0] + d * 0.022, ankle[1] + 0.022, 0.045, 0.022, dim(p.shoes, shade))

    def _side_arm(self, p: Identity, arm: Joints, shade: float, w: float) -> None:
        """One arm (shoulder, elbow, wrist) in a side view; ``shade`` darkens the far one."""
        sh, el, wr = arm
        sleeve = dim(p.upper, 0.93 * shade)
        self.limb(sh, el, 0.05 * w, 0.044 * w, sleeve)
        self.limb(el, wr, 0.042 * w, 0.036 * w, sleeve if p.long_sleeves else dim(p.skin, shade))
        self.ellipse(wr[0], wr[1] + 0.012, 0.018, 0.021, dim(p.skin, shade))


#: Three joints of a limb in body units: (hip, knee, ankle) or (shoulder, elbow, wrist).
Joints = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


def _torso_half_width(half_width: Sequence[float], v: float) -> float:
    """The torso's half width at height ``v``, linear between v 0.185 and 0.47."""
    return half_width[0] + (half_width[1] - half_width[0]) * (v - 0.185) / (0.47 - 0.185)


def _side_limbs(pose: Pose, d: int) -> tuple[list[Joints], list[Joints]]:
    """Joints of the (near, far) legs and the (far, near) arms in a side view facing ``d``."""
    legs: list[Joints] = []
    arms: list[Joints] = []
    for sign in (1, -1):  # 1: the near leg / far arm move together
        th = sign * pose.stride * math.sin(pose.phase)
        bend = 0.5 * max(0.0, math.sin(pose.phase * sign + 1.2)) * pose.stride / 0.35
        hip = (0.0, 0.52)
        knee = (hip[0] + d * 0.21 * math.sin(th), hip[1] + 0.21 * math.cos(th))
        sa = th - bend
        ankle = (knee[0] + d * 0.2 * math.sin(sa), knee[1] + 0.2 * math.cos(sa))
        legs.append((hip, knee, ankle))
        ta = -sign * pose.arm_swing * math.sin(pose.phase)
        sh = (-0.005 * d, 0.19)
        el = (sh[0] + d * 0.15 * math.sin(ta), sh[1] + 0.15 * math.cos(ta))
        fa = ta + 0.25 + max(0.0, ta)
        wr = (el[0] + d * 0.13 * math.sin(fa), el[1] + 0.13 * math.cos(fa))
        arms.append((sh, el, wr))
    return legs, arms
