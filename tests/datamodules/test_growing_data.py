"""Feedback that keeps arriving: many files, repeats dropped and counted, and a time split that
validates on the newest records only."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from datamodules.feedback import FeedbackError, parse_timestamp
from datamodules.query_rewriting import QueryRewritingDataModule
from datamodules.reranker import RerankerDataModule
from datamodules.reranker_records import load_reranker_feedback
from datamodules.rewrite_feedback import load_rewriting_data
from datamodules.split import split_by_time
from lightning_modules.encoding import BiEncoderInputs

UTC = timezone.utc


def stamp(day: int, hour: int = 10) -> str:
    return f"2025-07-{day:02d}T{hour:02d}:00:00"


def write(path, records, top_key="reranker_data"):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps({top_key: records}))
    return path


# -- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-07-19T10:00:00", datetime(2025, 7, 19, 10, tzinfo=UTC)),  # the app's format
        ("2025-07-19T10:00:00Z", datetime(2025, 7, 19, 10, tzinfo=UTC)),
        ("2025-07-19T12:00:00+02:00", datetime(2025, 7, 19, 10, tzinfo=UTC)),
        ("2025-07-19", datetime(2025, 7, 19, tzinfo=UTC)),
        (" 2025-07-19T10:00:00.250 ", datetime(2025, 7, 19, 10, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_timestamps_in_iso_8601_forms_compare_as_utc(text, expected):
    assert parse_timestamp(text, file="f.json", index=3) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "missing"),
        ("", "not an ISO 8601 time"),
        ("yesterday", "not an ISO 8601 time"),
        ("19/07/2025 10:00", "not an ISO 8601 time"),
        (1752919200, "expected an ISO 8601 string, got int"),
    ],
)
def test_bad_timestamps_are_named_with_file_record_and_field(value, message):
    with pytest.raises(FeedbackError, match=message) as caught:
        parse_timestamp(value, file="logs/day2.json", index=7)
    assert "logs/day2.json" in str(caught.value) and "record 7" in str(caught.value)
    assert caught.value.field == "timestamp"


# -- de-duplication -----------------------------------------------------------------------------


def test_overlapping_files_lose_their_repeats_and_count_them(tmp_path, make_record):
    day1 = write(tmp_path / "day1.json", [make_record(i) for i in range(10)])
    # day 2 re-exports records 5..9 (a repeat with a later timestamp too) and adds 10..14
    repeats = [make_record(i) for i in range(5, 10)]
    repeats[0]["timestamp"] = stamp(28)
    day2 = write(tmp_path / "day2.jsonl", repeats + [make_record(i) for i in range(10, 15)])
    records, report = load_reranker_feedback([day1, day2], deduplicate=True)
    assert report.read == 20 and report.duplicates == 5 and report.kept == 15
    assert "dropped 5 duplicate(s)" in report.summary()
    assert sorted(r.query for r in records) == sorted(make_record(i)["query"] for i in range(15))
    assert all(r.origin.startswith(str(day1.resolve())) for r in records[:10])  # first kept
    kept_all, report = load_reranker_feedback([day1, day2])
    assert len(kept_all) == 20 and report.duplicates == 0


def test_same_query_with_other_sources_or_picks_is_not_a_repeat(tmp_path, make_record):
    base = make_record(1)
    other_picks = make_record(1, picks=(2,))
    other_sources = make_record(1, n_sources=6)
    shouting = dict(base, query=base["query"].upper() + "  ")  # the same query, normalised
    path = write(tmp_path / "f.json", [base, other_picks, other_sources, shouting, base])
    records, report = load_reranker_feedback(path, deduplicate=True)
    assert report.duplicates == 2 and len(records) == 3


def test_rewriting_pairs_are_deduplicated_too(tmp_path):
    pairs = [
        {"source": "who won", "target": "who won the cup", "history": ["the cup"]},
        {"source": "Who  won", "target": "who won the cup", "history": ["the cup"]},
        {"source": "who won", "target": "who won the cup", "history": ["the final"]},
        {"source": "who won", "target": "who won the final"},
    ]
    path = write(tmp_path / "pairs.jsonl", pairs)
    loaded, report = load_rewriting_data(path, deduplicate=True)
    assert report.duplicates == 1 and len(loaded) == 3


# -- time split ---------------------------------------------------------------------------------


def test_split_by_time_validates_on_the_newest_slice_only():
    items = [
        (name, datetime(2025, 7, day, tzinfo=UTC))
        for name, day in zip("abcdefghij", [5, 1, 9, 3, 7, 2, 10, 4, 8, 6], strict=True)
    ]
    train, val = split_by_time(items, lambda item: item[1], 0.3)
    assert [name for name, _ in val] == ["c", "g", "i"]  # days 9, 10, 8, in file order
    assert [name for name, _ in train] == ["a", "b", "d", "e", "f", "h", "j"]
    assert max(t for _, t in train) < min(t for _, t in val)
    # Records sharing the cut-off time all validate, so validation stays strictly newer.
    tied = [("x", datetime(2025, 7, 1, tzinfo=UTC))] * 2 + [
        ("y", datetime(2025, 7, 2, tzinfo=UTC))
    ] * 3
    train, val = split_by_time(tied, lambda item: item[1], 0.2)
    assert [n for n, _ in train] == ["x", "x"] and [n for n, _ in val] == ["y", "y", "y"]
    assert split_by_time(items, lambda item: item[1], 0.0) == (items, [])
    with pytest.raises(ValueError):
        split_by_time(items, lambda item: item[1], 1.0)


def reranker_datamodule(files, tokenizer, **kwargs) -> RerankerDataModule:
    dm = RerankerDataModule(train_files=[str(f) for f in files], **kwargs)
    dm.input_encoder = BiEncoderInputs(tokenizer, max_length=32, max_query_length=16)
    return dm


def test_reranker_time_split_over_two_overlapping_files(tmp_path, tokenizer, make_record):
    old = []
    for i in range(20):
        record = make_record(i)
        record["timestamp"] = stamp(1 + i)
        old.append(record)
    new = [dict(r) for r in old[15:]]  # a re-export of the last five
    for i in range(20, 30):
        record = make_record(i)
        record["timestamp"] = stamp(1 + i % 28, hour=23)
        new.append(record)
    folder = tmp_path / "feedback"
    folder.mkdir()
    write(folder / "2025-07-a.json", old)
    write(folder / "2025-07-b.jsonl", new)
    dm = reranker_datamodule([folder], tokenizer, split="time", validation_fraction=0.2)
    dm.setup("fit")
    assert dm.reports["train"].duplicates == 5
    assert len(dm.val_records) == 6  # 20% of the 30 unique records
    newest_train = max(datetime.fromisoformat(r.timestamp) for r in dm.train_records)
    assert all(datetime.fromisoformat(r.timestamp) > newest_train for r in dm.val_records)
    # the hash split on the same data is not by time
    by_hash = reranker_datamodule([folder], tokenizer, validation_fraction=0.2)
    by_hash.setup("fit")
    assert {r.query for r in by_hash.val_records} != {r.query for r in dm.val_records}


def test_time_split_needs_timestamps_error_or_skip(tmp_path, tokenizer, make_record):
    records = [make_record(i) for i in range(12)]
    del records[4]["timestamp"]
    records[7]["timestamp"] = "last tuesday"
    path = write(tmp_path / "feedback.json", records)
    dm = reranker_datamodule([path], tokenizer, split="time")
    with pytest.raises(FeedbackError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert "feedback.json" in message and "record 4" in message and "timestamp" in message
    skipping = reranker_datamodule([path], tokenizer, split="time", on_invalid="skip")
    skipping.setup("fit")
    assert skipping.reports["train"].n_dropped == 2
    assert len(skipping.train_records) + len(skipping.val_records) == 10
    # the hash split does not need them
    by_hash = reranker_datamodule([path], tokenizer)
    by_hash.setup("fit")
    assert len(by_hash.train_records) + len(by_hash.val_records) == 12


def test_rewriter_time_split_and_dedupe(tmp_path, tokenizer):
    pairs = [
        {"source": f"question {i}", "target": f"rewrite {i}", "timestamp": stamp(1 + i)}
        for i in range(20)
    ]
    path = write(tmp_path / "pairs.jsonl", pairs + pairs[:3])
    dm = QueryRewritingDataModule(train_files=[str(path)], split="time", validation_fraction=0.25)
    dm.input_encoder = tokenizer
    dm.setup("fit")
    assert dm.reports["train"].duplicates == 3
    assert [p.source for p in dm.val_pairs] == [f"question {i}" for i in range(15, 20)]
    assert len(dm.train_pairs) == 15
    del pairs[2]["timestamp"]
    write(path, pairs)
    broken = QueryRewritingDataModule(train_files=[str(path)], split="time")
    broken.input_encoder = tokenizer
    with pytest.raises(FeedbackError, match="timestamp"):
        broken.setup("fit")
