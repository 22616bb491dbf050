"""Using a trained model on one's own pictures: embed, search, the ranked-list pages, evaluate --visrank."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from canlib.__main__ import main
from canlib.book import ranked_page
from canlib.config import RunSections, load_config
from canlib.data.datasets import parse_market_name
from canlib.engine.build import build_eval_loaders
from canlib.engine.embed import EmbedError, embed_folder, embed_images, load_embedder, load_embeddings, save_embeddings
from canlib.engine.evaluate import evaluate_run, extract_features, select_queries
from canlib.engine.onnx_export import MAX_ABS_DIFF, MIN_COSINE
from canlib.engine.search import search
from canlib.engine.trainer import train
from canlib.engine.weights import export_weights, load_run_checkpoint, model_from_state
from canlib.metrics.reference import reference_evaluate
from canlib.metrics.search import exact_topk, protocol_marks

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
TINY = ["model.parts=[1,2]", "data.height=32", "data.width=16", "model.embed_dim=16", "train.max_batches_per_epoch=1"]
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> Path:
    """A tiny run trained to its end (one epoch of one batch)."""
    out = tmp_path_factory.mktemp("use") / "run"
    train(load_config(SMOKE, [f"data.root={tiny_data}", *TINY, "optim.epochs=1"]), out, device="cpu")
    return out


@pytest.fixture(scope="module")
def gallery(run, tiny_data, tmp_path_factory) -> Path:
    """The tiny set's gallery embedded by ``run``."""
    out = tmp_path_factory.mktemp("use") / "gallery.npz"
    embed_folder(run, tiny_data / "bounding_box_test", out, device="cpu", progress=False)
    return out


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


# ---------------------------------------------------------------------------------------------- embed
def test_embedding_equals_extract_features(run, tiny_data, tmp_path):
    cfg, ckpt, state = load_run_checkpoint(run)
    model, _ = model_from_state(cfg, state, ckpt)
    dataset, query_loader, _ = build_eval_loaders(RunSections.from_config(cfg).data)
    expected, _, _ = extract_features(model, query_loader, torch.device("cpu"))
    expected = F.normalize(expected, dim=1).numpy()
    by_name = {Path(p).name: i for i, (p, _, _) in enumerate(dataset.query)}
    weights = export_weights(run, tmp_path / "weights.pt", dtype=None)
    for source in (run, weights):
        emb = embed_images(load_embedder(source, "cpu"), tiny_data / "query", progress=False)
        assert emb.descriptors.dtype == np.float32 and len(emb.paths) == len(dataset.query)
        order = [by_name[Path(p).name] for p in emb.paths]
        np.testing.assert_allclose(emb.descriptors, expected[order], rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(emb.descriptors, axis=1), 1.0, atol=1e-6)


def test_the_file_holds_provenance_and_loads_without_pickle(run, gallery, tiny_data):
    with np.load(gallery, allow_pickle=False) as z:
        assert z["descriptors"].dtype == np.float32 and z["paths"].dtype.kind == "U"
        meta = json.loads(str(z["meta"]))
    record = json.loads((run / "run.json").read_text())
    assert meta["model"]["config_hash"] == record["config_hash"]
    assert meta["model"]["commit"] == record["git"]["commit"] and meta["model"]["run"] == str(run)
    assert Path(meta["root"]) == (tiny_data / "bounding_box_test").resolve()
    emb = load_embeddings(gallery)
    assert sorted(emb.paths) == emb.paths and all((emb.root / p).is_file() for p in emb.paths)


def test_a_file_with_pickled_objects_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, descriptors=np.zeros((1, 2), np.float32), paths=np.array([{"a": 1}], dtype=object))
    with pytest.raises(EmbedError, match="not an embeddings file"):
        load_embeddings(bad)
    worse = tmp_path / "worse.npz"
    keys = {k: np.array([object()], dtype=object) for k in ("descriptors", "paths", "sizes", "mtimes", "meta")}
    np.savez(worse, **keys)
    with pytest.raises(EmbedError, match="not a readable embeddings file"):
        load_embeddings(worse)


