"""FeedbackTable: the validated records of large logs, kept as where they lie in the files."""

from __future__ import annotations

import json
import pickle
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from datamodules.feedback import FeedbackError, record_time
from datamodules.reranker import index_reranker_feedback
from datamodules.reranker_records import load_reranker_feedback
from datamodules.split import query_bucket, split_by_time, time_validation_mask
from tests.conftest import make_record


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return path


@pytest.fixture
def mixed_feedback(tmp_path) -> list[Path]:
    """A JSON Lines log (with a BOM, a blank line, CRLF endings, a repeat, a broken line and a
    snippet holding U+2028) and a ``.json`` document repeating one of its records."""
    records = [make_record(i, n_sources=3 + i % 4, picks=(i % 3,)) for i in range(12)]
    records[4]["all_sources"][0]["snippet"] = "line\u2028separator and \u00e9"
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(3, "   ")
    lines.insert(6, lines[5])  # a repeat of record 4
    lines.insert(8, '{"query": "broken", ')
    lines[2] += "\r"
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode("utf-8"))
    document = tmp_path / "more.json"
    document.write_text(json.dumps({"reranker_data": [records[0], make_record(50)]}))
    return [log, document]


def test_table_holds_the_same_records_as_the_in_memory_load(mixed_feedback):
    expected, expected_report = load_reranker_feedback(
        mixed_feedback, on_invalid="skip", deduplicate=True
    )
    table, report = index_reranker_feedback(mixed_feedback, on_invalid="skip", deduplicate=True)
    assert list(table) == expected and len(table) == 13
    assert report.summary() == expected_report.summary()
    assert report.duplicates == 2 and report.n_dropped == 1
    assert [table[i] for i in range(-1, -4, -1)] == expected[-1:-4:-1]
    # The facts are those of the records they stand for.
    assert table.facts["n_sources"].tolist() == [len(r.sources) for r in expected]
    assert table.facts["has_contrast"].tolist() == [r.has_contrast for r in expected]
    assert table.facts["bucket"].tolist() == [query_bucket(r.query) for r in expected]
    assert table.facts["time"].tolist() == [record_time(r).timestamp() for r in expected]


def test_record_indices_and_errors_match_the_in_memory_load(mixed_feedback):
    with pytest.raises(FeedbackError) as in_memory:
        load_reranker_feedback(mixed_feedback)
    with pytest.raises(FeedbackError) as indexed:
        index_reranker_feedback(mixed_feedback)
    assert str(indexed.value) == str(in_memory.value)
    assert "record 7" in str(indexed.value) and "line 9" in str(indexed.value)


def test_select_slices_and_masks_keep_records_and_facts_together(mixed_feedback):
    table, _ = index_reranker_feedback(mixed_feedback, on_invalid="skip")
    records = list(table)
    mask = table.facts["has_contrast"] & (table.facts["n_sources"] > 3)
    assert list(table.select(mask)) == [r for r, keep in zip(records, mask, strict=True) if keep]
    assert list(table.select([5, 0, 5])) == [records[5], records[0], records[5]]
    assert list(table[2:8:3]) == records[2:8:3]
    assert table.select([3]).facts["n_sources"].tolist() == [len(records[3].sources)]


def test_time_split_on_facts_equals_the_split_of_records(mixed_feedback):
    table, _ = index_reranker_feedback(mixed_feedback, on_invalid="skip")
    records = list(table)
    train, validation = split_by_time(records, record_time, 0.25)
    is_val = time_validation_mask(table.facts["time"], 0.25)
    assert list(table.select(~is_val)) == train and list(table.select(is_val)) == validation
    assert min(map(record_time, validation)) > max(map(record_time, train))
    assert isinstance(record_time(validation[0]), datetime)


def test_a_log_rewritten_during_the_run_is_an_error_appending_is_not(tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(make_record(i)) for i in range(3)])
    table, _ = index_reranker_feedback([log])
    first = table[0]
    with open(log, "a", encoding="utf-8") as handle:  # the app keeps logging
        handle.write(json.dumps(make_record(3)) + "\n")
    assert table[0] == first and len(table) == 3
    text = log.read_text(encoding="utf-8")
    log.write_text(text.replace("what is the", "WHAT IS THE", 2), encoding="utf-8")
    with pytest.raises(FeedbackError, match="changed on disk") as caught:
        table[1]
    assert str(log) in str(caught.value) and "record 1" in str(caught.value)


def test_tables_survive_pickling_and_worker_processes(mixed_feedback):
    table, _ = index_reranker_feedback(mixed_feedback, on_invalid="skip", deduplicate=True)
    expected = list(table)
    assert list(pickle.loads(pickle.dumps(table))) == expected
    loader = DataLoader(table, batch_size=None, num_workers=2, collate_fn=lambda record: record)
    assert list(loader) == expected


def test_empty_logs_give_empty_tables(tmp_path):
    table, report = index_reranker_feedback([write_jsonl(tmp_path / "e.jsonl", [""])])
    assert len(table) == 0 and list(table) == [] and report.read == 0
    assert table.facts["bucket"].dtype == np.float64 and table.facts["has_contrast"].dtype == bool


# -- large logs: read by several processes ------------------------------------------------


@pytest.fixture
def big_log(tmp_path) -> Path:
    """80 records over ~90 lines: blank lines, broken lines and repeats spread through it, so
    that each lands in a different byte range of a parallel read."""
    lines = []
    for i in range(80):
        lines.append(json.dumps(make_record(i, n_sources=3 + i % 5, picks=(i % 3,))))
        if i % 17 == 5:
            lines.append("")
        if i % 23 == 11:
            lines.append('{"query": "cut off')
        if i % 19 == 7:
            lines.append(lines[i // 2])  # a repeat of an earlier line, far back
    log = tmp_path / "big.jsonl"
    log.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode("utf-8"))
    return log


@pytest.fixture
def parallel_from_one_byte(monkeypatch):
    monkeypatch.setattr("datamodules.feedback_table.PARALLEL_MIN_BYTES", 1)


@pytest.mark.parametrize("workers", [2, 3])
def test_a_parallel_read_equals_the_serial_read(big_log, parallel_from_one_byte, workers):
    serial, serial_report = index_reranker_feedback(
        [big_log], on_invalid="skip", deduplicate=True, workers=1
    )
    parallel, parallel_report = index_reranker_feedback(
        [big_log], on_invalid="skip", deduplicate=True, workers=workers
    )
    assert parallel_report.duplicates > 0 and parallel_report.n_dropped > 0
    assert list(parallel) == list(serial)  # records carry their index: origin, query_id
    assert parallel_report.summary() == serial_report.summary()
    assert parallel_report.examples == serial_report.examples
    for name, values in serial.facts.items():
        np.testing.assert_array_equal(parallel.facts[name], values)


def test_a_parallel_read_reports_the_first_error_as_the_serial_read(
    big_log, parallel_from_one_byte
):
    with pytest.raises(FeedbackError) as serial:
        index_reranker_feedback([big_log], workers=1)
    with pytest.raises(FeedbackError) as parallel:
        index_reranker_feedback([big_log], workers=3)
    assert str(parallel.value) == str(serial.value)
    assert "invalid JSON at line" in str(parallel.value)
    broken = big_log.read_bytes().replace(b"what is the fast car 79", b"what is the fast car \xff")
    big_log.write_bytes(broken)
    with pytest.raises(FeedbackError, match="not UTF-8") as parallel:
        index_reranker_feedback([big_log], on_invalid="skip", workers=3)
    position = broken.index(b"\xff")
    assert f"byte {position} " in str(parallel.value)
