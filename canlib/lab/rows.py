"""The rows of the ablation grid (Tables 2-4, Sections 4.2-4.3) and their configurations.

Each row of the paper's Tables 2, 3 and 4 is a set of configuration overrides on top of a
profile, built from :mod:`canlib.paper` (the part patterns, the loss rows, and the loss that
trained Tables 2-3); the grid's controls are rows of their own. A run is one row with one seed,
identified by the hash of its resolved configuration (:func:`resolve`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canlib import paper
from canlib.config import ConfigError, RunSections, load_config
from canlib.engine.build import build_model
from canlib.engine.errors import error_line


@dataclass(frozen=True)
class Row:
    """One row of one of the paper's tables, as configuration overrides."""

    table: str
    label: str
    overrides: tuple[str, ...]


def _loss_overrides(kwargs: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f"loss.{k}={v}" for k, v in kwargs.items())


def _pattern_overrides(parts: Sequence[int], collaborative: bool) -> tuple[str, ...]:
    return (f"model.parts={list(parts)}", f"model.collaborative={str(collaborative).lower()}")


def ablation_rows(tables: Iterable[str] = ("Table 2", "Table 3", "Table 4")) -> list[Row]:
    """The rows of Tables 2 (no CA), 3 (with CA) and 4 (loss combinations, on Part-1,3,5,7 + CA).

    Tables 2 and 3 are trained with the loss the paper used for them
    (:func:`canlib.paper.ablation_loss`: CE + the batch-hard triplet on the global features),
    Table 4's rows with their own losses. Table 3's Part-1,3,5,7 row and Table 4's
    "CE + triplet" row are then one configuration, as they are one row of numbers in the paper.
    """
    rows: list[Row] = []
    tables = set(tables)
    ablation_loss = _loss_overrides(paper.ablation_loss())
    for table, ca in (("Table 2", False), ("Table 3", True)):
        if table in tables:
            for label, parts in paper.PART_PATTERNS.items():
                rows.append(Row(table, label, _pattern_overrides(parts, ca) + ablation_loss))
    if "Table 4" in tables:
        final = _pattern_overrides(paper.PART_PATTERNS[paper.FINAL_PATTERN], True)
        for label, kwargs in paper.LOSS_ROWS.items():
            rows.append(Row("Table 4", label, final + _loss_overrides(kwargs)))
    if CONTROLS in tables:
        rows += control_rows()
    return rows


#: The grid's table of controls (not one of the paper's tables).
CONTROLS = "Controls"


def control_rows() -> list[Row]:
    """Rows that separate "local features help" from "more descriptor slices" and test a reading:

    Part-1 (the global branch alone) under Tables 2-3's loss and under Table 4's final loss;
    Part-1,3,5,7 with CA and PyTorch's adaptive pooling instead of equation (1) (``model.pooling``),
    under Table 3's loss, as the paper's "Adaptive Concatenation Pooling" may mean; and CA at equal
    capacity for Part-1,2,3 and Part-1,3,5,7 (:data:`EQUAL_CAPACITY`): CA's slots filled by the
    mean of the same neighbours (``model.ca_fusion=mean``), a descriptor of the CA model's size and
    number of features with no max, under Table 3's loss. The pre-trained trunk alone, without
    fine-tuning, is measured by :mod:`canlib.lab.controls` (no training).
    """
    global_only = _pattern_overrides((1,), False)
    final_loss = paper.LOSS_ROWS[list(paper.LOSS_ROWS)[-1]]
    ablation_loss = _loss_overrides(paper.ablation_loss())
    ca = _pattern_overrides(paper.PART_PATTERNS[paper.FINAL_PATTERN], True)
    equal = [
        Row(
            CONTROLS, label, (*_pattern_overrides(paper.PART_PATTERNS[p], True), *ablation_loss, "model.ca_fusion=mean")
        )
        for p, label in EQUAL_CAPACITY.items()
    ]
    return [
        Row(CONTROLS, "Part-1 (Tables 2-3 loss)", global_only + ablation_loss),
        Row(CONTROLS, "Part-1 (final loss)", global_only + _loss_overrides(final_loss)),
        Row(CONTROLS, "Part-1,3,5,7 + CA, adaptive pooling", (*ca, *ablation_loss, "model.pooling=adaptive")),
        *equal,
    ]


#: The equal-capacity controls of CA: the pattern, and its row label in :data:`CONTROLS`.
EQUAL_CAPACITY: dict[str, str] = {
    "Part-1,2,3": "Part-1,2,3, CA slots by mean",
    "Part-1,3,5,7": "Part-1,3,5,7, CA slots by mean",
}

