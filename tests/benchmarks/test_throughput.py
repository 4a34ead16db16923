"""benchmarks/throughput.py: both sides run in one invocation, on the same pairs and batches
(with a tiny model here; the figures that count come from the packaged MiniLM)."""

from __future__ import annotations

import json

import pytest

from benchmarks.throughput import parse_args, prediction_pairs, reranker_data, run, training_pairs
from datamodules.split import normalise_query

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow


def test_both_sides_read_the_same_lists(tiny_backbone):
    args = parse_args(["--backbone", str(tiny_backbone)])
    data = reranker_data(args)
    pairs = training_pairs(args)
    # Every training list of our data module, and nothing else, feeds their trainer.
    assert {normalise_query(q) for q, _, _ in pairs} == {
        normalise_query(r.query) for r in data.train_records
    }
    # Each list: its judged sources, sampled down to max_docs_per_query.
    cap = data.max_docs_per_query
    assert len(pairs) == sum(min(sum(r.judged), cap) for r in data.train_records)
    per_query = {}
    for query, _, grade in pairs:
        per_query.setdefault(query, []).append(grade)
    assert all(len(set(g)) > 1 for g in per_query.values())  # lists that can teach
    predicted = reranker_data(args, predict=True).predict_records
    first_two = prediction_pairs(args, 0, 2)
    assert len(first_two) == len(predicted[0].sources) + len(predicted[1].sources)
    assert first_two[0][0] == predicted[0].query


def test_throughput_script_compares_each_task_on_equal_work(tmp_path, tiny_backbone, capsys):
    out = tmp_path / "throughput.json"
    code = run(
        [
            "--backbone",
            str(tiny_backbone),
            "--warmup",
            "1",
            "--train-batches",
            "2",
            "--predict-batches",
            "2",
            "--max-length",
            "64",
            "--levers",
            "gradient_checkpointing",
            "--precisions",
            "32-true",
            "--output-json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    machine = result["machine"]
    assert machine["sentence-transformers"] and machine["cores"] >= 1
    assert f"{machine['cpu_kernels']} kernels" in machine["cpu_capability"]  # named with figures
    assert machine["matmul_gflops"]["32-true"] > 0
    comparisons = {c["task"]: c for c in result["comparisons"]}
    assert set(comparisons) == {"training", "inference", "rewriter training"}
    # both sides at the same precision
    assert all(c["precision"] == "32-true" for c in result["comparisons"])
    levers = comparisons["training"]["rows"].pop(1)  # our fit with the lever on, 2nd row
    assert levers["phase"] == "ours reranker fit (32-true, gradient_checkpointing)"
    assert levers["pairs"] == comparisons["training"]["rows"][0]["pairs"]  # the same batches
    for comparison in comparisons.values():
        ours, theirs = comparison["rows"]
        assert ours["phase"].startswith("ours") and not theirs["phase"].startswith("ours")
        assert "32-true" in ours["phase"] and "float32" in theirs["phase"]
        if comparison["task"] != "rewriter training":  # model FLOP/s from real tokens
            assert comparison["tokens_per_pair"] > 2
            for row in (ours, theirs):
                assert row["model_gflops"] > 0 and 0 < row["share_of_matmul_peak"]
        assert ours["batches_timed"] == 2 and ours["pairs_per_second"] > 0
        assert theirs["pairs_per_second"] > 0
        expected = round(ours["pairs_per_second"] / theirs["pairs_per_second"], 2)
        assert comparison["ratio"] == expected
    training = comparisons["training"]
    assert training["rows"][1]["batches_timed"] == 2
    mean_pairs = training["rows"][0]["pairs"] / training["rows"][0]["batches_timed"]
    assert training["pairs_per_batch"]["theirs"] == max(1, round(mean_pairs))
    inference = comparisons["inference"]
    assert inference["pairs_timed"]["ours"] == inference["pairs_timed"]["theirs"] > 0
    printed = capsys.readouterr().out
    ratio = comparisons["training"]["ratio"]
    assert f"training (32-true, both sides): ours / theirs = {ratio}x" in printed
    ratio = comparisons["inference"]["ratio"]
    assert f"inference (32-true, both sides): ours / theirs = {ratio}x" in printed
