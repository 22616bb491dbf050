"""canlib.book: the Markdown tables the chapters glue into numbered book tables."""

from __future__ import annotations

import pandas as pd
import pytest

from canlib.book import markdown_table, readout_table


def test_markdown_table_fixed_precision_alignment_and_index():
    df = pd.DataFrame(
        {"params (M)": [8.54321, 14.9647], "kind": ["stem", "layer | 4"]}, index=pd.Index(["a", "b"], name="part")
    )
    text = markdown_table(df, {"params (M)": ".2f"})
    assert text.splitlines() == [
        "| part | params (M) | kind |",
        "|:---|---:|:---|",
        "| a | 8.54 | stem |",
        "| b | 14.96 | layer \\| 4 |",
    ]


def test_markdown_table_refuses_floats_without_a_format_and_blanks_missing_values():
    df = pd.DataFrame({"x": [1.23456, float("nan")], "n": [1234, 5]})
    with pytest.raises(ValueError, match="fixed precision"):
        markdown_table(df, index=False)
    lines = markdown_table(df, {"x": ".1f", "n": ",d"}, index=False).splitlines()
    assert lines[2:] == ["| 1.2 | 1,234 |", "| \N{EN DASH} | 5 |"]


def test_markdown_table_flattens_multiindex_columns_and_callable_formats():
    df = pd.DataFrame([[1.0, 2.0]], columns=pd.MultiIndex.from_tuples([("ours", "mAP"), ("paper", "mAP")]))
    lines = markdown_table(df, lambda v: f"{100 * v:.1f} %", index=False).splitlines()
    assert lines[0] == "| ours mAP | paper mAP |" and lines[2] == "| 100.0 % | 200.0 % |"


def test_markdown_table_default_format_skips_the_index():
    df = pd.DataFrame({"p": [0.12345, 0.5]}, index=pd.Index([1, 16], name="scale s"))
    assert markdown_table(df, ".2f").splitlines()[2:] == ["| 1 | 0.12 |", "| 16 | 0.50 |"]
    assert markdown_table(df, {"scale s": ".1f", "p": ".1f"}).splitlines()[2] == "| 1.0 | 0.1 |"


def test_readout_table_means_per_row_in_grid_order_and_empty_without_slices():
    records = pd.DataFrame(
        {
            "table": ["Table 3", "Table 3", "Table 2"],
            "row": ["Part-1,3,5,7", "Part-1,3,5,7", "Part-1,2,3"],
            "mAP": [0.60, 0.70, 0.50],
            "mAP_global": [0.40, 0.50, 0.45],
            "mAP_local": [0.55, 0.65, 0.30],
            "final_ce": [1.0, 1.2, 2.0],
        }
    )
    read = readout_table(records)
    assert list(read.index) == [("Table 3", "Part-1,3,5,7"), ("Table 2", "Part-1,2,3")]  # first seen first
    row = read.loc[("Table 3", "Part-1,3,5,7")]
    assert row["seeds"] == 2 and row["mAP %"] == pytest.approx(65.0) and row["global slices %"] == pytest.approx(45.0)
    assert row["± (whole)"] == pytest.approx(100 * records["mAP"][:2].std()) and row["final CE"] == pytest.approx(1.1)
    assert readout_table(records.drop(columns=["mAP_global"])).empty and readout_table(records.iloc[:0]).empty
