"""benchmarks/data_scale.py: the synthetic log is valid app feedback and the measurement runs."""

from __future__ import annotations

import json

import pytest

from benchmarks.data_scale import run, write_log
from datamodules.reranker_records import load_reranker_feedback

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow


def test_synthetic_log_is_valid_app_feedback(tmp_path):
    log = write_log(tmp_path / "log.jsonl", 50)
    records, report = load_reranker_feedback(log)
    assert report.kept == 50 and report.n_dropped == 0
    assert all(len(r.sources) == 10 and sum(g > 0 for g in r.grades) == 3 for r in records)


def test_measurement_runs_in_a_child_process(tmp_path):
    out = tmp_path / "figures.json"
    assert (
        run(
            [
                "--records",
                "300",
                "--epochs",
                "2",
                "--work-dir",
                str(tmp_path),
                "--output-json",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    figures, baseline = results["table"], results["in-memory"]
    assert figures["records"] == 300 and figures["train_lists"] + figures["val_lists"] == 300
    # The table splits and filters exactly as the in-memory baseline does.
    assert (figures["train_lists"], figures["val_lists"]) == (
        baseline["train_lists"],
        baseline["val_lists"],
    )
    for measured in (figures, baseline):
        assert measured["first_batch_peak_gib"] >= measured["baseline_gib"] > 0
        assert [e["epoch"] for e in measured["epochs"]] == [0, 1]
    assert results["speedup"] == round(
        baseline["to_first_batch_seconds"] / max(figures["to_first_batch_seconds"], 0.01), 2
    )
