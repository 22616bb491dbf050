"""The ablation grid: the paper's rows, deduplication, and reuse of recorded runs."""

from __future__ import annotations

import json
from pathlib import Path

from canlib.config import config_hash
from canlib.engine import ablation
from canlib.engine.ablation import Row, ablation_rows, resolve, run_grid, summarize

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_rows_cover_tables_2_to_4():
    rows = ablation_rows()
    assert [r.table for r in rows].count("Table 2") == 5
    assert [r.table for r in rows].count("Table 3") == 5
    assert [r.table for r in rows].count("Table 4") == 4
    assert all("model.collaborative=false" in r.overrides for r in rows if r.table == "Table 2")
    # Table 4's last row is Table 3's Part-1,3,5,7 with CA: the same resolved configuration.
    t3 = next(r for r in rows if r.table == "Table 3" and r.label == "Part-1,3,5,7")
    t4 = next(r for r in rows if r.table == "Table 4" and "local" in r.label)
    assert config_hash(resolve(SMOKE, t3, 0, "/d")) == config_hash(resolve(SMOKE, t4, 0, "/d"))
    ce_only = resolve(SMOKE, next(r for r in rows if r.label == "CE"), 0, "/d")
    assert ce_only["loss"]["triplet_weight"] == 0 and ce_only["loss"]["center_weight"] == 0


def test_grid_trains_each_distinct_run_once_and_reuses_it(tiny_data, tmp_path, monkeypatch):
    calls = []
    real = ablation._train_subprocess
    monkeypatch.setattr(ablation, "_train_subprocess", lambda cfg, *a: (calls.append(cfg), real(cfg, *a)))
    rows = [r for r in ablation_rows(["Table 3", "Table 4"]) if r.label in ("Part-1,3,5,7", "CE + triplet + center (global & local)")]
    kwargs = dict(profile=SMOKE, data_root=tiny_data, rows=rows, seeds=(0,),
                  results_dir=tmp_path / "results", runs_dir=tmp_path / "runs")
    records = run_grid(**kwargs)
    assert len(records) == 2 and len(calls) == 1 and records[0]["run"] == records[1]["run"]
    recorded = tmp_path / "results" / records[0]["run"]
    assert sorted(p.name for p in recorded.iterdir()) == ["config.yaml", "log.jsonl", "metrics.json", "run.json"]
    assert run_grid(**kwargs) == records and len(calls) == 1  # reused, not retrained
    # A run recorded by different code is not reused.
    run_json = recorded / "run.json"
    record = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**record, "code_fingerprint": "000000000000"}))
    run_grid(**kwargs)
    assert len(calls) == 2
    # ... and its working folder, when trained by other code, is discarded rather than resumed.
    train_log = tmp_path / "runs" / records[0]["run"] / "train.log"
    assert "resumed from" in train_log.read_text()  # same code: the finished checkpoint is reused
    for folder in (recorded, tmp_path / "runs" / records[0]["run"]):
        run_json = folder / "run.json"
        run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "code_fingerprint": "000000000000"}))
    assert run_grid(**kwargs) == records and len(calls) == 3
    assert "resumed from" not in train_log.read_text()


def test_summarize_formats_one_and_several_seeds():
    base = {"table": "Table 4", "row": "CE", "rank1": 0.5, "mINP": 0.1}
    one, mean, std = summarize([{**base, "seed": 0, "mAP": 0.25}])
    assert one.loc[("Table 4", "CE"), "mAP"] == "25.0" and one.loc[("Table 4", "CE"), "seeds"] == 1
    assert one.loc[("Table 4", "CE"), "paper mAP"] == 87.0
    three, mean, std = summarize([{**base, "seed": s, "mAP": m} for s, m in enumerate((0.2, 0.3, 0.4))])
    assert three.loc[("Table 4", "CE"), "mAP"] == "30.0 ± 10.0"
    assert abs(mean.loc[("Table 4", "CE"), "mAP"] - 30.0) < 1e-9 and abs(std.loc[("Table 4", "CE"), "mAP"] - 10.0) < 1e-9


def test_load_records_reads_without_training(tiny_data, tmp_path):
    rows = [r for r in ablation_rows(["Table 4"]) if r.label == "CE"]
    kwargs = dict(rows=rows, seeds=(0,), results_dir=tmp_path / "results")
    assert ablation.load_records(SMOKE, tiny_data, **kwargs) == []
    run_grid(SMOKE, tiny_data, runs_dir=tmp_path / "runs", **kwargs)
    (record,) = ablation.load_records(SMOKE, tiny_data, **kwargs)
    assert record["current"] and record["row"] == "CE" and 0 <= record["mAP"] <= 1
