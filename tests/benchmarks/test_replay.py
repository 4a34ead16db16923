"""benchmarks/replay.py: the log cut in time order, and the whole loop on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import main
from benchmarks.replay import ordered_records, parse_args, plot, replay, write_chunks
from tests.conftest import point_loggers_at

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_records_are_ordered_by_time_or_kept_in_log_order(tmp_path, make_record):
    records = [make_record(i) for i in range(6)]
    for record, stamp in zip(records, ["05", "01", "03", "01", "02", "04"], strict=True):
        record["timestamp"] = f"2025-07-{stamp}T10:00:00"
    path = tmp_path / "log.json"
    path.write_text(json.dumps({"reranker_data": records}))
    ordered, how = ordered_records([str(path)])
    assert how == "timestamp"
    assert [r["query"] for r in ordered] == [records[i]["query"] for i in (1, 3, 4, 2, 5, 0)]
    records[2]["timestamp"] = None
    path.write_text(json.dumps({"reranker_data": records}))
    ordered, how = ordered_records([str(path)])
    assert how.startswith("log order") and ordered == records


def test_chunks_are_consecutive_and_cover_the_log(tmp_path, make_record):
    records = [dict(make_record(i), timestamp=None) for i in range(10)]
    paths = write_chunks(records, 3, tmp_path / "chunks")
    lines = [[json.loads(line) for line in p.read_text().splitlines()] for p in paths]
    assert [len(chunk) for chunk in lines] == [4, 3, 3]
    flat = [r for chunk in lines for r in chunk]
    assert [r["query"] for r in flat] == [r["query"] for r in records]
    stamps = [r["timestamp"] for r in flat]  # order-derived stand-ins, increasing
    assert stamps == sorted(stamps) and len(set(stamps)) == 10
    assert all(r["timestamp"] is None for r in records)  # the input is not modified
    with pytest.raises(ValueError):
        write_chunks(records[:2], 3, tmp_path / "few")


def test_replay_runs_the_loop_end_to_end(tmp_path, tiny_backbone, make_record):
    records = [
        make_record(i, n_sources=4 + i % 4, picks=(i % 3,)) | {"timestamp": None} for i in range(36)
    ]
    log = tmp_path / "log.json"
    log.write_text(json.dumps({"reranker_data": records}))
    before = log.read_bytes()
    config = main.resolved_config(REPO / "configs" / "reranker.yaml")
    point_loggers_at(config, tmp_path / "unused")
    config["model"]["init_args"].update(
        model_name_or_path=str(tiny_backbone),
        max_length=48,
        max_query_length=16,
        learning_rate=1e-3,
    )
    config["data"]["init_args"]["batch_size"] = 4
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))

    args = parse_args(
        [
            "--feedback",
            str(log),
            "--config",
            str(config_path),
            "--chunks",
            "3",
            "--max-epochs",
            "1",
            "--precision",
            "32-true",
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    result = replay(args)
    assert log.read_bytes() == before
    assert result["order"].startswith("log order") and result["records"] == 36
    steps = result["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["evaluated_on"] for s in steps] == ["chunk02.jsonl", "chunk03.jsonl"]
    assert [s["seen_records"] for s in steps] == [12, 24]
    for step in steps:
        for system in ("deployed", "base", "display"):
            assert 0.0 <= step[system]["ndcg@10"] <= 1.0
        report = tmp_path / "work" / "reports" / f"step{step['step']}" / "promotion_report.json"
        assert json.loads(report.read_text())["promoted"] == step["promoted"]
        if step["deployed_is_base"]:  # nothing promoted yet: the deployed model is the base
            assert step["deployed"] == step["base"]
    assert (tmp_path / "work" / "deployment").exists() == any(s["promoted"] for s in steps)
    plot(result, tmp_path / "replay.png")
    assert (tmp_path / "replay.png").stat().st_size > 0
