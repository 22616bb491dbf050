"""The book's prose quotes the CPU proxy's configuration as configs/cpu.yaml holds it.

The chapters' markdown names configuration values in a few recurring forms: a YAML quote
(`` `loss.clustering_input: post_bn` ``), a value before its key ("we use 0.3
(`loss.triplet_margin`)", "$s = 30$ (`loss.ce_scale`)"), a key with its default
("`loss.ce_scale` (30 by default"), and, for the proxy's schedule and input, a sentence about the
current proxy ("its 8 epochs", "the input size (192x64", "a learning rate of 1e-3"). This test
parses those forms for the keys the chapters quote and fails when one disagrees with
configs/cpu.yaml, so a changed profile cannot leave a stale sentence behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from canlib.config import config_value, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "chapters").glob("*.ipynb")), ROOT / "book" / "intro.md"]

#: The keys the chapters quote, and how a quoted word compares with the profile's value.
KEYS = (
    "optim.lr",
    "optim.epochs",
    "data.height",
    "data.width",
    "loss.clustering_input",
    "loss.triplet_squared",
    "loss.triplet_margin",
    "loss.ce_scale",
)
_KEY = r"(?P<key>" + "|".join(re.escape(k) for k in KEYS) + r")"
_VALUE = r"(?P<value>[A-Za-z0-9_.+-]+?)"
#: Key and value forms that state a value (``key=value`` is an override someone may pass: not a statement).
KEY_FORMS = (
    re.compile(r"`" + _KEY + r":\s*" + _VALUE + r"`"),  # `loss.triplet_squared: true`
    re.compile(r"(?<![\w.=])(?P<value>\d[\d.e-]*)\$?\s+\(`" + _KEY + r"`"),  # 0.3 (`key`), $s = 30$ (`key`)
    re.compile(r"`" + _KEY + r"`\s*\(" + _VALUE + r" by default"),  # `key` (30 by default
    re.compile(r"`" + _KEY + r"`,\s*default\s*`?" + _VALUE + r"`?[\s,;.)]"),  # `key`, default 0.5
)
#: A sentence about the current proxy, and the phrases in it that quote its schedule and input.
CURRENT_PROXY = re.compile(r"`cpu` profile|current proxy|configs/cpu\.yaml|this proxy", re.I)
OTHER_SETUP = re.compile(r"first proxy|cpu-v1|first grid|paper's|from scratch", re.I)
PROXY_FORMS = (
    ("optim.epochs", re.compile(r"\b(?:its|proxy's|for) (?P<value>\d+) epochs")),
    ("optim.lr", re.compile(r"learning rate of (?P<value>\d(?:\.\d+)?e-\d+)")),
    ("data.height,data.width", re.compile(r"(?P<value>\d+x\d+)(?= input| \()")),
)
#: The proxy's input size, wherever the prose names "the input size (HxW".
INPUT_SIZE = re.compile(r"the input size \((?P<value>\d+x\d+)")
#: Phrases that name a value the proxy does *not* use, removed before the proxy forms are read.
NOT_THIS = re.compile(r"(instead of|rather than|against|the paper's|first proxy's)\s+(an? )?[\w.$-]+(x\d+)?", re.I)


def markdown_texts(path: Path) -> list[tuple[str, str]]:
    """``(where, text)`` of every markdown cell of a chapter (or the whole of a Markdown page)."""
    if path.suffix == ".md":
        return [(path.name, path.read_text(encoding="utf-8"))]
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [
        (f"{path.name} cell {i}", "".join(cell["source"]))
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "markdown"
    ]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.;:])\s+(?=[A-Z*(`$])|\n\s*\n|\n[*-] ", text) if s.strip()]


def quoted_values(text: str) -> list[tuple[str, str]]:
    """``(key, quoted value)`` for every statement of one of :data:`KEYS` in ``text``."""
    flat = re.sub(r"\s+", " ", text)
    found = [(m["key"], m["value"]) for form in KEY_FORMS for m in form.finditer(flat)]
    found += [("data.height,data.width", m["value"]) for m in INPUT_SIZE.finditer(flat)]
    for raw in sentences(text):
        sentence = re.sub(r"\s+", " ", raw)
        if not CURRENT_PROXY.search(sentence) or OTHER_SETUP.search(NOT_THIS.sub("", sentence)):
            continue
        kept = NOT_THIS.sub("", sentence)
        found += [(key, m["value"]) for key, form in PROXY_FORMS for m in form.finditer(kept)]
    return found


def agrees(key: str, quoted: str, profile: dict) -> bool:
    if key == "data.height,data.width":
        return quoted == f"{config_value(profile, 'data.height')}x{config_value(profile, 'data.width')}"
    value = config_value(profile, key)
    if isinstance(value, bool):
        return quoted.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(quoted) == float(value)
        except ValueError:
            return False
    return quoted.strip("\"'") == str(value)


def disagreements(pages: list[tuple[str, str]], profile: dict) -> list[str]:
    return [
        f"{where}: {key} quoted as {quoted!r}"
        for where, text in pages
        for key, quoted in quoted_values(text)
        if not agrees(key, quoted, profile)
    ]


@pytest.fixture(scope="module")
def cpu() -> dict:
    return load_config(ROOT / "configs" / "cpu.yaml")


def test_the_forms_are_read() -> None:
    text = (
        "We use 0.3 (`loss.triplet_margin`) and $s = 30$ (`loss.ce_scale`); `loss.ce_scale` (30 by default). "
        "By default (`loss.clustering_input: post_bn`; `loss.triplet_squared: true`), while "
        "`loss.triplet_squared=false` is an override. The `cpu` profile trains for 8 epochs at a learning rate "
        "of 1e-3 instead of 3e-3, with a 192x64 input instead of 144x48.\n\n"
        "The first proxy trained for 16 epochs."
    )
    assert sorted(quoted_values(text)) == sorted(
        [
            ("loss.triplet_margin", "0.3"),
            ("loss.ce_scale", "30"),
            ("loss.ce_scale", "30"),
            ("loss.clustering_input", "post_bn"),
            ("loss.triplet_squared", "true"),
            ("optim.epochs", "8"),
            ("optim.lr", "1e-3"),
            ("data.height,data.width", "192x64"),
        ]
    )


def test_a_wrong_value_is_caught(cpu: dict) -> None:
    wrong = [("planted", "we use 0.2 (`loss.triplet_margin`); the current proxy's 12 epochs, `loss.ce_scale: 64`")]
    assert disagreements(wrong, cpu) == [
        "planted: loss.ce_scale quoted as '64'",
        "planted: loss.triplet_margin quoted as '0.2'",
        "planted: optim.epochs quoted as '12'",
    ]


def test_the_book_finds_quotes_to_check(cpu: dict) -> None:
    pages = [item for path in PAGES for item in markdown_texts(path)]
    keys = {key for _, text in pages for key, _ in quoted_values(text)}
    # every kind of quote the chapters make is found, or the check below checks nothing
    assert {"loss.clustering_input", "loss.triplet_squared", "loss.triplet_margin", "loss.ce_scale"} <= keys
    assert {"optim.epochs", "optim.lr", "data.height,data.width"} <= keys


@pytest.mark.parametrize("path", PAGES, ids=[p.stem for p in PAGES])
def test_prose_matches_cpu_profile(path: Path, cpu: dict) -> None:
    assert disagreements(markdown_texts(path), cpu) == []


def test_chapters_link_the_contradictions_they_show() -> None:
    """Every chapter that :data:`canlib.paper.CONTRADICTIONS` names links to the one table of them (chapter 10's)."""
    from canlib.paper import CONTRADICTIONS

    chapters = {int(path.name[:2]): path for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))}
    named = {int(re.fullmatch(r"chapter (\d+)", c.chapter)[1]) for c in CONTRADICTIONS}  # type: ignore[index]
    assert named <= set(chapters), named - set(chapters)
    unlinked = [
        chapters[n].name
        for n in sorted(named - {10})  # chapter 10 holds the table
        if not any("{numref}`tbl-results-contradictions`" in text for _, text in markdown_texts(chapters[n]))
    ]
    assert unlinked == []
    wheres = [c.where for c in CONTRADICTIONS]
    assert len(wheres) == len(set(wheres))  # each once
