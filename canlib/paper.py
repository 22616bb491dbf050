"""The paper's reported numbers (Li et al., 2021), as data, to print beside ours.

All values are percentages on Market-1501 unless a data set is named, copied from the
paper's Tables 2-6. Missing entries are ``None``. Known inconsistencies in the paper are
noted where they occur (see also the book's results chapter).
"""

from __future__ import annotations

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

#: Table 4: loss combinations for CAN (Part-1,3,5,7 with CA). mAP / rank-1 / rank-3 / rank-5.
#: The keys match :data:`canlib.losses.TABLE4_ROWS`.
TABLE4: dict[str, dict[str, float]] = {
    "CE": {"mAP": 87.0, "rank1": 95.0, "rank3": 97.8, "rank5": 98.7},
    "CE + triplet": {"mAP": 87.9, "rank1": 95.2, "rank3": 97.5, "rank5": 98.3},
    "CE + triplet + center": {"mAP": 88.3, "rank1": 95.4, "rank3": 97.6, "rank5": 98.4},
    "CE + triplet + center (global & local)": {"mAP": 89.6, "rank1": 95.7, "rank3": 97.8, "rank5": 98.6},
}

#: The ablation tables by name, as :mod:`canlib.engine.ablation` labels its rows.
ABLATION_TABLES: dict[str, dict[str, dict[str, float]]] = {"Table 2": TABLE2, "Table 3": TABLE3, "Table 4": TABLE4}

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
