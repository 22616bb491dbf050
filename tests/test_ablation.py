"""The ablation grid: the paper's rows, deduplication, and reuse of recorded runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from canlib.config import config_hash
from canlib.engine.record import git_commit
from canlib.lab import grid as ablation
from canlib.lab.analysis import judge_claims, summarize
from canlib.lab.grid import run_grid
from canlib.lab.records import load_records
from canlib.lab.rows import ablation_rows, resolve

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_rows_cover_tables_2_to_4():
    rows = ablation_rows()
    assert [r.table for r in rows].count("Table 2") == 5
    assert [r.table for r in rows].count("Table 3") == 5
    assert [r.table for r in rows].count("Table 4") == 4
    assert all("model.collaborative=false" in r.overrides for r in rows if r.table == "Table 2")
    # Tables 2-3 were trained with Table 4's "CE + triplet" loss, so Table 3's Part-1,3,5,7 with CA
    # is Table 4's second row: one resolved configuration, trained once.
    t3 = next(r for r in rows if r.table == "Table 3" and r.label == "Part-1,3,5,7")
    t4 = {r.label: r for r in rows if r.table == "Table 4"}
    assert config_hash(resolve(SMOKE, t3, 0, "/d")) == config_hash(resolve(SMOKE, t4["CE + triplet"], 0, "/d"))
    assert config_hash(resolve(SMOKE, t3, 0, "/d")) != config_hash(
        resolve(SMOKE, t4["CE + triplet + center (global & local)"], 0, "/d")
    )
    ce_only = resolve(SMOKE, t4["CE"], 0, "/d")
    assert ce_only["loss"]["triplet_weight"] == 0 and ce_only["loss"]["center_weight"] == 0


def test_tables_2_and_3_use_the_loss_of_table_4s_second_row():
    from canlib import paper

    assert paper.ablation_loss_row() == "CE + triplet"
    assert paper.ablation_loss() == paper.LOSS_ROWS["CE + triplet"]
    for row in ablation_rows(["Table 2", "Table 3"]):
        loss = resolve(SMOKE, row, 0, "/d")["loss"]
        assert {k: loss[k] for k in paper.LOSS_ROWS["CE + triplet"]} == paper.LOSS_ROWS["CE + triplet"], row
        assert loss["center_weight"] == 0 and loss["clustering_features"] == "global"


def test_the_ablation_loss_is_derived_from_the_numbers(monkeypatch):
    from canlib import paper

    # If Table 3's final row equalled another Table 4 row, the derivation would follow the numbers.
    monkeypatch.setitem(paper.TABLE3, paper.FINAL_PATTERN, {**paper.TABLE4["CE"], "rank10": 99.0})
    assert paper.ablation_loss_row() == "CE"
    monkeypatch.setitem(paper.TABLE3, paper.FINAL_PATTERN, {"mAP": 1.0, "rank1": 2.0})
    with pytest.raises(ValueError, match="exactly one Table 4 row"):
        paper.ablation_loss_row()


def test_grid_trains_each_distinct_run_once_and_reuses_it(tiny_data, tmp_path, monkeypatch):
    calls = []
    real = ablation._train_subprocess
    monkeypatch.setattr(ablation, "_train_subprocess", lambda cfg, *a: (calls.append(cfg), real(cfg, *a)))
    rows = [r for r in ablation_rows(["Table 3", "Table 4"]) if r.label in ("Part-1,3,5,7", "CE + triplet")]
    kwargs = {
        "profile": SMOKE,
        "data_root": tiny_data,
        "rows": rows,
        "seeds": (0,),
        "results_dir": tmp_path / "results",
        "runs_dir": tmp_path / "runs",
    }
    records = run_grid(**kwargs)
    assert len(records) == 2 and len(calls) == 1 and records[0]["run"] == records[1]["run"]
    recorded = tmp_path / "results" / records[0]["run"]
    assert sorted(p.name for p in recorded.iterdir()) == ["config.yaml", "log.jsonl", "metrics.json", "run.json"]
    assert run_grid(**kwargs) == records and len(calls) == 1  # reused, not retrained
    # Reuse goes by the configuration hash alone: whether the checked-out code still trains a
    # recorded configuration as before is the training digest's job (tests/test_digest.py).
    assert records[0]["commit"] == json.loads((recorded / "run.json").read_text())["git"]["commit"]
    shutil.rmtree(recorded)  # a lost record: the finished working folder is resumed, not retrained
    train_log = tmp_path / "runs" / f"{records[0]['run']}.log"
    assert run_grid(**kwargs) == records and len(calls) == 2 and "resumed from" in train_log.read_text()
    assert run_grid(**kwargs, force=True) == records and len(calls) == 3  # force: retrained from scratch
    assert "resumed from" not in train_log.read_text()


def test_summarize_formats_one_and_several_seeds():
    base = {"table": "Table 4", "row": "CE", "rank1": 0.5, "mINP": 0.1}
    one = summarize([{**base, "seed": 0, "mAP": 0.25}]).table
    assert one.loc[("Table 4", "CE"), "mAP"] == "25.0" and one.loc[("Table 4", "CE"), "seeds"] == 1
    assert one.loc[("Table 4", "CE"), "paper mAP"] == 87.0
    three, mean, std, seeds = summarize([{**base, "seed": s, "mAP": m} for s, m in enumerate((0.2, 0.3, 0.4))])
    assert seeds.loc[("Table 4", "CE")] == 3
    assert three.loc[("Table 4", "CE"), "mAP"] == "30.0 ± 10.0"
    assert (
        abs(mean.loc[("Table 4", "CE"), "mAP"] - 30.0) < 1e-9 and abs(std.loc[("Table 4", "CE"), "mAP"] - 10.0) < 1e-9
    )


def test_load_records_reads_without_training(tiny_data, tmp_path):
    rows = [r for r in ablation_rows(["Table 4"]) if r.label == "CE"]
    kwargs = {"rows": rows, "seeds": (0,), "results_dir": tmp_path / "results"}
    assert load_records(SMOKE, tiny_data, **kwargs) == []
    run_grid(SMOKE, tiny_data, runs_dir=tmp_path / "runs", **kwargs)
    (record,) = load_records(SMOKE, tiny_data, **kwargs)
    assert record["row"] == "CE" and 0 <= record["mAP"] <= 1
    assert (record["commit"], record["dirty"]) == tuple(git_commit().values())  # trained by this checkout


def _records(values_by_row: dict[tuple[str, str], list[float]]) -> list[dict]:
    return [
        {"table": t, "row": r, "seed": s, "run": f"{t}{r}{s}", "mAP": v, "rank1": v}
        for (t, r), values in values_by_row.items()
        for s, v in enumerate(values)
    ]


def test_paper_claims_hold_on_the_papers_numbers_and_are_judged_from_records():
    from canlib import paper
    from canlib.paper import paper_claims

    claims = paper_claims()
    assert len(claims) == 8 and {c.kind for c in claims} == {"greater", "decreasing", "pairwise", "best"}
    # Records that copy the paper's means (three seeds at +-0.02 points): every claim holds, clearly.
    published = {"Table 2": paper.TABLE2, "Table 3": paper.TABLE3, "Table 4": paper.TABLE4}
    copy = {
        (t, r): [v["mAP"] / 100 + d for d in (-0.0002, 0.0, 0.0002)]
        for t, rows in published.items()
        for r, v in rows.items()
    }
    judged = judge_claims(_records(copy))
    assert (judged["paper agrees?"] == "yes").all() and (judged["verdict"] == "holds").all()
    assert (judged["min seeds"] == 3).all() and (judged["min t"] > 3).all()
    assert judged.loc[0, "proxy mAP %"] == "86.6 vs 83.9"

    # Reverse Table 4's CE and CE + triplet: that claim fails with a negative t; the others are unaffected.
    t4 = list(paper.TABLE4)
    copy[("Table 4", t4[0])], copy[("Table 4", t4[1])] = copy[("Table 4", t4[1])], copy[("Table 4", t4[0])]
    judged = judge_claims(_records(copy)).set_index("claim")
    triplet = next(c.text for c in claims if "triplet loss helps" in c.text)
    assert judged.loc[triplet, "verdict"] == "contradicted" and judged.loc[triplet, "min t"] < -3
    assert (
        judged.drop(index=[triplet, next(c.text for c in claims if "center loss" in c.text)])["verdict"] == "holds"
    ).all()


def test_judge_claims_without_records_or_with_one_seed():
    empty = judge_claims([])
    assert (empty["verdict"] == "not run").all() and (empty["min seeds"] == 0).all()
    one = judge_claims(_records({("Table 2", "Part-1,2,3"): [0.5], ("Table 2", "Part-1,3,5,7,9"): [0.4]}))
    assert one.loc[0, "means agree?"] == "yes" and one.loc[0, "verdict"] == "inconclusive"  # one seed: no interval
    assert one.loc[0, "min t"] != one.loc[0, "min t"]  # NaN
    assert (one.loc[1:, "verdict"] == "not run").all()


def test_a_run_trained_again_must_match_its_record(tmp_path):
    # exactly on the CPU kind (model and vector capability) that trained the record; within
    # RETRAIN_TOLERANCE on another, and on a record that does not name its capability
    from canlib.lab.grid import RETRAIN_TOLERANCE, _check_against_record

    def run(name, cpu, m_ap, capability="AVX2"):
        folder = tmp_path / name
        folder.mkdir()
        metrics = dict.fromkeys(ablation.METRIC_KEYS, 0.5) | {"mAP": m_ap}
        machine = {"cpu": cpu} | ({"cpu_capability": capability} if capability else {})
        (folder / "run.json").write_text(json.dumps({"machine": machine}))
        (folder / "metrics.json").write_text(json.dumps(metrics))
        return folder

    record = run("record", "AMD EPYC", 0.70)
    _check_against_record(run("same", "AMD EPYC", 0.70), record)
    with pytest.raises(RuntimeError, match="differs from its record"):
        _check_against_record(run("same-off", "AMD EPYC", 0.7001), record)
    _check_against_record(run("other", "Intel Xeon", 0.70 + RETRAIN_TOLERANCE / 2), record)
    with pytest.raises(RuntimeError, match="differs from its record"):
        _check_against_record(run("other-off", "Intel Xeon", 0.70 + 2 * RETRAIN_TOLERANCE), record)
    # one model name, two capabilities (AMD EPYC parts with and without AVX-512): not the same kind
    _check_against_record(run("avx512", "AMD EPYC", 0.7001, "AVX512"), record)
    _check_against_record(run("unknown", "AMD EPYC", 0.7001), run("old-record", "AMD EPYC", 0.70, None))
