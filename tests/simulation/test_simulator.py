"""The user simulator: picks follow the user model exactly where it is deterministic, match its
examination curve where it is random, and come out as feedback the project's parser reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules.feedback import Source
from datamodules.reranker_records import load_reranker_feedback
from simulation.display import (
    BM25Order,
    FileOrder,
    RandomOrder,
    in_display_order,
    order_by_scores,
)
from simulation.labelled import LabelledList, load_labelled_lists
from simulation.simulator import impression_plan, simulate, with_true_labels, write_feedback
from simulation.users import PositionBasedUser


def make_list(n: int, relevant: set[int], name: str = "q", texts=None) -> LabelledList:
    sources = tuple(
        Source(title=f"title {i}", url=f"u{name}{i}", snippet=(texts or {}).get(i, f"text {i}"))
        for i in range(n)
    )
    grades = tuple(1.0 if i in relevant else 0.0 for i in range(n))
    return LabelledList(query=f"query {name}", query_id=name, sources=sources, grades=grades)


NOISELESS = dict(relevant_pick=1.0, irrelevant_pick=0.0)


def test_without_position_bias_or_noise_the_picks_are_the_relevant_sources() -> None:
    lists = [make_list(10, {0, 4, 9}, "a"), make_list(8, {2}, "b"), make_list(6, set(), "c")]
    user = PositionBasedUser(eta=0.0, max_picks=3, **NOISELESS)
    for record in simulate(lists, FileOrder(), user, n_impressions=9, seed=3):
        truth = record["simulation"]["true_relevance"]
        assert set(record["positive_sources"]) == {u for u, g in truth.items() if g > 0}
        assert set(record["negative_sources"]) == {u for u, g in truth.items() if g == 0}


def test_max_picks_caps_the_picks_top_to_bottom() -> None:
    user = PositionBasedUser(eta=0.0, max_picks=2, **NOISELESS)
    (record,) = simulate([make_list(10, {1, 3, 5, 7}, "a")], FileOrder(), user)
    assert record["positive_sources"] == ["ua1", "ua3"]
    assert record["simulation"]["picked_ranks"] == [2, 4]


def test_pick_rate_by_rank_follows_the_examination_curve() -> None:
    # Every source relevant and always picked when examined: rank k is picked with (1/k)^eta.
    eta, n, impressions = 1.0, 6, 4000
    user = PositionBasedUser(eta=eta, max_picks=n, **NOISELESS)
    records = simulate([make_list(n, set(range(n)))], FileOrder(), user, n_impressions=impressions)
    counts = np.zeros(n)
    for record in records:
        for rank in record["simulation"]["picked_ranks"]:
            counts[rank - 1] += 1
    expected = (1.0 / np.arange(1, n + 1)) ** eta
    tolerance = 4 * np.sqrt(expected * (1 - expected) / impressions) + 1e-9
    np.testing.assert_array_less(np.abs(counts / impressions - expected), tolerance)


def test_pick_probability_interpolates_noise_by_graded_gain() -> None:
    user = PositionBasedUser(relevant_pick=0.9, irrelevant_pick=0.1, max_grade=3)
    gains = (2.0 ** np.array([0, 1, 2, 3]) - 1) / 7
    np.testing.assert_allclose(user.pick_probability([0, 1, 2, 3]), 0.1 + 0.8 * gains)
    with pytest.raises(ValueError, match="eta"):
        PositionBasedUser(eta=-1)
    with pytest.raises(ValueError, match="relevant_pick"):
        PositionBasedUser(relevant_pick=1.5)


def test_simulation_is_deterministic_and_each_impression_is_its_own() -> None:
    lists = [make_list(10, {2, 5}, name) for name in "abcde"]
    user = PositionBasedUser(eta=1.0)
    first = simulate(lists, FileOrder(), user, n_impressions=12, seed=7)
    assert first == simulate(lists, FileOrder(), user, n_impressions=12, seed=7)
    # a longer run starts with the shorter one: an impression does not depend on the others
    longer = simulate(lists, FileOrder(), user, n_impressions=20, seed=7)
    assert longer[:12] == first
    other = simulate(lists, FileOrder(), user, n_impressions=12, seed=8)
    assert [r["positive_sources"] for r in other] != [r["positive_sources"] for r in first]


def test_impression_plan_cycles_through_every_list() -> None:
    plan = impression_plan(4, 10, seed=0)
    assert sorted(n for n, _ in plan[:4]) == [0, 1, 2, 3]
    assert [j for _, j in plan] == [0] * 4 + [1] * 4 + [2] * 2
    assert plan[4:8] == [(n, 1) for n, _ in plan[:4]]
    assert impression_plan(4, None, seed=0) == plan[:4]


def test_records_are_app_feedback_and_the_oracle_sees_the_true_grades(tmp_path) -> None:
    lists = [make_list(10, {0, 7}, "a"), make_list(5, {3}, "b")]
    records = simulate(lists, FileOrder(), PositionBasedUser(eta=2.0), n_impressions=4, shown=4)
    picks = write_feedback(records, tmp_path / "picks.json")
    oracle = write_feedback(with_true_labels(records), tmp_path / "oracle.json")
    parsed, report = load_reranker_feedback(picks)
    assert report.n_dropped == 0 and len(parsed) == 4
    assert all(len(r.sources) == 4 for r in parsed)  # only what was shown
    for record, raw in zip(parsed, records, strict=True):
        assert [g > 0 for g in record.grades] == [
            s["url"] in raw["positive_sources"] for s in raw["all_sources"]
        ]
    truth, _ = load_reranker_feedback(oracle)
    for record, raw in zip(truth, records, strict=True):
        expected = [raw["simulation"]["true_relevance"][s.url] for s in record.sources]
        assert list(record.grades) == expected
    with pytest.raises(FileExistsError):
        write_feedback(records, picks)
    assert json.loads(picks.read_text())["reranker_data"] == records  # untouched


def test_bm25_puts_the_sources_that_match_the_query_first() -> None:
    texts = {0: "weather in paris", 1: "the capital of france is paris", 2: "cooking pasta"}
    item = LabelledList(
        query="capital of france",
        query_id="x",
        sources=tuple(Source(title="", url=f"u{i}", snippet=t) for i, t in texts.items()),
        grades=(0.0, 1.0, 0.0),
    )
    assert BM25Order().order([item])[0][0] == 1


def test_orders_are_permutations_and_random_is_seeded() -> None:
    lists = [make_list(7, {1}, "a"), make_list(3, set(), "b")]
    for policy in (FileOrder(), RandomOrder(seed=1), BM25Order()):
        for item, order in zip(lists, policy.order(lists), strict=True):
            assert sorted(order) == list(range(len(item.sources)))
    assert RandomOrder(seed=1).order(lists) == RandomOrder(seed=1).order(lists)
    assert RandomOrder(seed=1).order(lists) != RandomOrder(seed=2).order(lists)
    assert order_by_scores([1.0, 3.0, 3.0, 0.0]) == [1, 2, 0, 3]  # ties keep the file's order


def test_lists_in_display_order_carry_their_grades_with_their_sources() -> None:
    item = make_list(4, {2}, "q")
    (shown,) = in_display_order([item], RandomOrder(seed=3))
    order = RandomOrder(seed=3).order([item])[0]
    assert shown.sources == tuple(item.sources[i] for i in order)
    assert shown.grades == tuple(item.grades[i] for i in order)
    assert shown.grades[shown.sources.index(item.sources[2])] == item.grades[2]
    assert (shown.query, shown.query_id) == (item.query, item.query_id)


def test_labelled_lists_read_the_shipped_wikiqa_labels() -> None:
    lists = load_labelled_lists("training_data/wikiqa_feedback.json", query_id_prefix="wikiqa-dev-")
    assert len(lists) == 296
    assert sum(item.has_relevant for item in lists) == 126  # WikiQA dev: 126 with a positive


def test_wikiqa_lists_read_one_split_with_the_converters_ids(tmp_path) -> None:
    from simulation.labelled import wikiqa_lists

    rows = [
        {"split": "train", "query": "q0", "candidates": [{"sentence": "a", "label": 1}]},
        {"split": "test", "query": "t0", "candidates": [{"sentence": "x", "label": 0}]},
        {
            "split": "test",
            "query": "t1",
            "candidates": [
                {"sentence": "y", "title": "Page", "label": 0},
                {"sentence": "z", "label": 1},
            ],
        },
    ]
    path = tmp_path / "wikiqa_grouped.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    lists = wikiqa_lists(path, "test")
    assert [item.query_id for item in lists] == ["wikiqa-test-0", "wikiqa-test-1"]
    assert lists[1].grades == (0.0, 1.0) and lists[1].sources[0].title == "Page"
    assert lists[1].sources[1].url == "wikiqa://test/1/1"


def test_intervention_harvesting_recovers_the_examination_curve() -> None:
    """Two display orders taking turns (the app's order changed): the pick rates of the same
    source at two ranks give the true (1/k)^eta back, whatever the sources' relevance."""
    from datamodules.propensity import estimate_propensities
    from datamodules.reranker_records import parse_reranker_record
    from simulation.display import Alternating

    lists = [make_list(6, {i % 6, (i + 2) % 6}, f"q{i}") for i in range(60)]
    user = PositionBasedUser(eta=1.0, relevant_pick=1.0, irrelevant_pick=0.0, max_picks=6)
    display = Alternating([FileOrder(), RandomOrder(seed=1), RandomOrder(seed=2)])
    raw = simulate(lists, display, user, n_impressions=60 * 60, seed=0)
    records = [parse_reranker_record(r, "sim", i) for i, r in enumerate(raw)]
    estimate = estimate_propensities(records, n_ranks=6)
    np.testing.assert_allclose(estimate.propensities, user.examination(6), rtol=0.15)
    assert estimate.propensities[0] == pytest.approx(1.0)


def test_a_log_whose_orders_never_changed_gets_no_estimate() -> None:
    from datamodules.propensity import estimate_propensities
    from datamodules.reranker_records import parse_reranker_record

    raw = simulate([make_list(5, {1})], FileOrder(), PositionBasedUser(), n_impressions=20)
    records = [parse_reranker_record(r, "sim", i) for i, r in enumerate(raw)]
    with pytest.raises(ValueError, match="never changed"):
        estimate_propensities(records)


def test_an_estimate_is_made_usable_for_weighting() -> None:
    from datamodules.propensity import PropensityEstimate
    from lightning_modules.position_bias import InversePropensityWeighting

    estimate = PropensityEstimate([1.0, 1.2, 0.5, None, 0.2], pairs=[], n_records=0)
    assert estimate.for_weighting() == [1.0, 1.0, 0.5, 0.5, 0.2]
    InversePropensityWeighting(propensities=estimate.for_weighting())  # accepted


def test_display_policy_builds_what_the_benchmarks_name(tmp_path) -> None:
    from simulation.display import Alternating, display_policy

    assert isinstance(display_policy(["bm25"], tmp_path), BM25Order)
    both = display_policy(["file", "random"], tmp_path, seed=4)
    assert isinstance(both, Alternating) and both.name == "file+random"
    assert both.policies[1] == RandomOrder(seed=4)
    with pytest.raises(ValueError, match="unknown display"):
        display_policy(["alphabetical"], tmp_path)


@pytest.mark.slow  # exports the packaged MiniLM
def test_the_untouched_backbone_is_reused_from_an_earlier_run_and_nothing_else_is(tmp_path):
    from simulation.evaluation import untouched_backbone

    folder = tmp_path / "backbone"
    first = untouched_backbone(folder)
    written = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    again = untouched_backbone(folder)  # a benchmark rerun in the same work dir
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == written
    np.testing.assert_allclose(
        again.score("capital of france", ["paris", "rome"]),
        first.score("capital of france", ["paris", "rome"]),
    )
    metadata = folder / "feedback_finetuning.json"
    record = json.loads(metadata.read_text())
    record["training"] = {**(record.get("training") or {}), "validation": {"value": 0.9}}
    metadata.write_text(json.dumps(record))
    with pytest.raises(FileExistsError, match="not the untouched backbone"):
        untouched_backbone(folder)