#: The claims' sub-grid, (table, label): the rows the claims about CA and the losses compare,
#: trained where a full grid is too dear (the realistic level, each level of the neck factor).
#: Part-1,2,3 and Part-1,3,5,7 with and without CA and at equal capacity, Table 4's rows (its
#: "CE + triplet" is Table 3's Part-1,3,5,7), and Part-1, the global branch alone.
CLAIM_ROWS: tuple[tuple[str, str], ...] = (
    (CONTROLS, "Part-1 (Tables 2-3 loss)"),
    *((t, p) for p in EQUAL_CAPACITY for t in ("Table 2", "Table 3")),
    *((CONTROLS, label) for label in EQUAL_CAPACITY.values()),
    *(("Table 4", label) for label in paper.LOSS_ROWS),
)


def claim_rows() -> list[Row]:
    """The rows of :data:`CLAIM_ROWS`, in the grid's order (one per configuration)."""
    wanted = set(CLAIM_ROWS)
    return [r for r in ablation_rows(TABLES) if (r.table, r.label) in wanted]


#: The grid's tables, as ``ablate --tables`` names them.
TABLES = ("Table 2", "Table 3", "Table 4", CONTROLS)


def select_rows(tables: Sequence[str], labels: Sequence[str] | None = None) -> list[Row]:
    """The rows of ``tables`` (of :data:`TABLES`), only those labelled ``labels`` when given.

    ``ValueError`` naming the option (``--tables``, ``--rows``) and the known values for a table
    or a label that selects nothing, so that a typo never runs (or tabulates) an empty grid.
    """
    unknown = [t for t in tables if t not in TABLES]
    if unknown or not tables:
        got = repr(unknown[0]) if unknown else "nothing"
        raise ValueError(f"--tables {got} is not a table of the grid; the tables: {_quoted(TABLES)}")
    rows = ablation_rows(tables)
    if labels is None:
        return rows
    known = list(dict.fromkeys(r.label for r in rows))
    missing = [label for label in labels if label not in known]
    if missing or not labels:
        got = repr(missing[0]) if missing else "nothing"
        raise ValueError(f"--rows {got} is not a row of {', '.join(dict.fromkeys(tables))}; its rows: {_quoted(known)}")
    return [r for r in rows if r.label in labels]


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in values)


def check_seeds(seeds: Sequence[int]) -> None:
    """Refuse a seed given twice (``ValueError`` naming ``--seeds``): it would count one run twice."""
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if not seeds or repeated:
        what = f"repeats seed {repeated[0]}" if repeated else "names no seed"
        raise ValueError(f"--seeds {' '.join(map(str, seeds))} {what}: give each seed once (each is one run)")


def results_folder(profile: str | Path, kind: str = "ablations") -> Path:
    """``results/<kind>/<profile>-<dataset>``: each profile and data set records its grid (or its
    decisions) in its own folder, so that a paper-profile grid never touches the proxy's records."""
    cfg = load_config(profile)
    return Path("results") / kind / f"{cfg['profile']}-{cfg['data']['dataset']}"


def resolve(profile: str | Path, row: Row, seed: int, data_root: str | Path) -> dict[str, Any]:
    """The resolved configuration of one run of ``row`` with ``seed``."""
    return load_config(profile, [*row.overrides, f"seed={seed}", f"data.root={data_root}", "train.progress=false"])


def check_rows(profile: str | Path, rows: Sequence[Row], seed: int, data_root: str | Path) -> None:
    """Before any training: every row's configuration is valid and its input high enough for its
    largest part (``ValueError`` naming the first row that is not, and why)."""
    strides: dict[str, int] = {}
    for row in rows:
        try:
            run = RunSections.from_config(resolve(profile, row, seed, data_root))
            trunk = dataclasses.replace(run.model, parts=(1,), collaborative=False, pretrained=None)
            if repr(trunk) not in strides:  # one trunk per backbone: its output stride
                strides[repr(trunk)] = build_model(trunk, 2).output_stride
            need = strides[repr(trunk)] * (max(run.model.parts) - 1) + 1
            if run.data.height < need:
                raise ConfigError(
                    f"data.height={run.data.height} is too small for model.parts={list(run.model.parts)} "
                    f"(at least {need} pixels high)"
                )
        except (ConfigError, ValueError) as exc:
            raise ValueError(f"row {row.label!r} of {row.table} cannot train: {error_line(exc)}") from None
