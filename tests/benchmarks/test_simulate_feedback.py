"""benchmarks/simulate_feedback.py end to end on a small labelled file: a new log, its oracle,
and a summary that reads the user model back out of the picks."""

from __future__ import annotations

import importlib.util
import json

import pytest

from datamodules.reranker_records import load_reranker_feedback
from tests.conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location(
    "simulate_feedback", REPO_ROOT / "benchmarks" / "simulate_feedback.py"
)
simulate_feedback = importlib.util.module_from_spec(spec)
spec.loader.exec_module(simulate_feedback)


WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
]


def labelled_file(path, n_lists=30):
    records = []
    for q in range(n_lists):
        sources = [
            {"title": "", "url": f"x://{q}/{i}", "snippet": f"topic {q} sentence {WORDS[i]}"}
            for i in range(10)
        ]
        positives = [sources[i]["url"] for i in (2, 7)]
        records.append(
            {
                "query": f"which {WORDS[7]}",
                "query_id": f"lab-{q}",
                "all_sources": sources,
                "positive_sources": positives,
            }
        )
    path.write_text(json.dumps({"reranker_data": records}))
    return path


def arguments(source, output, **options) -> list[str]:
    """The script's command line: ``--input source --output output`` plus ``--name value``."""
    argv = ["--input", str(source), "--query-id-prefix", "", "--output", str(output)]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def test_the_script_writes_a_log_and_its_oracle_and_never_overwrites(tmp_path, capsys):
    source = labelled_file(tmp_path / "labelled.json")
    out, oracle = tmp_path / "picks.json", tmp_path / "oracle.json"
    argv = arguments(
        source,
        out,
        display="file",
        eta=0,
        relevant_pick=1,
        irrelevant_pick=0,
        impressions=60,
        oracle_output=oracle,
    )
    report = simulate_feedback.main(argv)
    assert report["impressions"] == 60 and report["queries"] == 30
    assert report["share_of_picks_relevant"] == 1.0 and report["picks_per_impression"] == 2.0
    assert report["pick_rate_by_rank"][2] == 1.0 and report["pick_rate_by_rank"][0] == 0.0
    assert report["estimated_examination"]["estimate"] is None  # one order: nothing to harvest
    picks, _ = load_reranker_feedback(out)
    truth, _ = load_reranker_feedback(oracle)
    assert [r.grades for r in picks] == [r.grades for r in truth]  # no bias, no noise
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        simulate_feedback.main(argv)
    assert out.read_bytes() == before


def test_bm25_display_with_position_bias_moves_picks_up(tmp_path):
    source = labelled_file(tmp_path / "labelled.json")
    report = simulate_feedback.main(
        arguments(source, tmp_path / "p.json", display="bm25", eta=1, impressions=300)
    )
    rates = report["pick_rate_by_rank"]
    # the query names source 7's word: BM25 shows it first, so most picks sit at rank 1
    assert rates[0] > 0.8 and rates[0] > 3 * max(rates[1:])
