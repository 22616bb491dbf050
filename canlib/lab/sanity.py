"""The sanity baseline before the paper's grid: the strong baseline of Luo et al. (2019) on Market-1501.

The paper's grid costs some twenty GPU-hours, and a broken setup under it (the wrong split read, the
ImageNet weights not loaded, a driver or a mixed precision that trains worse) would only show as
numbers below the paper's, with nothing to tell a broken setup from a claim that does not hold. The
field's habit is to reproduce a known baseline first: BoT's ResNet50 (``configs/bot-market1501.yaml``)
is published at 85.9 mAP / 94.5 rank-1 (:data:`canlib.paper.BOT_MARKET1501`) and is one model of
120 epochs over Market-1501's 12,936 training images, where the grid trains 39 models.

:func:`verdict` compares a run's metrics with the published ones. The tolerance, 1.5 mAP and 1.0
rank-1 below them, is the seed-to-seed spread of such baselines on Market-1501, roughly 0.5-1 mAP
and less in rank-1 (the field's experience, not measured here: it needs a GPU), plus a margin for
what canlib approximates (the profile's "approx." lines: the random-erasing fill, the sampler's
draw, bf16 autocast, the ImageNet weights' version). Within it the setup is sound; further below,
check the data, the weights and the precision before the grid. Far above it, check that no test
identity is in the training folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canlib import paper
from canlib.config import config_hash, load_config
from canlib.data.datasets import official_statistics
from canlib.engine.checkpoint import checkpoint_path
from canlib.engine.trainer import train

#: How far below the published numbers a run may fall and still be sound (points of mAP and rank-1).
TOLERANCE: dict[str, float] = {"mAP": 1.5, "rank1": 1.0}

#: What to check when a run falls short, in the order a broken setup is most often found.
CHECKS = (
    "the data (the counts the run logged beside Market-1501's official ones; the test split is the one evaluated)",
    "the weights (model.pretrained: ImageNet's, loaded; the log names what was loaded)",
    "the precision (rerun with train.amp=off: fp32, as BoT trained)",
)


@dataclass(frozen=True)
class Verdict:
    """A run's metrics beside the published ones (percentages) and what they say about the setup.

    ``kind``: ``"sound"`` (within :data:`TOLERANCE` below the published numbers, or above them by less
    than it), ``"above"`` (more than the tolerance above: sound, but check for test identities in
    training) or ``"below"`` (more than the tolerance below in mAP or rank-1).
    """

    kind: str
    measured: dict[str, float]
    published: dict[str, float]
    gaps: dict[str, float]
    tolerance: dict[str, float]

    @property
    def ok(self) -> bool:
        """Whether the setup may go on to the grid."""
        return self.kind != "below"

    @property
    def line(self) -> str:
        """The verdict in one line."""
        within = f"{self.tolerance['mAP']:g} mAP / {self.tolerance['rank1']:g} rank-1"
        if self.kind == "sound":
            return f"verdict: sound (within {within} of the published numbers); go on to the grid"
        if self.kind == "above":
            return (
                f"verdict: sound, but more than {within} above the published numbers: check that no test "
                "identity is in the training folder before the grid"
            )
        return f"verdict: below the published numbers by more than {within}: check " + "; ".join(CHECKS)


def verdict(
    metrics: Mapping[str, float],
    published: Mapping[str, float] = paper.BOT_MARKET1501,
    tolerance: Mapping[str, float] = TOLERANCE,
) -> Verdict:
    """Compare ``metrics`` (fractions in [0, 1], as ``metrics.json`` holds them) with ``published``
    (percentages) within ``tolerance`` (points): a pure function."""
    measured = {}
    for key in published:
        value = float(metrics[key])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"metrics[{key!r}] must be a fraction in [0, 1] as metrics.json holds it, got {value}")
        measured[key] = 100.0 * value
    gaps = {key: round(measured[key] - float(published[key]), 6) for key in published}
    if any(gaps[key] < -tolerance[key] for key in gaps):
        kind = "below"
    elif any(gaps[key] > tolerance[key] for key in gaps):
        kind = "above"
    else:
        kind = "sound"
    return Verdict(kind, measured, dict(published), gaps, dict(tolerance))


@dataclass(frozen=True)
class SanityRun:
    """A trained sanity baseline: its run folder, final metrics, verdict and the data's departures
    from the official counts (empty: the counts are the official ones; None: the data set has none)."""

    run_dir: Path
    metrics: dict[str, Any]
    verdict: Verdict
    data_differences: list[str] | None


def official_differences(run_dir: str | Path, dataset: str) -> list[str] | None:
    """How the data a run recorded (``run.json``) departs from ``dataset``'s official counts (None: it has none)."""
    official = official_statistics(dataset)
    if not official:
        return None
    record = json.loads((Path(run_dir) / "run.json").read_text())
    found = (record.get("data") or {}).get("statistics") or {}
    return [
        f"{key} {found[key]:,} (official {value:,})"
        for key, value in official.items()
        if key in found and found[key] != value
    ]


def run_sanity(
    config: str | Path,
    data_root: str | Path,
    device: str = "auto",
    runs_dir: str | Path = "runs/sanity",
    overrides: Sequence[str] = (),
) -> SanityRun:
    """Train the sanity profile (or resume it, or only evaluate it once finished) in
    ``runs_dir/<configuration hash>`` and judge its final metrics with :func:`verdict`."""
    cfg = load_config(config, [*overrides, f"data.root={data_root}"])
    run_dir = Path(runs_dir) / config_hash(cfg)
    metrics = train(cfg, run_dir, device=device, resume=checkpoint_path(run_dir).is_file())
    return SanityRun(run_dir, metrics, verdict(metrics), official_differences(run_dir, cfg["data"]["dataset"]))


def report(run: SanityRun) -> str:
    """The run beside the published numbers, the data's counts and the verdict, as printed lines."""
    v = run.verdict
    rows = [
        ("BoT ResNet50, Market-1501 (Luo et al. 2019)", "mAP", "rank-1"),
        ("published", f"{v.published['mAP']:.1f}", f"{v.published['rank1']:.1f}"),
        (f"this run ({run.run_dir})", f"{v.measured['mAP']:.1f}", f"{v.measured['rank1']:.1f}"),
        ("difference", f"{v.gaps['mAP']:+.1f}", f"{v.gaps['rank1']:+.1f}"),
        ("tolerance below the published", f"{v.tolerance['mAP']:.1f}", f"{v.tolerance['rank1']:.1f}"),
    ]
    width = max(len(name) for name, *_ in rows)
    lines = [f"{name:<{width}}  {a:>6}  {b:>6}" for name, a, b in rows]
    if run.data_differences is None:
        lines.append("data: no official counts to compare with")
    elif run.data_differences:
        lines.append("data: the counts differ from the official ones: " + "; ".join(run.data_differences))
    else:
        lines.append("data: the counts are the official ones")
    return "\n".join([*lines, v.line])
