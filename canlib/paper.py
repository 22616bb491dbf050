"""What the paper says, as data: its variants, its loss rows and its reported numbers.

This module is the one home of the paper's knowledge (Li et al., 2021): the part patterns
of Tables 2-3, the loss combinations of Table 4, which loss trained Tables 2-3, and the
numbers of Tables 2-6. The training code never imports it, so relabelling a row here does
not change what any configuration trains (the training digest, :mod:`canlib.lab.digest`).

All values are percentages on Market-1501 unless a data set is named, copied from the
paper's Tables 2-6. Missing entries are ``None``. Known inconsistencies in the paper are
noted where they occur and collected in :data:`CONTRADICTIONS` (the book's results chapter prints them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

#: The part patterns of the ablation in Tables 2 and 3 (Section 4.2): one branch per entry,
#: 1 being the global branch. ``(1, 3, 5, 7)`` is the paper's final model.
PART_PATTERNS: dict[str, tuple[int, ...]] = {
    "Part-1,2,3": (1, 2, 3),
    "Part-1,2,3,4": (1, 2, 3, 4),
    "Part-1,3,5": (1, 3, 5),
    "Part-1,3,5,7": (1, 3, 5, 7),
    "Part-1,3,5,7,9": (1, 3, 5, 7, 9),
}

#: The paper's final part pattern (Section 3.2.2), the model of Table 4.
FINAL_PATTERN = "Part-1,3,5,7"

#: Table 4's rows as keyword arguments of :class:`canlib.losses.CANLoss` (equation (5)):
#: which terms are on, and which features the clustering losses (triplet, center) see.
#: The last row is the paper's final recipe.
LOSS_ROWS: dict[str, dict[str, Any]] = {
    "CE": {"ce_weight": 1.0, "triplet_weight": 0.0, "center_weight": 0.0, "clustering_features": "global"},
    "CE + triplet": {"ce_weight": 1.0, "triplet_weight": 1.0, "center_weight": 0.0, "clustering_features": "global"},
    "CE + triplet + center": {
        "ce_weight": 1.0,
        "triplet_weight": 1.0,
        "center_weight": 0.0005,
        "clustering_features": "global",
    },
    "CE + triplet + center (global & local)": {
        "ce_weight": 1.0,
        "triplet_weight": 1.0,
        "center_weight": 0.0005,
        "clustering_features": "all",
    },
}

#: Table 2: part patterns without collaborative attention. mAP / rank-1 / rank-3 / rank-5.
TABLE2: dict[str, dict[str, float]] = {
    "Part-1,2,3": {"mAP": 86.6, "rank1": 94.4, "rank3": 97.2, "rank5": 97.9},
    "Part-1,2,3,4": {"mAP": 86.4, "rank1": 94.4, "rank3": 97.2, "rank5": 98.0},
    "Part-1,3,5": {"mAP": 86.1, "rank1": 94.6, "rank3": 97.5, "rank5": 98.1},
    "Part-1,3,5,7": {"mAP": 85.4, "rank1": 94.3, "rank3": 97.2, "rank5": 98.0},
    "Part-1,3,5,7,9": {"mAP": 83.9, "rank1": 93.9, "rank3": 96.9, "rank5": 97.9},
}

#: Table 3: the same patterns with collaborative attention. mAP / rank-1 / rank-3 / rank-5 / rank-10.
TABLE3: dict[str, dict[str, float]] = {
    "Part-1,2,3": {"mAP": 87.4, "rank1": 94.8, "rank3": 97.6, "rank5": 98.4, "rank10": 99.1},
    "Part-1,2,3,4": {"mAP": 86.7, "rank1": 94.5, "rank3": 97.5, "rank5": 98.3, "rank10": 99.1},
    "Part-1,3,5": {"mAP": 87.6, "rank1": 95.0, "rank3": 97.8, "rank5": 98.4, "rank10": 99.2},
    "Part-1,3,5,7": {"mAP": 87.9, "rank1": 95.2, "rank3": 97.5, "rank5": 98.3, "rank10": 99.2},
    "Part-1,3,5,7,9": {"mAP": 87.2, "rank1": 94.8, "rank3": 97.4, "rank5": 98.2, "rank10": 98.9},
}

#: Table 3's last row: Part-1,3,5,7 without CA, with Table 3's extra rank-10 column.
TABLE3_WITHOUT_CA: dict[str, float] = {"mAP": 85.4, "rank1": 94.3, "rank3": 97.2, "rank5": 98.0, "rank10": 98.8}

#: Table 4: loss combinations for CAN (Part-1,3,5,7 with CA). mAP / rank-1 / rank-3 / rank-5.
#: The keys match :data:`LOSS_ROWS`.
TABLE4: dict[str, dict[str, float]] = {
    "CE": {"mAP": 87.0, "rank1": 95.0, "rank3": 97.8, "rank5": 98.7},
    "CE + triplet": {"mAP": 87.9, "rank1": 95.2, "rank3": 97.5, "rank5": 98.3},
    "CE + triplet + center": {"mAP": 88.3, "rank1": 95.4, "rank3": 97.6, "rank5": 98.4},
    "CE + triplet + center (global & local)": {"mAP": 89.6, "rank1": 95.7, "rank3": 97.8, "rank5": 98.6},
}

#: The ablation tables by name, as :mod:`canlib.lab.rows` labels its rows.
ABLATION_TABLES: dict[str, dict[str, dict[str, float]]] = {"Table 2": TABLE2, "Table 3": TABLE3, "Table 4": TABLE4}


def shared_metrics(a: dict[str, float], b: dict[str, float]) -> dict[str, tuple[float, float]]:
    """The metrics two reported rows both give, as ``{metric: (a, b)}``."""
    return {k: (a[k], b[k]) for k in a if k in b}


def ablation_loss_row() -> str:
    """The Table 4 row whose loss trained the part-pattern ablations of Tables 2 and 3.

    Derived from the numbers, not asserted: the Table 4 row that reports, metric for metric,
    the same numbers as Table 3's final pattern (with CA) is the loss Table 3 used; Table 3's
    "without CA" row equals Table 2's row of that pattern, so Table 2 was trained with the
    same loss. For the paper as printed this is "CE + triplet" (87.9 / 95.2 / 97.5 / 98.3):
    cross-entropy plus the batch-hard triplet on the global features, no center loss.
    """
    t3 = TABLE3[FINAL_PATTERN]
    matches = [label for label, row in TABLE4.items() if all(x == y for x, y in shared_metrics(t3, row).values())]
    if len(matches) != 1:
        raise ValueError(f"expected exactly one Table 4 row equal to Table 3's {FINAL_PATTERN}, found {matches}")
    if any(x != y for x, y in shared_metrics(TABLE3_WITHOUT_CA, TABLE2[FINAL_PATTERN]).values()):
        raise ValueError("Table 3's row without CA no longer equals Table 2's row of the same pattern")
    return matches[0]


#: The loss of the ablations of Tables 2 and 3, as :class:`canlib.losses.CANLoss` arguments.
def ablation_loss() -> dict[str, Any]:
    """Keyword arguments of the loss that trained Tables 2-3 (see :func:`ablation_loss_row`)."""
    return dict(LOSS_ROWS[ablation_loss_row()])


#: Table 5: CAN on Market-1501 in the comparison table (one point above Table 4's best row,
#: unexplained in the paper).
TABLE5_CAN: dict[str, float] = {"mAP": 90.6, "rank1": 96.4, "rank5": 98.8, "rank10": 99.3}

#: Table 6: CAN on DukeMTMC-reID and CUHK03. The table is the consistent reading; Section
#: 4.6's text swaps these numbers with the pyramid method's.
TABLE6_CAN: dict[str, dict[str, float]] = {
    "dukemtmc": {"mAP": 82.3, "rank1": 91.6},
    "cuhk03": {"mAP": 82.8, "rank1": 86.1},
}

#: Table 5's compared methods on Market-1501: mAP, rank-1, rank-5, rank-10 (None = not reported).
TABLE5: dict[str, tuple[float | None, float | None, float | None, float | None]] = {
    "Spindle": (None, 76.9, 91.5, 94.6),
    "SVDNet": (62.1, 82.3, 92.3, 95.2),
    "PDC": (63.4, 84.1, 92.7, 94.9),
    "PSE": (69.0, 87.7, 94.5, 96.8),
    "Cam-style": (71.6, 89.5, None, None),
    "GLAD": (73.9, 89.9, None, None),
    "HA-CNN": (75.7, 91.2, None, None),
    "CNN-Base": (79.8, 92.5, None, None),
    "PCB+RPP": (81.6, 93.8, 97.5, 98.5),
    "HPM": (82.7, 94.2, 97.5, 98.5),
    "SGGNN": (82.8, 92.3, 96.1, 97.4),
    "SPRe-ID": (83.4, 93.7, 97.6, 98.4),
    "MHN": (85.0, 95.1, 98.1, 98.9),
    "DG-Net": (86.0, 94.8, None, None),
    "MGN": (86.9, 95.7, None, None),
    "DSA-Re-ID": (87.6, 95.7, None, None),
    "Pyramid": (88.2, 95.7, 98.4, 99.0),
    "CAN (ours)": (90.6, 96.4, 98.8, 99.3),
}

#: Table 6's compared methods: (Duke mAP, Duke rank-1, CUHK03 mAP, CUHK03 rank-1).
TABLE6: dict[str, tuple[float | None, float | None, float | None, float | None]] = {
    "CNN-Base": (68.5, 83.5, 59.0, 63.5),
    "PSE+ECN": (62.0, 79.8, 30.2, 27.3),
    "Cam-style": (57.6, 78.3, None, None),
    "GLAD": (None, None, None, 85.0),
    "HA-CNN": (63.8, 80.5, 41.0, 44.4),
    "PCB+RPP": (69.2, 83.3, 57.5, 63.7),
    "HPM": (74.3, 86.6, 63.9, 57.2),
    "MHN": (77.2, 89.1, 65.4, 77.2),
    "DG-Net": (74.8, 86.6, None, None),
    "MGN": (78.4, 88.7, 67.4, 68.0),
    "DSA-Re-ID": (74.3, 86.2, 75.2, 78.9),
    "Pyramid": (79.0, 89.0, 76.9, 78.9),
    "CAN (ours)": (82.3, 91.6, 82.8, 86.1),
}


# --------------------------------------------------------------------------- another paper's numbers

#: Not this paper's: the strong baseline of Luo et al. (2019), "Bag of Tricks and a Strong Baseline
#: for Deep Person Re-identification" (CVPR workshops; this paper's reference [12]), ResNet50 with all
#: its tricks and the center loss on Market-1501, without re-ranking: its abstract ("94.5% rank-1
#: and 85.9% mAP on Market1501 with only using global features") and the README of its code
#: (michuanhaohao/reid-strong-baseline: "+Center loss | 94.5 (85.9)"). The sanity baseline before
#: the grid (``configs/bot-market1501.yaml``, :mod:`canlib.lab.sanity`) is compared with it.
BOT_MARKET1501: dict[str, float] = {"mAP": 85.9, "rank1": 94.5}


# --------------------------------------------------------------------------- its contradictions


class Contradiction(NamedTuple):
    """A place where the paper contradicts itself, the reading this book takes, and the chapter that shows it."""

    where: str
    reading: str
    chapter: str


#: Every contradiction of the paper that a chapter mentions, once each (the results chapter's table; the
#: chapters link to it). ``chapter`` names the chapter that shows the evidence.
CONTRADICTIONS: tuple[Contradiction, ...] = (
    Contradiction(
        "the abstract: CAN learns to 'weighted combine the adjacent slices'; Section 3.2.2: a parameter-free "
        "max pooling of two adjacent blocks",
        "Section 3.2.2: an element-wise maximum with no weights (the abstract describes no layer)",
        "chapter 3",
    ),
    Contradiction(
        "Section 3.2.2 names the layer 'Adaptive (Concatenation) Pooling', the name of PyTorch's adaptive pooling; "
        "its equation (1) gives other, overlapping windows for 5, 7 and 9 stripes",
        "equation (1), the only rule the text writes down (model.pooling: paper); PyTorch's is model.pooling: adaptive",
        "chapter 2",
    ),
    Contradiction(
        "equation (2) lists n fused features LP_0..LP_{n-1} plus the global one; eq. (3) and the feature "
        "count (16) need n-1",
        "n-1 fused features per branch (eq. (3))",
        "chapter 4",
    ),
    Contradiction(
        "equation (8) selects the hardest negative with argmax of the distance",
        "argmin: the closest negative, as the cited batch-hard loss",
        "chapter 5",
    ),
    Contradiction(
        "equation (9) writes the center loss without the square of the cited loss",
        "1/2 squared distance, as Wen et al. (loss.center_squared)",
        "chapter 5",
    ),
    Contradiction(
        "Section 4.1: Market-1501 has '1501 person IDs and 12936 bounding box images in total'; 12,936 is the "
        "size of its training set alone",
        "the official counts, which the readers check (canlib.data.Market1501.official)",
        "chapter 7",
    ),
    Contradiction(
        "Part-1,2,3 is 'essentially MGN' at 86.6 mAP; MGN's paper reports 86.9",
        "both shown; MGN's in Table 5",
        "chapter 10",
    ),
    Contradiction(
        "Table 5 gives CAN 90.6 / 96.4 on Market-1501; Table 4's best row of the same model is 89.6 / 95.7",
        "report both; treat 89.6 as the recipe's target",
        "chapter 10",
    ),
    Contradiction(
        "Section 4.6's text swaps CAN's Duke numbers with CUHK03's and gives Pyramid 82.3 / 91.6",
        "Table 6 is the consistent reading (Pyramid at 79.0 / 89.0 in the table)",
        "chapter 10",
    ),
)


# --------------------------------------------------------------------------- the text's claims


@dataclass(frozen=True)
class Claim:
    """A comparative claim of Sections 4.2-4.3 about the mAP of table rows.

    ``kind``: ``"greater"`` (the first row beats the second), ``"decreasing"`` (each row beats
    the next), ``"pairwise"`` (row ``i`` of the first half beats row ``i`` of the second half)
    or ``"best"`` (the first row is at least as good as every other row).
    """

    text: str
    kind: str
    rows: tuple[tuple[str, str], ...]

    def comparisons(self) -> list[tuple[int, int]]:
        """The ``(better, worse)`` index pairs the claim asserts."""
        n = len(self.rows)
        if self.kind == "greater":
            return [(0, 1)]
        if self.kind == "decreasing":
            return [(i, i + 1) for i in range(n - 1)]
        if self.kind == "pairwise":
            if n % 2:
                raise ValueError(f"pairwise claim {self.text!r} needs an even number of rows, got {n}")
            return [(i, i + n // 2) for i in range(n // 2)]
        if self.kind == "best":
            return [(0, i) for i in range(1, n)]
        raise ValueError(f"unknown claim kind {self.kind!r}")


def paper_claims() -> list[Claim]:
    """The claims the paper's text draws from Tables 2-4, in the order it makes them."""
    patterns = list(PART_PATTERNS)
    t4 = list(LOSS_ROWS)
    best = FINAL_PATTERN
    return [
        Claim(
            "finer stripes without CA hurt: Part-1,2,3 > Part-1,3,5,7,9 (Table 2)",
            "greater",
            (("Table 2", patterns[0]), ("Table 2", patterns[-1])),
        ),
        Claim(
            "without CA, mAP falls at every step from Part-1,2,3 to Part-1,3,5,7,9",
            "decreasing",
            tuple(("Table 2", p) for p in patterns),
        ),
        Claim("CA improves Part-1,3,5,7 (Table 3 vs Table 2)", "greater", (("Table 3", best), ("Table 2", best))),
        Claim(
            "CA improves every part pattern",
            "pairwise",
            tuple(("Table 3", p) for p in patterns) + tuple(("Table 2", p) for p in patterns),
        ),
        Claim(
            "with CA, Part-1,3,5,7 is the best pattern",
            "best",
            (("Table 3", best), *(("Table 3", p) for p in patterns if p != best)),
        ),
        Claim("adding the triplet loss helps: CE + triplet > CE", "greater", (("Table 4", t4[1]), ("Table 4", t4[0]))),
        Claim(
            "adding the center loss helps: CE + triplet + center > CE + triplet",
            "greater",
            (("Table 4", t4[2]), ("Table 4", t4[1])),
        ),
        Claim(
            "clustering losses on global & local features > global only",
            "greater",
            (("Table 4", t4[3]), ("Table 4", t4[2])),
        ),
    ]