def test_embedding_again_reuses_unchanged_files(run, tiny_data, tmp_path, caplog):
    folder = tmp_path / "crops"
    shutil.copytree(tiny_data / "query", folder / "nested" / "deeper")
    out = tmp_path / "crops.npz"
    first = embed_folder(run, folder, out, device="cpu", progress=False)
    assert first.reused == 0 and all(p.startswith("nested/deeper/") for p in first.paths)
    changed = folder / first.paths[0]
    changed.write_bytes(changed.read_bytes())  # same bytes, new modification time
    shutil.copy(folder / first.paths[1], folder / "added copy.jpg")  # any file name
    second = embed_folder(run, folder, out, device="cpu", progress=False)
    assert second.reused == len(first.paths) - 1 and len(second.paths) == len(first.paths) + 1
    again = dict(zip(second.paths, second.descriptors, strict=True))
    for p, d in zip(first.paths, first.descriptors, strict=True):
        np.testing.assert_allclose(again[p], d, atol=1e-6)
    np.testing.assert_allclose(again["added copy.jpg"], again[first.paths[1]], atol=1e-6)


def test_unreadable_images_are_named_skipped_and_counted(run, tiny_data, tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((tiny_data / "query").iterdir())[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("not an image, not looked at\n")
    with caplog.at_level(logging.WARNING, logger="canlib.engine.embed"):
        emb = embed_images(load_embedder(run, "cpu"), folder, progress=False)
    assert len(emb.paths) == 3 and [name for name, _ in emb.skipped] == ["broken.jpg"]
    assert "skipped broken.jpg: cannot read image" in caplog.text
    assert "1 of 4 images could not be read and were skipped" in caplog.text


@pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript or onnxruntime not installed (the 'export' extra)")
def test_onnx_embedding_matches_pytorch_within_the_export_tolerance(run, tiny_data, tmp_path):
    from canlib.engine.onnx_export import export_run

    onnx = tmp_path / "model.onnx"
    export_run(run, onnx, check=False)
    torch_emb = embed_images(load_embedder(run, "cpu"), tiny_data / "query", progress=False)
    onnx_embedder = load_embedder(onnx, "cpu")
    assert onnx_embedder.info.config_hash == torch_emb.meta["model"]["config_hash"]
    onnx_emb = embed_images(onnx_embedder, tiny_data / "query", progress=False)
    assert onnx_emb.paths == torch_emb.paths
    a, b = torch.from_numpy(torch_emb.descriptors), torch.from_numpy(onnx_emb.descriptors)
    assert float((a - b).abs().max()) <= MAX_ABS_DIFF
    assert float(F.cosine_similarity(a.double(), b.double(), dim=1).min()) >= MIN_COSINE


# ---------------------------------------------------------------------------------------------- search
def test_exact_topk_equals_a_brute_force_sort():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((1000, 24)).astype(np.float32)
    g[500] = g[10]  # a tie: the lower gallery index ranks first
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = np.concatenate([g[[10]], rng.standard_normal((40, 24)).astype(np.float32)])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    dist = 1.0 - q.astype(np.float64) @ g.T.astype(np.float64)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :7]
    d, i = exact_topk(q, g, 7, gallery_chunk=97, query_chunk=8)
    assert i.shape == (41, 7) and np.array_equal(i, expected)
    assert list(i[0, :2]) == [10, 500]
    np.testing.assert_allclose(d, np.take_along_axis(dist, expected, axis=1), atol=1e-6)
    _, i_all = exact_topk(q, g, 5000)
    assert i_all.shape == (41, 1000) and np.array_equal(np.sort(i_all, axis=1), np.tile(np.arange(1000), (41, 1)))


def test_search_ranks_equal_brute_force_and_marks_the_protocol(run, tiny_data, tmp_path):
    gallery_dir = tmp_path / "gallery"
    shutil.copytree(tiny_data / "bounding_box_test", gallery_dir)
    query = sorted((tiny_data / "query").iterdir())[0]
    shutil.copy(query, gallery_dir / query.name)  # the query itself: same identity, same camera: junk
    result = search(run, tiny_data / "query", gallery_dir, top=8, device="cpu", progress=False)
    q, g = result.query.descriptors.astype(np.float64), result.gallery.descriptors.astype(np.float64)
    dist = 1.0 - q @ g.T
    assert np.array_equal(result.indices, np.argsort(dist, axis=1, kind="stable")[:, :8])
    first = result.query.paths.index(query.name)
    assert result.gallery.paths[result.indices[first, 0]] == query.name and result.junk[first, 0]
    pids, cams = zip(*(parse_market_name(Path(p).name) for p in result.gallery.paths), strict=True)
    g_pids, g_cams = np.array(pids), np.array(cams)
    q_pids = np.array([parse_market_name(p)[0] for p in result.query.paths])
    q_cams = np.array([parse_market_name(p)[1] for p in result.query.paths])
    assert result.labelled.all()
    for i in range(len(q_pids)):
        ranked = result.indices[i]
        same = g_pids[ranked] == q_pids[i]
        assert np.array_equal(result.match[i], same & (g_cams[ranked] != q_cams[i]) & (g_pids[ranked] != -1))
        assert np.array_equal(result.junk[i], (same & (g_cams[ranked] == q_cams[i])) | (g_pids[ranked] == -1))
    expected = reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams)["ap_per_query"]
    np.testing.assert_allclose(result.ap, expected, atol=1e-9, equal_nan=True)


