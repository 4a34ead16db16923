"""The feedback parser: valid input becomes typed records, bad input a precise error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from datamodules.feedback import FeedbackError, Source, render_document
from datamodules.feedback_files import discover_feedback_files
from datamodules.reranker_records import load_reranker_feedback, parse_reranker_record


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps({"reranker_data": records}))
    return path


def test_valid_record_keeps_display_order_and_labels(tmp_path, make_record):
    path = write_json(tmp_path / "f.json", [make_record(0, n_sources=5, picks=(3, 1))])
    records, report = load_reranker_feedback(path)
    (record,) = records
    assert [s.url for s in record.sources] == [f"https://example.org/q0/s{j}" for j in range(5)]
    assert record.grades == (0.0, 1.0, 0.0, 1.0, 0.0)
    assert record.timestamp == "2025-07-01T10:00:00"
    assert report.read == report.kept == 1 and report.n_dropped == 0


def test_pick_order_grades_follow_the_order_the_user_picked(tmp_path, make_record):
    raw = make_record(0, n_sources=6, picks=(4, 0, 2, 5))
    record = parse_reranker_record(raw, "f.json", 0, label_mode="pick_order")
    assert record.grades == (2.0, 0.0, 1.0, 0.0, 3.0, 1.0)


def test_relevance_overrides_picks(make_record):
    raw = make_record(0, n_sources=3, picks=(0,))
    raw["relevance"] = {raw["all_sources"][0]["url"]: 0, raw["all_sources"][2]["url"]: 2.5}
    record = parse_reranker_record(raw, "f.json", 0)
    assert record.grades == (0.0, 0.0, 2.5)


def test_duplicate_urls_are_kept_by_position(make_record):
    raw = make_record(0, n_sources=4, picks=(1,))
    raw["all_sources"][3]["url"] = raw["all_sources"][1]["url"]  # same page shown twice
    raw["all_sources"][3]["snippet"] = "another passage"
    raw["negative_sources"] = [raw["all_sources"][j]["url"] for j in (0, 2)]
    record = parse_reranker_record(raw, "f.json", 0)
    assert len(record.sources) == 4
    assert record.sources[3].snippet == "another passage"
    assert record.grades == (0.0, 1.0, 0.0, 1.0)


def test_sources_in_neither_list(make_record):
    raw = make_record(0, n_sources=4, picks=(2,))
    raw.pop("negative_sources")  # the app's convention: the rest are negatives
    record = parse_reranker_record(raw, "f.json", 0)
    assert record.grades == (0.0, 0.0, 1.0, 0.0) and all(record.judged)
    raw["negative_sources"] = [raw["all_sources"][0]["url"]]  # explicit: the rest is unjudged
    record = parse_reranker_record(raw, "f.json", 0)
    assert record.grades == (0.0, 0.0, 1.0, 0.0)
    assert record.judged == (True, False, True, False)
    assert record.has_contrast
    raw["negative_sources"] = []
    assert not parse_reranker_record(raw, "f.json", 0).has_contrast


def _mutate(mutation, make_record):
    raw = make_record(0, n_sources=4, picks=(1,))
    mutation(raw)
    return raw


BAD_RECORDS = [
    ("missing query", lambda r: r.pop("query"), "query", "missing"),
    ("empty query", lambda r: r.update(query="   "), "query", "empty"),
    ("query not a string", lambda r: r.update(query=3), "query", "expected a string, got int"),
    ("no sources", lambda r: r.update(all_sources=[]), "all_sources", "no sources"),
    ("sources not a list", lambda r: r.update(all_sources={}), "all_sources", "expected a list"),
    (
        "source not an object",
        lambda r: r["all_sources"].__setitem__(2, "x"),
        "all_sources[2]",
        "expected an object",
    ),
    (
        "url missing",
        lambda r: r["all_sources"][1].pop("url"),
        "all_sources[1].url",
        "missing",
    ),
    (
        "title not a string",
        lambda r: r["all_sources"][0].update(title=["a"]),
        "all_sources[0].title",
        "expected a string, got list",
    ),
    (
        "snippet not a string",
        lambda r: r["all_sources"][3].update(snippet=12.5),
        "all_sources[3].snippet",
        "expected a string, got float",
    ),
    (
        "no text",
        lambda r: r["all_sources"][2].update(title="", snippet=" "),
        "all_sources[2]",
        "neither title nor snippet",
    ),
    (
        "positive not among sources",
        lambda r: r.update(positive_sources=["https://nowhere.example"]),
        "positive_sources[0]",
        "not among all_sources",
    ),
    (
        "negative not among sources",
        lambda r: r["negative_sources"].append("https://nowhere.example"),
        "negative_sources[3]",
        "not among all_sources",
    ),
    (
        "url positive and negative",
        lambda r: r["negative_sources"].append(r["positive_sources"][0]),
        "negative_sources",
        "both positive and negative",
    ),
    (
        "positive not a string",
        lambda r: r.update(positive_sources=[{"url": "x"}]),
        "positive_sources[0]",
        "expected a url string",
    ),
    ("positives missing", lambda r: r.pop("positive_sources"), "positive_sources", "missing"),
    (
        "bad relevance grade",
        lambda r: r.update(relevance={r["all_sources"][0]["url"]: -1}),
        "relevance",
        "grade >= 0",
    ),
    ("timestamp not a string", lambda r: r.update(timestamp=5), "timestamp", "expected a string"),
]


@pytest.mark.parametrize(("name", "mutation", "field", "message"), BAD_RECORDS)
def test_bad_record_names_file_record_and_field(
    tmp_path, name, mutation, field, message, make_record
):
    good = [make_record(i) for i in range(3)]
    path = write_json(tmp_path / "feedback.json", [*good, _mutate(mutation, make_record)])
    with pytest.raises(FeedbackError) as info:
        load_reranker_feedback(path)
    error = info.value
    assert error.file == str(path.resolve())
    assert error.record == 3
    assert error.field is not None and error.field.startswith(field)
    assert message in str(error)
    assert str(path.resolve()) in str(error) and "record 3" in str(error)


def test_record_that_is_not_an_object(tmp_path, make_record):
    path = write_json(tmp_path / "f.json", [make_record(0), ["not", "a", "record"]])
    with pytest.raises(FeedbackError, match=r"record 1: expected an object, got list"):
        load_reranker_feedback(path)


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"reranker_data": [\n  {"query": "a",\n   "all_sources": [,]}\n]}')
    with pytest.raises(FeedbackError, match=r"broken.json: invalid JSON at line 3 column 20"):
        load_reranker_feedback(path)


def test_wrong_top_level_key(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"query_rewriting_data": []}))
    with pytest.raises(FeedbackError, match="top-level key 'reranker_data'"):
        load_reranker_feedback(path)


def test_non_utf8_file_is_reported(tmp_path, make_record):
    path = tmp_path / "latin1.json"
    path.write_bytes(
        json.dumps({"reranker_data": [make_record(0)]}).replace("page", "pâge").encode("latin-1")
    )
    with pytest.raises(FeedbackError, match="not UTF-8"):
        load_reranker_feedback(path)


def test_jsonl_directory_and_glob_inputs(tmp_path, make_record):
    folder = tmp_path / "logs"
    folder.mkdir()
    write_json(folder / "a.json", [make_record(0), make_record(1)])
    lines = [json.dumps(make_record(i)) for i in (2, 3, 4)]
    # U+2028 is legal inside a JSON string and must not split a JSON Lines record.
    lines[0] = lines[0].replace("page 0", "page\u20280")
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    (folder / "notes.txt").write_text("ignored")
    records, report = load_reranker_feedback(folder)
    assert len(records) == 5 and len(report.files) == 2
    assert records[2].sources[0].title.endswith("page\u20280")
    same, _ = load_reranker_feedback([str(folder / "*.json*"), folder / "a.json"])
    assert len(same) == 5  # a file named twice is read once
    assert discover_feedback_files(folder) == sorted(discover_feedback_files(str(folder / "*")))


def test_jsonl_bad_line_error_and_skip(tmp_path, make_record):
    path = tmp_path / "log.jsonl"
    bad = _mutate(lambda r: r.update(positive_sources=["https://nowhere.example"]), make_record)
    lines = [json.dumps(make_record(0)), "{not json", json.dumps(bad), json.dumps(make_record(1))]
    path.write_text("\n".join(lines))
    with pytest.raises(FeedbackError, match=r"record 1: invalid JSON at line 2 column 2"):
        load_reranker_feedback(path)
    records, report = load_reranker_feedback(path, on_invalid="skip")
    assert [r.query for r in records] == [make_record(0)["query"], make_record(1)["query"]]
    assert report.read == 4 and report.kept == 2 and report.n_dropped == 2
    assert any("not among all_sources" in reason for reason in report.dropped)
    assert "dropped 2" in report.summary()


def test_skip_mode_never_keeps_a_partly_bad_record(tmp_path, make_record):
    records = [make_record(i) for i in range(5)]
    broken = copy.deepcopy(records)
    broken[1]["all_sources"][0]["title"] = None
    broken[1]["all_sources"][0]["snippet"] = None
    broken[3]["negative_sources"].append(broken[3]["positive_sources"][0])
    path = write_json(tmp_path / "f.json", broken)
    kept, report = load_reranker_feedback(path, on_invalid="skip")
    assert [r.query for r in kept] == [records[i]["query"] for i in (0, 2, 4)]
    assert report.n_dropped == 2 and len(report.examples) == 2
    assert all("record" in e for e in report.examples)


def test_loading_never_modifies_the_file(tmp_path, make_record):
    path = write_json(tmp_path / "f.json", [make_record(0), {"bad": 1}])
    before = path.read_bytes()
    load_reranker_feedback(path, on_invalid="skip")
    assert path.read_bytes() == before


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(FeedbackError, match="no such file"):
        load_reranker_feedback(tmp_path / "nope.json")


def test_render_document_template():
    source = Source(title="Title", url="https://x", snippet="Snippet text")
    assert render_document("{title}\n{snippet}", source) == "Title\nSnippet text"
    assert render_document("{title}\n{snippet}", Source("", "u", "only snippet")) == "only snippet"
    assert render_document("{snippet} ({url})", source) == "Snippet text (https://x)"
