"""Converters from public data sets to app feedback, on small hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.converters import (
    ConversionReport,
    disambiguate_urls,
    feedback_counts,
    read_json_rows,
    write_feedback_file,
)
from datamodules.converters.__main__ import main
from datamodules.converters.msmarco import convert_msmarco
from datamodules.converters.trec_session import clean_text, convert_trec_session
from datamodules.converters.wikiqa import convert_wikiqa
from datamodules.reranker_records import load_reranker_feedback, parse_reranker_record

MSMARCO_ROWS = [
    {
        "query_id": 42,
        "query": "what is cost of sales",
        "query_type": "DESCRIPTION",
        "answers": ["..."],
        "wellFormedAnswers": [],
        "passages": {
            "is_selected": [0, 0, 1, 0, 1],
            "passage_text": [
                "Cost of sales is a measure of costs.",
                "A page about something else.",
                "Cost of sales refers to direct costs.",  # same url as passage 0, but positive
                "  Another passage of that page.  ",  # third time the same url
                "The accumulated total of all costs.",
            ],
            "url": [
                "http://a.example/cos",
                "http://b.example/",
                "http://a.example/cos",
                "http://a.example/cos",
                "http://c.example/",
            ],
        },
    },
    {
        "query_id": 7,
        "query": "no selected passage here",
        "passages": {"is_selected": [0, 0], "passage_text": ["x", "y"], "url": ["u1", "u2"]},
    },
]

TREC_ROWS = [
    {
        "session": 3,
        "interaction": 2,
        "topic_desc": "...",
        "query": "civil  war causes ",
        "results": [
            {
                "rank": 1,
                "url": "http://r1",
                "title": "Civil War &mdash; Causes",
                "snippet": 'He said \\"slavery\\" and&nbsp;more\\r \\tpages \\/ &amp; all',
                "clueweb12id": "cw-1",
                "clicked": 0,
            },
            {
                "rank": 2,
                "url": "http://r2",
                "title": "",
                "snippet": "",
                "clueweb12id": "cw-2",
                "clicked": 0,
            },  # nothing to show: dropped
            {
                "rank": 3,
                "url": "http://r3",
                "title": "Third",
                "snippet": "",
                "clueweb12id": "cw-3",
                "clicked": 1,
            },
            {
                "rank": 4,
                "url": "http://r1",
                "title": "Same url, other doc",
                "snippet": "s",
                "clueweb12id": "cw-4",
                "clicked": 1,
            },
            {
                "rank": 5,
                "url": "http://r5",
                "title": "",
                "snippet": "only a snippet",
                "clueweb12id": "cw-5",
                "clicked": 0,
            },
        ],
    },
    {"session": 3, "interaction": 3, "query": "no results", "results": []},
    {
        "session": 4,
        "interaction": 1,
        "query": "only empty results",
        "results": [
            {"rank": 1, "url": "u", "title": " ", "snippet": "", "clueweb12id": "c", "clicked": 1}
        ],
    },
    {
        "session": 9,
        "interaction": 1,
        "query": "civil war causes",  # same text as s3.i2, another session: its own record
        "results": [
            {"rank": 1, "url": "u", "title": "t", "snippet": "", "clueweb12id": "c", "clicked": 0}
        ],
    },
]


def _wikiqa_row(split: str, query: str, labels: list[int], title: str | None = None) -> dict:
    return {
        "split": split,
        "query": query,
        "candidates": [
            {"sentence": f"{query} sentence {i}", "title": title, "label": label}
            for i, label in enumerate(labels)
        ],
    }


WIKIQA_ROWS = [
    _wikiqa_row("train", "how are glacier caves formed?", [0, 1, 0]),
    _wikiqa_row("train", "what is a cave?", [0, 0]),
    _wikiqa_row("dev", "who wrote hamlet?", [1, 0, 1], title="Hamlet"),
    _wikiqa_row("test", "test question one?", [1, 0]),
    _wikiqa_row("train", "third train question?", [1]),
    _wikiqa_row("test", "test question two?", [0, 1]),
]


def _parse_all(records: list[dict]) -> list:
    return [parse_reranker_record(r, "converted.json", i) for i, r in enumerate(records)]


# --- MS MARCO ---------------------------------------------------------------------------------


def test_msmarco_disambiguates_repeated_urls_and_keeps_labels_per_passage():
    report = ConversionReport()
    records = convert_msmarco(MSMARCO_ROWS, report=report)
    assert len(records) == 2 and report.read == 2 and report.written == 2
    rec = records[0]
    assert rec["query_id"] == "42" and rec["timestamp"] is None
    assert [s["url"] for s in rec["all_sources"]] == [
        "http://a.example/cos",
        "http://b.example/",
        "http://a.example/cos#passage-2",
        "http://a.example/cos#passage-3",
        "http://c.example/",
    ]
    assert all(s["title"] == "" for s in rec["all_sources"])
    assert rec["all_sources"][3]["snippet"] == "Another passage of that page."
    assert rec["positive_sources"] == ["http://a.example/cos#passage-2", "http://c.example/"]
    assert rec["negative_sources"] == [
        "http://a.example/cos",
        "http://b.example/",
        "http://a.example/cos#passage-3",
    ]

    parsed = _parse_all(records)
    # Only the selected passages are positive, though passage 0 shares passage 2's page.
    assert parsed[0].grades == (0.0, 0.0, 1.0, 0.0, 1.0)
    assert [s.snippet for s in parsed[0].sources][:3] == [
        "Cost of sales is a measure of costs.",
        "A page about something else.",
        "Cost of sales refers to direct costs.",
    ]
    assert parsed[1].query_id == "7" and not parsed[1].has_positive


def test_msmarco_rejects_misaligned_passage_lists():
    row = {
        "query_id": 1,
        "query": "q",
        "passages": {"is_selected": [1], "passage_text": [], "url": []},
    }
    with pytest.raises(ValueError, match="passages have"):
        convert_msmarco([row])


def test_disambiguate_urls_avoids_collisions():
    urls = ["u", "u#passage-1", "u"]
    # The natural fragment for position 2 is free; a url that already holds it forces a suffix.
    assert disambiguate_urls(urls) == ["u", "u#passage-1", "u#passage-2"]
    assert disambiguate_urls(["u", "u", "u#passage-1"]) == ["u", "u#passage-1-2", "u#passage-1"]


# --- TREC Session -----------------------------------------------------------------------------


def test_trec_session_clicks_become_positives_in_rank_order():
    report = ConversionReport()
    records = convert_trec_session(TREC_ROWS, report=report, negatives="skip_above")
    assert [r["query_id"] for r in records] == ["s3.i2", "s9.i1"]
    rec = records[0]
    assert rec["query"] == "civil war causes"
    assert [s["url"] for s in rec["all_sources"]] == [
        "http://r1",
        "http://r3",
        "http://r1#rank-4",
        "http://r5",
    ]
    assert rec["positive_sources"] == ["http://r3", "http://r1#rank-4"]
    # Skip-above negatives: r5, below the last click, may never have been looked at.
    assert rec["negative_sources"] == ["http://r1"]
    parsed = parse_reranker_record(rec, "trec.json", 0)
    assert parsed.judged == (True, True, True, False)
    assert parsed.grades == (0.0, 1.0, 1.0, 0.0)
    every = convert_trec_session(TREC_ROWS, negatives="all")[0]
    assert every["negative_sources"] == ["http://r1", "http://r5"]
    assert _parse_all(records)[0].grades == (0.0, 1.0, 1.0, 0.0)
    assert records[1]["query"] == "civil war causes"  # same text, separate record
    assert report.read == 4 and report.written == 2
    assert report.dropped == {
        "result with neither title nor snippet": 2,
        "interaction with no usable result": 2,
    }


def test_trec_session_ranks_sorted_even_if_rows_are_not():
    row = {
        "session": 1,
        "interaction": 1,
        "query": "q",
        "results": [
            {"rank": 2, "url": "b", "title": "B", "snippet": "", "clueweb12id": "2", "clicked": 1},
            {"rank": 1, "url": "a", "title": "A", "snippet": "", "clueweb12id": "1", "clicked": 1},
        ],
    }
    (rec,) = convert_trec_session([row])
    assert [s["url"] for s in rec["all_sources"]] == ["a", "b"]
    assert rec["positive_sources"] == ["a", "b"]


def test_trec_session_text_cleaning():
    (rec,) = convert_trec_session(TREC_ROWS[:1])
    first = rec["all_sources"][0]
    assert first["title"] == "Civil War \u2014 Causes"
    assert first["snippet"] == 'He said "slavery" and more pages / & all'
    assert clean_text("uk \\u00a3 &#8217;s  \u00a0 x") == "uk \u00a3 \u2019s x"
    assert clean_text(None) == ""
    # A single pass: a double-escaped entity stays readable text, nothing is guessed.
    assert clean_text("&amp;rsquo;") == "&rsquo;"


# --- WikiQA -----------------------------------------------------------------------------------


def test_wikiqa_refuses_the_test_split():
    with pytest.raises(ValueError, match="test-only"):
        convert_wikiqa(WIKIQA_ROWS, splits=("train", "test"))
    with pytest.raises(ValueError, match="unknown WikiQA split"):
        convert_wikiqa(WIKIQA_ROWS, splits=("validation",))


def test_wikiqa_skips_test_rows_and_synthesises_unique_stable_urls():
    report = ConversionReport()
    records = convert_wikiqa(WIKIQA_ROWS, report=report)
    assert [r["query_id"] for r in records] == [
        "wikiqa-train-0",
        "wikiqa-train-1",
        "wikiqa-dev-0",
        "wikiqa-train-2",
    ]
    assert not any("test" in r["query_id"] for r in records)
    assert report.dropped == {"test split (test-only, not converted)": 2}
    assert any("test-only" in note for note in report.notes)

    all_urls = [s["url"] for r in records for s in r["all_sources"]]
    assert len(all_urls) == len(set(all_urls))  # unique within queries and across them
    assert records[0]["all_sources"][1] == {
        "title": "",
        "url": "wikiqa://train/0/1",
        "snippet": "how are glacier caves formed? sentence 1",
    }
    assert records[0]["positive_sources"] == ["wikiqa://train/0/1"]
    assert records[2]["positive_sources"] == ["wikiqa://dev/0/0", "wikiqa://dev/0/2"]
    assert records[2]["all_sources"][0]["title"] == "Hamlet"
    assert records[1]["positive_sources"] == []

    parsed = _parse_all(records)
    assert parsed[2].grades == (1.0, 0.0, 1.0)
    # Stable: converting one split alone gives the same ids and urls.
    dev_only = convert_wikiqa(WIKIQA_ROWS, splits=["dev"])
    assert dev_only == [records[2]]


# --- Every converter's output is valid app feedback ---------------------------------------------


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(lambda: convert_msmarco(MSMARCO_ROWS), id="msmarco"),
        pytest.param(lambda: convert_trec_session(TREC_ROWS), id="trec-session"),
        pytest.param(lambda: convert_wikiqa(WIKIQA_ROWS), id="wikiqa"),
    ],
)
def test_converted_records_pass_the_app_parser(records, tmp_path: Path):
    records = records()
    parsed = _parse_all(records)
    assert len(parsed) == len(records)
    for raw, rec in zip(records, parsed, strict=True):
        assert sum(g > 0 for g in rec.grades) == len(raw["positive_sources"])
        assert len({s.url for s in rec.sources}) == len(rec.sources)
    out = write_feedback_file(records, tmp_path / "out.json")
    loaded, report = load_reranker_feedback(out)
    assert report.kept == len(records) and report.n_dropped == 0
    assert json.loads(out.read_text(encoding="utf-8"))["reranker_data"] == records


# --- Files and CLI ------------------------------------------------------------------------------


def test_read_json_rows_splits_jsonl_on_newlines_only(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    # U+0085 and U+2028 inside a JSON string must not split the line (str.splitlines would).
    path.write_text(
        json.dumps({"a": "x\u0085y\u2028z"}, ensure_ascii=False) + "\n\n" + '{"a": 2}\n',
        encoding="utf-8",
    )
    assert read_json_rows(path) == [{"a": "x\u0085y\u2028z"}, {"a": 2}]


def test_cli_converts_then_refuses_to_overwrite(tmp_path: Path, capsys):
    src = tmp_path / "wikiqa.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in WIKIQA_ROWS) + "\n", encoding="utf-8")
    out = tmp_path / "wikiqa_feedback.json"

    assert main(["wikiqa", "--input", str(src), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 records" in printed and "2 x test split" in printed
    written = out.read_text(encoding="utf-8")
    assert feedback_counts(json.loads(written)["reranker_data"])["records"] == 4

    assert main(["wikiqa", "--input", str(src), "--output", str(out), "--splits", "dev"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == written  # untouched

    assert (
        main(
            ["wikiqa", "--input", str(src), "--output", str(out), "--splits", "dev", "--overwrite"]
        )
        == 0
    )
    assert len(json.loads(out.read_text(encoding="utf-8"))["reranker_data"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wikiqa.jsonl", "wikiqa_feedback.json"]


def test_cli_refuses_the_wikiqa_test_split(tmp_path: Path):
    src = tmp_path / "wikiqa.jsonl"
    src.write_text(json.dumps(WIKIQA_ROWS[3]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(
            [
                "wikiqa",
                "--input",
                str(src),
                "--output",
                str(tmp_path / "o.json"),
                "--splits",
                "test",
            ]
        )
    # A file with test rows only gives nothing to write: error, and no output file.
    assert main(["wikiqa", "--input", str(src), "--output", str(tmp_path / "o.json")]) == 1
    assert not (tmp_path / "o.json").exists()


def test_write_feedback_file_refuses_existing_output(tmp_path: Path):
    out = tmp_path / "f.json"
    out.write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError):
        write_feedback_file([], out)
    assert out.read_text(encoding="utf-8") == "keep me"
    write_feedback_file([], out, overwrite=True)
    assert json.loads(out.read_text(encoding="utf-8")) == {"reranker_data": []}
