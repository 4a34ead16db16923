"""The retrieval judge on hand-made logs whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datamodules.rewrite_feedback import parse_rewriting_record
from lightning_modules.retrieval_judge import RetrievalJudge


def source(url: str, title: str, snippet: str = "") -> dict:
    return {"url": url, "title": title, "snippet": snippet}


def app_record(original: str, selected: list[str], candidates: dict[str, list]) -> dict:
    return {
        "original_query": original,
        "selected_sources": selected,
        "query_source_mapping": {
            name: {"query": name, "sources": sources} for name, sources in candidates.items()
        },
    }


SCOOTERS = app_record(
    "scooter brands",
    ["u/vespa", "u/piaggio"],
    {
        "scooter brands": [
            source("u/vespa", "Vespa scooter", "the classic Italian scooter brand"),
            source("u/shoes", "Skate shoes", "shoes for skating"),
        ],
        "italian scooter makers": [
            source("u/piaggio", "Piaggio", "Italian maker of the Vespa scooter"),
            "u/vespa",  # a bare url: its text comes from the first mention
        ],
    },
)
GARDEN = app_record(
    "tomato garden",
    ["u/tomato"],
    {
        "tomato garden": [
            source("u/tomato", "Growing tomatoes", "tomato plants in a home garden"),
            source("u/roses", "Roses", "pruning roses in the garden"),
        ]
    },
)


def records():
    return [parse_rewriting_record(raw, "log.json", i) for i, raw in enumerate([SCOOTERS, GARDEN])]


def test_the_parser_keeps_each_sources_text_once_per_url() -> None:
    scooters = records()[0]
    by_url = {s.url: s for s in scooters.documents}
    assert list(by_url) == ["u/vespa", "u/piaggio", "u/shoes"]  # first mentioned first
    assert by_url["u/vespa"].title == "Vespa scooter"  # not the bare url's empty text


def test_one_index_over_the_whole_log_and_bm25_finds_the_matching_sources() -> None:
    judge = RetrievalJudge(records(), k=2)
    assert len(judge) == 5
    assert judge.retrieve(["tomato"])[0] == ["u/tomato"]  # the only source that says tomato
    assert judge.retrieve(["pruning roses"], k=1) == [["u/roses"]]
    assert judge.retrieve(["the of and"]) == [[]]  # stop words only: nothing


def test_coverage_is_the_share_of_selected_sources_in_the_top_k() -> None:
    scooters, garden = records()
    judge = RetrievalJudge(records(), k=10)
    # "italian" is in Piaggio's and Vespa's text only: both picks, nothing else
    assert judge.coverage("italian", scooters) == 1.0
    # "piaggio maker" matches Piaggio alone: one pick of two
    assert judge.coverage("piaggio maker", scooters) == 0.5
    assert judge.coverage("skate shoes", scooters) == 0.0
    assert judge.coverage("tomato", garden) == 1.0
    # k = 1: only the best source counts
    assert judge.coverage("vespa", scooters, k=1) == 0.5


def test_union_coverage_counts_a_pick_found_by_any_query() -> None:
    scooters, _ = records()
    judge = RetrievalJudge(records())
    assert judge.union_coverage(["piaggio maker", "skate shoes"], scooters) == 0.5
    assert judge.union_coverage(["piaggio maker", "classic vespa"], scooters) == 1.0
    got = judge.coverages([["piaggio maker"], ["tomato", "roses"]], records())
    np.testing.assert_array_equal(got, [0.5, 1.0])
    # several query sets for one record at once: the same values, each query retrieved once
    sets = [["piaggio maker", "skate shoes"], ["piaggio maker", "classic vespa"], ["skate shoes"]]
    calls = []
    retrieve = judge.retrieve
    judge.retrieve = lambda queries, k=None: calls.append(list(queries)) or retrieve(queries, k)
    assert judge.union_coverages(sets, scooters) == [0.5, 1.0, 0.0]
    assert calls == [["piaggio maker", "skate shoes", "classic vespa"]]


def test_a_record_without_picks_has_no_coverage_and_bad_input_is_refused() -> None:
    empty = parse_rewriting_record(
        app_record("q", [], {"q": [source("u/a", "alpha")]}), "log.json", 0
    )
    judge = RetrievalJudge([empty])
    assert math.isnan(judge.coverage("alpha", empty))
    with pytest.raises(ValueError, match="k must be"):
        RetrievalJudge([empty], k=0)
    with pytest.raises(ValueError, match="query lists"):
        judge.coverages([["a"], ["b"]], [empty])
    bare = parse_rewriting_record(app_record("q", [], {"q": ["u/a"]}), "log.json", 0)
    assert judge.retrieve(["alpha"]) == [["u/a"]]
    with pytest.raises(ValueError, match="no source with a title or snippet"):
        RetrievalJudge([bare])  # bare urls only: no text to retrieve by
