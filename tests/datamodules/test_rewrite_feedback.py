"""Query-rewriting data: app records are validated and mined for a target; pairs are read."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from datamodules.feedback import FeedbackError
from datamodules.rewrite_feedback import (
    FILTERED_NO_SIGNAL,
    FILTERED_ORIGINAL_WON,
    Candidate,
    MinedTarget,
    RewritePair,
    RewritingRecord,
    load_rewriting_data,
    mine_target,
    parse_rewrite_pair,
    parse_rewriting_record,
)


def url(n: int) -> str:
    return f"https://example.org/page{n}"


def app_record(
    original: str = "cogs meaning",
    selected: tuple[int, ...] = (1, 2),
    candidates: dict[str, tuple[str, tuple[int, ...]]] | None = None,
) -> dict:
    """An app record; ``candidates`` maps name -> (query, page numbers retrieved in order)."""
    if candidates is None:
        candidates = {
            "original query": (original, (0, 1, 5)),
            "rewrite 1": ("what is cost of goods sold", (1, 2, 3)),
            "rewrite 2": ("cogs accounting definition", (4, 6)),
        }
    return {
        "original_query": original,
        "selected_sources": [url(n) for n in selected],
        "query_source_mapping": {
            name: {
                "query": query,
                "reasoning": f"because {name}",
                "sources": [url(n) for n in pages],
            }
            for name, (query, pages) in candidates.items()
        },
        "query_generator": "gpt-test",
        "timestamp": "2025-07-01T10:00:00",
    }


def record_of(raw: dict) -> RewritingRecord:
    return parse_rewriting_record(raw, "f.json", 0)


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps({"query_rewriting_data": records}))
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Parsing app records
# ---------------------------------------------------------------------------------------------


def test_parse_keeps_orders_and_metadata():
    raw = app_record()
    record = parse_rewriting_record(raw, "data.json", 7)
    assert record.original_query == "cogs meaning"
    assert record.selected_sources == (url(1), url(2))
    assert [c.name for c in record.candidates] == ["original query", "rewrite 1", "rewrite 2"]
    assert record.candidates[1] == Candidate(
        "rewrite 1", "what is cost of goods sold", (url(1), url(2), url(3))
    )
    assert record.query_generator == "gpt-test"
    assert record.timestamp == "2025-07-01T10:00:00"
    assert record.origin == "data.json:7"


def test_source_objects_and_url_strings_are_both_accepted():
    raw = app_record()
    # Selected sources as objects, one candidate's sources as objects: same record as urls.
    raw["selected_sources"] = [{"url": url(2), "title": "T"}, {"url": url(1)}]
    raw["query_source_mapping"]["rewrite 1"]["sources"] = [
        {"url": url(1), "title": "A", "snippet": "s"},
        url(2),
        {"url": url(3)},
    ]
    record = record_of(raw)
    assert record.selected_sources == (url(2), url(1))  # the user's pick order
    assert record.candidates[1].sources == (url(1), url(2), url(3))
    assert mine_target(record) == MinedTarget("what is cost of goods sold", "rewrite 1", 2, False)


def test_optional_fields_may_be_absent():
    raw = app_record()
    for key in ("query_generator", "timestamp"):
        raw.pop(key)
    del raw["query_source_mapping"]["rewrite 1"]["reasoning"]
    record = record_of(raw)
    assert record.query_generator is None and record.timestamp is None


BAD_APP_RECORDS = [
    ("missing original_query", lambda r: r.pop("original_query"), "original_query", "missing"),
    ("empty original_query", lambda r: r.update(original_query=" "), "original_query", "empty"),
    (
        "original_query not a string",
        lambda r: r.update(original_query=["q"]),
        "original_query",
        "expected a string, got list",
    ),
    ("missing selected", lambda r: r.pop("selected_sources"), "selected_sources", "missing"),
    (
        "selected not a list",
        lambda r: r.update(selected_sources=url(1)),
        "selected_sources",
        "expected a list, got str",
    ),
    (
        "selected item a number",
        lambda r: r["selected_sources"].append(3),
        "selected_sources[2]",
        "expected a url string or a source object",
    ),
    (
        "selected url empty",
        lambda r: r["selected_sources"].append(""),
        "selected_sources[2]",
        "empty url",
    ),
    (
        "selected object without url",
        lambda r: r["selected_sources"].append({"title": "t"}),
        "selected_sources[2].url",
        "missing",
    ),
    (
        "selected url listed twice",
        lambda r: r["selected_sources"].append({"url": url(1)}),
        "selected_sources[2]",
        "listed twice",
    ),
    (
        "missing mapping",
        lambda r: r.pop("query_source_mapping"),
        "query_source_mapping",
        "missing",
    ),
    (
        "mapping a list",
        lambda r: r.update(query_source_mapping=[]),
        "query_source_mapping",
        "expected an object, got list",
    ),
    (
        "mapping empty",
        lambda r: r.update(query_source_mapping={}),
        "query_source_mapping",
        "no candidate queries",
    ),
    (
        "candidate not an object",
        lambda r: r["query_source_mapping"].update({"rewrite 1": "what is cogs"}),
        "query_source_mapping['rewrite 1']",
        "expected an object, got str",
    ),
    (
        "candidate query missing",
        lambda r: r["query_source_mapping"]["rewrite 2"].pop("query"),
        "query_source_mapping['rewrite 2'].query",
        "missing",
    ),
    (
        "candidate query empty",
        lambda r: r["query_source_mapping"]["rewrite 2"].update(query=""),
        "query_source_mapping['rewrite 2'].query",
        "empty",
    ),
    (
        "reasoning not a string",
        lambda r: r["query_source_mapping"]["rewrite 1"].update(reasoning=1),
        "query_source_mapping['rewrite 1'].reasoning",
        "expected a string, got int",
    ),
    (
        "candidate sources missing",
        lambda r: r["query_source_mapping"]["rewrite 1"].pop("sources"),
        "query_source_mapping['rewrite 1'].sources",
        "missing",
    ),
    (
        "candidate sources not a list",
        lambda r: r["query_source_mapping"]["rewrite 1"].update(sources={"url": url(1)}),
        "query_source_mapping['rewrite 1'].sources",
        "expected a list, got dict",
    ),
    (
        "candidate source item null",
        lambda r: r["query_source_mapping"]["rewrite 1"]["sources"].append(None),
        "query_source_mapping['rewrite 1'].sources[3]",
        "got null",
    ),
    (
        "candidate source url not a string",
        lambda r: r["query_source_mapping"]["rewrite 1"]["sources"].append({"url": 5}),
        "query_source_mapping['rewrite 1'].sources[3].url",
        "expected a string, got int",
    ),
    (
        "generator not a string",
        lambda r: r.update(query_generator=3),
        "query_generator",
        "expected a string",
    ),
    ("timestamp not a string", lambda r: r.update(timestamp=5.0), "timestamp", "expected a string"),
]


@pytest.mark.parametrize(("name", "mutation", "field", "message"), BAD_APP_RECORDS)
def test_bad_app_record_names_file_record_and_field(tmp_path, name, mutation, field, message):
    bad = app_record()
    mutation(bad)
    path = write_json(tmp_path / "rw.json", [app_record(), app_record("b"), bad])
    with pytest.raises(FeedbackError) as info:
        load_rewriting_data(path)
    error = info.value
    assert error.file == str(path.resolve())
    assert error.record == 2
    assert error.field == field
    assert message in str(error)
    assert str(path.resolve()) in str(error) and "record 2" in str(error)


def test_candidate_may_list_a_url_twice():
    raw = app_record(candidates={"r": ("q2", (3, 1, 1, 2))})
    record = record_of(raw)
    assert record.candidates[0].sources == (url(3), url(1), url(1), url(2))
    assert mine_target(record).coverage == 2  # distinct selected urls


# ---------------------------------------------------------------------------------------------
# Target mining
# ---------------------------------------------------------------------------------------------


def test_clear_winner_is_the_candidate_with_most_selected_sources():
    target = mine_target(record_of(app_record()))
    assert target == MinedTarget(
        query="what is cost of goods sold", candidate="rewrite 1", coverage=2, is_original=False
    )


def test_tie_with_the_original_query_keeps_the_original():
    # The rewrite finds the selected page earlier than the original does, still no more pages.
    raw = app_record(
        original="Cogs  Meaning",
        selected=(1,),
        candidates={
            "rewrite 1": ("what is cost of goods sold", (1, 2)),
            "original query": ("cogs meaning", (7, 8, 1)),
        },
    )
    target = mine_target(record_of(raw))
    assert target is not None
    # The target is the user's query verbatim, not the candidate's normalised copy.
    assert target == MinedTarget("Cogs  Meaning", "original query", 1, True)


def test_a_rewrite_that_finds_more_beats_the_original():
    raw = app_record(
        selected=(1, 2),
        candidates={
            "original query": ("cogs meaning", (1, 5)),
            "rewrite 1": ("what is cost of goods sold", (9, 8, 1, 2)),
        },
    )
    assert mine_target(record_of(raw)).candidate == "rewrite 1"


def test_tie_between_rewrites_goes_to_the_better_rank():
    raw = app_record(
        selected=(1, 2),
        candidates={
            "original query": ("cogs meaning", (5, 6)),
            "rewrite 1": ("cogs definition", (9, 1, 8, 2)),  # 1/2 + 1/4
            "rewrite 2": ("cost of goods sold", (2, 9, 1)),  # 1 + 1/3
        },
    )
    target = mine_target(record_of(raw))
    assert target == MinedTarget("cost of goods sold", "rewrite 2", 2, False)


def test_tie_on_coverage_and_rank_goes_to_mapping_order():
    # Positions {0, 3} and {3, 0}: equal scores (1 + 1/4), so the first listed wins.
    raw = app_record(
        selected=(1, 2),
        candidates={
            "rewrite b": ("cost of goods sold", (1, 7, 8, 2)),
            "rewrite a": ("cogs definition", (2, 7, 8, 1)),
        },
    )
    assert mine_target(record_of(raw)).candidate == "rewrite b"
    raw["query_source_mapping"] = dict(reversed(raw["query_source_mapping"].items()))
    assert mine_target(record_of(raw)).candidate == "rewrite a"


def test_rank_scores_tie_exactly():
    # Positions {2, 3} and {1, 11} both score 1/3 + 1/4 = 1/2 + 1/12 = 7/12, but as float sums
    # the second is one ulp larger and would beat the first, which mapping order must keep.
    assert 1 / 3 + 1 / 4 < 1 / 2 + 1 / 12
    raw = app_record(
        selected=(1, 2),
        candidates={
            "rewrite a": ("q a", (9, 8, 1, 2)),
            "rewrite b": ("q b", (9, 1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 2)),
        },
    )
    assert mine_target(record_of(raw)).candidate == "rewrite a"


def test_nothing_retrieved_or_nothing_selected_gives_no_target():
    no_hit = app_record(selected=(42,))
    assert mine_target(record_of(no_hit)) is None
    nothing_selected = app_record(selected=())
    assert mine_target(record_of(nothing_selected)) is None


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------


def test_pair_with_and_without_history():
    pair = parse_rewrite_pair(
        {"source": "and its capital?", "target": "capital of France", "history": ["France"]},
        "p.jsonl",
        3,
    )
    assert pair == RewritePair(
        source="and its capital?",
        target="capital of France",
        history=("France",),
        origin="p.jsonl:3",
        is_original=False,
    )
    plain = parse_rewrite_pair(
        {"source": "Capital of France", "target": "capital of  france"}, "p", 0
    )
    assert plain.history == () and plain.is_original
    assert parse_rewrite_pair({"source": "a", "target": "b", "history": None}, "p", 0).history == ()


BAD_PAIRS = [
    ("missing target", lambda r: r.pop("target"), "target", "missing"),
    ("missing source", lambda r: r.pop("source"), "source", "missing"),
    ("empty target", lambda r: r.update(target=""), "target", "empty"),
    ("source not a string", lambda r: r.update(source=1), "source", "expected a string, got int"),
    ("history a string", lambda r: r.update(history="x"), "history", "expected a list, got str"),
    ("history item a number", lambda r: r["history"].append(3), "history[2]", "got int"),
    ("history item empty", lambda r: r["history"].insert(0, " "), "history[0]", "empty"),
]


@pytest.mark.parametrize(("name", "mutation", "field", "message"), BAD_PAIRS)
def test_bad_pair_names_file_record_and_field(tmp_path, name, mutation, field, message):
    good = {"source": "when was it built", "target": "when was the eiffel tower built"}
    bad = {**good, "history": ["eiffel tower", "where is it"]}
    mutation(bad)
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, bad])
    with pytest.raises(FeedbackError) as info:
        load_rewriting_data(path)
    assert info.value.record == 1 and info.value.field == field
    assert message in str(info.value) and "pairs.jsonl" in str(info.value)


def test_record_of_neither_format_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"query": "q", "rewrite": "r"}])
    with pytest.raises(FeedbackError, match=r"record 0: expected an app record with"):
        load_rewriting_data(path)
    path = write_jsonl(tmp_path / "p.jsonl", [["q", "r"]])
    with pytest.raises(FeedbackError, match=r"record 0: expected an object, got list"):
        load_rewriting_data(path)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def original_wins_record() -> dict:
    return app_record(
        original="cogs meaning",
        selected=(1,),
        candidates={
            "original query": ("cogs meaning", (1,)),
            "rewrite 1": ("what is cost of goods sold", (2, 1)),
        },
    )


def test_load_mines_keeps_unchanged_and_filters_no_signal(tmp_path, caplog):
    records = [app_record(), original_wins_record(), app_record(selected=(42,))]
    path = write_json(tmp_path / "query_rewriting_training_data.json", records)
    with caplog.at_level(logging.INFO):
        pairs, report = load_rewriting_data(path)
    when = "2025-07-01T10:00:00"  # the app record's timestamp travels with its pair
    assert pairs == [
        RewritePair(
            "cogs meaning", "what is cost of goods sold", (), f"{path.resolve()}:0", timestamp=when
        ),
        RewritePair(
            "cogs meaning", "cogs meaning", (), f"{path.resolve()}:1", True, timestamp=when
        ),
    ]
    assert report.read == 3 and report.kept == 2 and report.n_dropped == 0
    assert report.filtered == {FILTERED_NO_SIGNAL: 1}
    assert f"filtered 1 (1 x {FILTERED_NO_SIGNAL})" in report.summary()
    assert "2 pairs (1 rewrites, 1 unchanged)" in caplog.text


def test_keep_unchanged_false_filters_and_counts_the_original(tmp_path):
    records = [app_record(), original_wins_record(), original_wins_record()]
    records.append({"source": "Paris weather", "target": "paris  weather"})
    records.append({"source": "paris weather", "target": "weather in paris today"})
    path = write_json(tmp_path / "rw.json", records)
    pairs, report = load_rewriting_data(path, keep_unchanged=False)
    assert [p.target for p in pairs] == ["what is cost of goods sold", "weather in paris today"]
    assert not any(p.is_original for p in pairs)
    assert report.filtered[FILTERED_ORIGINAL_WON] == 2 and report.n_filtered == 3
    assert report.kept == 2 and report.read == 5 and report.n_dropped == 0


def test_skip_mode_drops_and_counts_bad_records(tmp_path):
    bad_selected = app_record()
    bad_selected["selected_sources"].append(bad_selected["selected_sources"][0])
    bad_pair = {"source": "x", "target": ""}
    records = [app_record(), bad_selected, {"other": 1}, bad_pair, app_record(selected=(42,))]
    path = write_jsonl(tmp_path / "rw.jsonl", records)
    with open(path, "a") as f:
        f.write("{broken\n")
    with pytest.raises(FeedbackError, match="record 1: field 'selected_sources\\[2\\]'"):
        load_rewriting_data(path)
    pairs, report = load_rewriting_data(path, on_invalid="skip")
    assert [p.origin for p in pairs] == [f"{path.resolve()}:0"]
    assert report.read == 6 and report.kept == 1
    assert report.n_dropped == 4 and report.n_filtered == 1
    assert report.dropped[f"selected_sources[2]: url {url(1)!r} listed twice"] == 1
    assert report.dropped["target: empty"] == 1
    assert "dropped 4" in report.summary() and "filtered 1" in report.summary()


def test_mixed_app_json_and_pairs_jsonl_in_one_load(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    app = write_json(folder / "app.json", [app_record(), original_wins_record()])
    pairs_file = write_jsonl(
        folder / "public.jsonl",
        [
            {"source": "who directed it", "target": "who directed jaws", "history": ["jaws"]},
            {"source": "jaws director", "target": "jaws director"},
        ],
    )
    bare = tmp_path / "bare.json"  # a bare list of records is fine too
    bare.write_text(json.dumps([{"source": "a b", "target": "c d"}]))
    pairs, report = load_rewriting_data([folder, bare])
    assert len(report.files) == 3 and report.kept == 5
    assert [(p.source, p.target, p.history, p.is_original) for p in pairs] == [
        ("cogs meaning", "what is cost of goods sold", (), False),
        ("cogs meaning", "cogs meaning", (), True),
        ("who directed it", "who directed jaws", ("jaws",), False),
        ("jaws director", "jaws director", (), True),
        ("a b", "c d", (), False),
    ]
    assert pairs[2].origin == f"{pairs_file.resolve()}:0"
    assert pairs[1].origin == f"{app.resolve()}:1"


def test_jsonl_app_records(tmp_path):
    path = write_jsonl(tmp_path / "log.jsonl", [app_record(), original_wins_record()])
    pairs, report = load_rewriting_data(path)
    assert [p.is_original for p in pairs] == [False, True] and report.read == 2


def test_the_same_file_named_twice_is_read_once(tmp_path):
    path = write_json(tmp_path / "rw.json", [app_record()])
    pairs, report = load_rewriting_data([path, str(tmp_path / "*.json"), tmp_path])
    assert len(pairs) == 1 and report.read == 1 and len(report.files) == 1


def test_wrong_top_level_key(tmp_path):
    path = tmp_path / "rw.json"
    path.write_text(json.dumps({"pairs": [{"source": "a", "target": "b"}]}))
    with pytest.raises(FeedbackError, match="top-level key 'query_rewriting_data'"):
        load_rewriting_data(path)


def test_loading_does_not_modify_the_records(tmp_path):
    records = [app_record(), original_wins_record()]
    before = copy.deepcopy(records)
    for i, raw in enumerate(records):
        parse_rewriting_record(raw, "f", i)
    assert records == before


def test_session_id_is_read_from_app_records_and_pairs(tmp_path):
    app = write_json(tmp_path / "app.json", [dict(app_record(), session_id="chat-7")])
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"source": "when", "target": "when was it", "session_id": "d1"},
            {"source": "a", "target": "b"},
        ],
    )
    loaded, _ = load_rewriting_data([app, pairs])
    assert [p.session_id for p in loaded] == ["chat-7", "d1", None]


@pytest.mark.parametrize(
    "raw", [dict(app_record(), session_id=3), {"source": "a", "target": "b", "session_id": []}]
)
def test_session_id_must_be_a_string(tmp_path, raw):
    path = write_json(tmp_path / "bad.json", [raw])
    with pytest.raises(FeedbackError, match=r"record 0: field 'session_id'"):
        load_rewriting_data(path)
