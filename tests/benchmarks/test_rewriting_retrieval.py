"""Tests of benchmarks/rewriting_retrieval.py: the session folds, the session bootstrap, and a
whole run on a tiny hand-made log with a tiny T5."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import load_benchmark, rewriting_app_record, write_rewriter_config

bench = load_benchmark("rewriting_retrieval")


def session_log(sessions: int = 12, per_session: int = 3) -> list[dict]:
    raws = []
    for i in range(sessions * per_session):
        raw = rewriting_app_record(i)
        raw["session_id"] = f"s{i // per_session}"
        raws.append(raw)
    return raws


def test_folds_keep_each_session_together_and_use_every_fold():
    raws = session_log(40, 3)
    folds = bench.session_folds(raws, 4)
    assert folds == bench.session_folds(raws, 4)  # deterministic
    by_session: dict[str, set[int]] = {}
    for raw, fold in zip(raws, folds, strict=True):
        by_session.setdefault(raw["session_id"], set()).add(fold)
    assert all(len(f) == 1 for f in by_session.values())
    assert set(folds) == {0, 1, 2, 3}
    # without a session id, a record is its own session (keyed by its query)
    assert bench.session_key({"original_query": "q"}) == "query:q"
    with pytest.raises(ValueError, match="at least 2 folds"):
        bench.session_folds(raws, 1)


def test_session_bootstrap_resamples_whole_sessions():
    # two sessions; within each, the system is better by the same amount on every record
    sessions = ["a", "a", "a", "b", "b"]
    baseline = np.array([0.1, 0.2, 0.3, 0.0, 0.5])
    system = baseline + np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    out = bench.session_bootstrap(sessions, baseline, system, n_resamples=200)
    assert out["delta"] == pytest.approx(0.2)
    # every resample of sessions has the same delta: the interval collapses onto it
    assert out["ci95"] == pytest.approx([0.2, 0.2])
    assert out["p_not_better"] == 0.0 and out["sessions"] == 2 and out["records"] == 5
    # a record that cannot be judged (NaN) is left out of both means
    baseline[1], system[1] = np.nan, np.nan
    out = bench.session_bootstrap(sessions, baseline, system, n_resamples=50)
    assert out["records"] == 4
    assert out["baseline"] == pytest.approx(np.mean([0.1, 0.3, 0.0, 0.5]), abs=1e-4)


def test_session_bootstrap_interval_against_a_numpy_cluster_bootstrap():
    rng = np.random.default_rng(3)
    sessions = [f"s{i // 2}" for i in range(20)]
    baseline, system = rng.random(20), rng.random(20)
    out = bench.session_bootstrap(sessions, baseline, system, n_resamples=2000, seed=7)
    # the same resampling drawn independently: sessions with replacement, records within
    draws = np.random.default_rng(7)
    diff = (system - baseline).reshape(10, 2)  # sessions of two consecutive records
    deltas = [diff[draws.integers(0, 10, 10)].mean() for _ in range(2000)]
    assert out["ci95"] == pytest.approx(list(np.percentile(deltas, [2.5, 97.5])), abs=1e-4)


@pytest.mark.slow
def test_a_whole_run_judges_every_held_out_record_once(tmp_path, tiny_backbone):
    raws = session_log(20, 2)  # enough sessions for every fold's fit to hold some out
    log_file = tmp_path / "log.json"
    log_file.write_text(json.dumps({bench.TOP_KEY: raws}))
    before = log_file.read_bytes()
    config = write_rewriter_config(tmp_path, tiny_backbone, [log_file])
    out = tmp_path / "result.json"
    argv = [
        "--log", str(log_file), "--config", str(config), "--folds", "2",
        "--recipes", "today", "--resamples", "100", "--n", "1", "3",
        "--fit-arg=--trainer.max_epochs", "--fit-arg=1", "--output-json", str(out),
    ]  # fmt: skip
    result = bench.main(argv)
    assert log_file.read_bytes() == before  # the user's log is never modified
    assert json.loads(out.read_text())["records"] == len(raws) == result["records"]
    assert sorted(result["per_record"]["index"]) == list(range(len(raws)))
    judged = result["recipes"]["today"]
    for method in ("beams", "novel_terms"):
        one, three = judged[f"{method}/union1"], judged[f"{method}/union3"]
        assert one["system"] == pytest.approx(judged[f"{method}/rewrite"]["system"])
        assert three["system"] >= one["system"] - 1e-9
        # with the original query among them, the queries find at least what it finds
        with_original = judged[f"{method}/original+union3"]
        assert with_original["delta"] >= -1e-9 and with_original["ci95"][0] >= -1e-9
    # the copy baseline and the mined target, recomputed here with the judge
    from datamodules.rewrite_feedback import parse_rewriting_record
    from lightning_modules.retrieval_judge import RetrievalJudge

    records = [parse_rewriting_record(r, "log", i) for i, r in enumerate(raws)]
    judge = RetrievalJudge(records)
    copy = np.mean([judge.coverage(r.original_query, r) for r in records])
    assert result["baselines"]["target vs copy"]["baseline"] == pytest.approx(copy, abs=1e-4)
    with pytest.raises(SystemExit):  # results are never replaced
        bench.parse_args(["--output-json", str(out)])
