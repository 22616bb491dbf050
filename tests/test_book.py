"""canlib.book: the Markdown tables the chapters glue into numbered book tables."""

from __future__ import annotations

import pandas as pd
import pytest

from canlib.book import markdown_table


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