def test_protocol_marks_on_crafted_labels():
    g_pids, g_cams = np.array([7, 7, 7, -1, 0, 8]), np.array([0, 1, 2, 1, 0, 1])
    match, junk = protocol_marks(7, 0, g_pids, g_cams)
    assert match.tolist() == [False, True, True, False, False, False]
    assert junk.tolist() == [True, False, False, True, False, False]


def test_unlabelled_names_get_no_marks_and_no_ap(run, tiny_data, tmp_path):
    folder = tmp_path / "own"
    folder.mkdir()
    for n, p in enumerate(sorted((tiny_data / "query").iterdir())[:2]):
        shutil.copy(p, folder / f"crop {n}.png.jpg")
    result = search(run, folder, tiny_data / "bounding_box_test", top=3, device="cpu", progress=False)
    assert not result.labelled.any() and not result.match.any() and not result.junk.any()
    assert np.isnan(result.ap).all()


def test_search_from_the_command_line_prints_and_writes_a_page(run, gallery, tiny_data, tmp_path, capsys):
    page = tmp_path / "page" / "search.html"
    args = ["search", "--model", str(run), "--query", str(tiny_data / "query"), "--gallery", str(gallery)]
    assert main([*args, "--top", "4", "--html", str(page), "--device", "cpu", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    queries = sorted(p.name for p in (tiny_data / "query").iterdir())
    assert len(lines) == 5 * len(queries) and lines[0].startswith(queries[0]) and " AP " in lines[0]
    assert re.fullmatch(r"\s+1\s+\d\.\d{4}\s+\S+\.jpg(\s+(match|junk))?", lines[1])
    assert page.is_file()


# ---------------------------------------------------------------------------------------------- refusals
def test_refusals_are_one_line_and_exit_code_2(run, gallery, tiny_data, tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"garbage")
    other = load_embeddings(gallery)
    other.meta["model"] = {**other.meta["model"], "config_hash": "0123456789ab", "source": "another/run"}
    foreign = save_embeddings(other, tmp_path / "foreign.npz")
    not_embeddings = tmp_path / "mine.npz"
    not_embeddings.write_bytes(b"my own file")
    search_args = ["search", "--model", str(run), "--device", "cpu", "--html", str(tmp_path / "s.html")]
    query = str(tiny_data / "query")
    cases = {
        ("embed", "--model", str(run), "--images", str(empty), "--out", str(tmp_path / "e.npz")): "holds no image",
        (*search_args, "--query", str(empty), "--gallery", str(gallery)): "holds no image",
        (*search_args, "--query", str(notes), "--gallery", str(gallery)): "notes.txt is not an image",
        (*search_args, "--query", str(broken), "--gallery", str(gallery)): "none of the 1 images",
        (*search_args, "--query", query, "--gallery", str(foreign)): "was embedded by another model",
        (*search_args, "--query", query, "--gallery", str(gallery), "--top", "0"): "--top must be at least 1",
        ("embed", "--model", str(run), "--images", query, "--out", str(not_embeddings)): "refusing to replace it",
    }
    for argv, message in cases.items():
        caplog.clear()
        assert main(list(argv)) == 2, argv
        errors = _errors(caplog)
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], (argv, errors)
    assert not_embeddings.read_bytes() == b"my own file"
    caplog.clear()
    assert main([*search_args, "--query", query, "--gallery", str(foreign), "--force", "--no-progress"]) == 0
    assert "compared anyway (--force)" in caplog.text


# ---------------------------------------------------------------------------------------------- the page
class _Page(HTMLParser):
    """The rows of a ranked-list page: per ``div.row``, the classes of its figures and their img sources."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self.figure = ""
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div" and a.get("class") == "row":
            self.rows.append([])
        elif tag == "figure":
            self.figure = a.get("class") or ""
        elif tag == "img":
            self.rows[-1].append((self.figure, a.get("src") or ""))
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(str(a[key]))


def _search_page(run, tiny_data, tmp_path) -> tuple[Path, object]:
    gallery_dir = tmp_path / "gallery"
    shutil.copytree(tiny_data / "bounding_box_test", gallery_dir)
    query = sorted((tiny_data / "query").iterdir())[0]
    shutil.copy(query, gallery_dir / query.name)
    result = search(run, tiny_data / "query", gallery_dir, top=5, device="cpu", progress=False)
    return ranked_page.search_page(result, tmp_path / "out" / "search.html"), result


def test_the_page_is_self_contained_and_marks_each_item(run, tiny_data, tmp_path):
    page, result = _search_page(run, tiny_data, tmp_path)
    parser = _Page()
    parser.feed(page.read_text())
    assert len(parser.rows) == len(result.query.paths) and all(len(row) == 6 for row in parser.rows)
    assert all(src.startswith("data:image/") for src in parser.links)  # nothing to fetch, nothing linked
    for i, row in enumerate(parser.rows):
        assert row[0][0] == "query"
        marks = zip(result.match[i], result.junk[i], strict=True)
        expected = ["match" if m else "junk" if j else "miss" for m, j in marks]
        assert [cls for cls, _ in row[1:]] == expected
    assert any("junk" in (cls for cls, _ in row) for row in parser.rows)
    assert "AP " in page.read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH: the page is not rendered")
def test_chromium_loads_every_thumbnail(run, tiny_data, tmp_path):
    page, result = _search_page(run, tiny_data, tmp_path)
    probe = page.with_name("probe.html")
    script = (
        "<script>window.addEventListener('load', () => { const w = [...document.images].map(i => i.naturalWidth);"
        "const p = document.createElement('pre'); p.id = 'widths'; p.textContent = JSON.stringify(w);"
        "document.body.appendChild(p); });</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    argv = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    out = subprocess.run(
        [*argv, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )
    found = re.search(r'<pre id="widths">(.*?)</pre>', out.stdout)
    assert found, out.stderr[-2000:]
    widths = json.loads(found.group(1))
    assert len(widths) == 6 * len(result.query.paths) and min(widths) > 0


# ---------------------------------------------------------------------------------------------- evaluate --visrank
def test_select_queries_orders_by_ap():
    ap = np.array([0.5, np.nan, 0.1, 0.9, 0.1])
    assert select_queries(ap, "worst", 3).tolist() == [2, 4, 0]
    assert select_queries(ap, "best", 2).tolist() == [3, 0]
    assert sorted(select_queries(ap, "random", 10).tolist()) == [0, 2, 3, 4]


def test_evaluate_visrank_draws_the_worst_queries(run, tmp_path, caplog):
    result = evaluate_run(run, device="cpu", visrank=3, order="worst", visrank_queries=4)
    ranked = result["ranked"]
    assert len(ranked.queries) == 4 and ranked.matches.shape == (4, 3) and list(ranked.ap) == sorted(ranked.ap)
    out = tmp_path / "record.json"
    with caplog.at_level(logging.INFO):
        assert main(["evaluate", "--run", str(run), "--device", "cpu", "--visrank", "3", "--out", str(out)]) == 0
    html, png = out.with_name("record-ranked-worst.html"), out.with_name("record-ranked-worst.png")
    assert html.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ranked" not in json.loads(out.read_text())
    parser = _Page()
    parser.feed(html.read_text())
    assert len(parser.rows) == min(20, result["num_valid_queries"])
    caplog.clear()
    assert main(["evaluate", "--run", str(run), "--visrank", "3", "--rerank", "--out", str(out)]) == 2
    assert "not with --rerank" in _errors(caplog)[0]
