"""Converters to query-rewriting data: TREC Session 2013 sessions and CANARD train pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.converters import ConversionReport, read_json_rows, write_feedback_file
from datamodules.converters.__main__ import main
from datamodules.converters.canard import check_pair, convert_canard, pair_counts
from datamodules.converters.trec_session_rewriting import (
    check_rewriting_record,
    convert_trec_session_rewriting,
    rewriting_counts,
)
from datamodules.feedback import FeedbackError
from datamodules.rewrite_feedback import (
    load_rewriting_data,
    mine_target,
    parse_rewrite_pair,
    parse_rewriting_record,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path("/work/shared/data")
TREC_SERPS = SHARED / "trec_session_2013" / "session2013_serps.jsonl"
CANARD_PAIRS = SHARED / "canard_train" / "canard_pairs.jsonl"
SHIPPED = REPO / "training_data" / "trec_session2013_rewriting.json"


def _res(rank: int, url: str, clicked: int = 0, title: str = "T", snippet: str = "") -> dict:
    return {
        "rank": rank,
        "url": url,
        "title": title,
        "snippet": snippet,
        "clueweb12id": f"cw-{url}-{rank}",
        "clicked": clicked,
    }


def _row(session: int, interaction: int, query: str, results: list[dict]) -> dict:
    return {
        "session": session,
        "interaction": interaction,
        "topic_desc": "...",
        "query": query,
        "results": results,
    }


SESSION_ROWS = [
    # Session 1, rows out of order on purpose.
    _row(1, 2, "cheap flights paris", [_res(1, "c", 1), _res(2, "b")]),
    _row(
        1,
        1,
        "Cheap  Flights",
        [
            _res(1, "a", title="A &amp; co", snippet='say \\"hi\\"'),
            _res(2, "b", 1),
            _res(3, "a", 1, title="Same url, other document"),  # repeat: first kept
            _res(4, "x", title="", snippet=" "),  # nothing to show: dropped
        ],
    ),
    _row(1, 3, "CHEAP flights", [_res(1, "a", 1), _res(2, "b")]),  # repeats interaction 1
    _row(1, 4, "paris hotels", [_res(1, "d"), _res(2, "e")]),
    # Session 2: one query only.
    _row(2, 1, "lonely query", [_res(1, "s2", 1)]),
    # Session 3: the earlier query equals every later one.
    _row(3, 1, "same  Query", [_res(1, "s3", 1)]),
    _row(3, 2, "same query", [_res(1, "s3", 1)]),
    # Session 4: no click anywhere.
    _row(4, 1, "q one", [_res(1, "u1")]),
    _row(4, 2, "q two", [_res(1, "u2")]),
    # Session 5: the first query found nothing; the last one found nothing either.
    _row(5, 1, "before", []),
    _row(5, 2, "after", [_res(1, "f", 1), _res(2, "g")]),
    _row(5, 3, "empty later", []),
]


def _urls(candidate: dict) -> list[str]:
    return [s["url"] for s in candidate["sources"]]


def _check_with_app_parser(records: list[dict]) -> None:
    """The converter's structural check and the parser training reads the records with."""
    for i, record in enumerate(records):
        check_rewriting_record(record, "converted.json", i)
        parse_rewriting_record(record, "converted.json", i)


# --- TREC Session -> query rewriting ----------------------------------------------------------


def test_trec_rewriting_candidates_are_the_later_queries_and_clicks_become_selected():
    records = convert_trec_session_rewriting(SESSION_ROWS)
    assert [r["query_id"] for r in records] == ["s1.i1", "s1.i2", "s1.i3", "s5.i1"]
    first = records[0]
    assert first["original_query"] == "Cheap Flights"
    assert first["query_generator"] == "trec_session_2013"
    assert first["timestamp"] is None
    mapping = first["query_source_mapping"]
    # i..end in session order; interaction 3 repeats interaction 1's text: left out.
    assert list(mapping) == ["original query", "session query 2", "session query 4"]
    assert [c["query"] for c in mapping.values()] == [
        "Cheap Flights",
        "cheap flights paris",
        "paris hotels",
    ]
    assert mapping["session query 2"]["reasoning"] == "TREC Session 2013 session 1 interaction 2"
    # Rank order, repeated url kept once (first occurrence), textless result dropped, text cleaned.
    assert _urls(mapping["original query"]) == ["a", "b"]
    assert mapping["original query"]["sources"][0] == {
        "title": "A & co",
        "url": "a",
        "snippet": 'say "hi"',
    }
    # Clicks of interactions 1..4, distinct, first-click order (a: the repeat at rank 3).
    assert first["selected_sources"] == ["b", "a", "c"]

    second = records[1]
    assert second["original_query"] == "cheap flights paris"
    assert list(second["query_source_mapping"]) == [
        "original query",
        "session query 3",
        "session query 4",
    ]
    # Clicks before the earlier query (interaction 1's b) do not count; a clicked later does.
    assert second["selected_sources"] == ["c", "a"]
    assert records[2]["selected_sources"] == ["a"]
    assert list(records[2]["query_source_mapping"]) == ["original query", "session query 4"]

    # An original query that found nothing is still the record's original query.
    s5 = records[3]
    assert s5["query_source_mapping"]["original query"]["sources"] == []
    assert list(s5["query_source_mapping"]) == ["original query", "session query 2"]
    assert s5["selected_sources"] == ["f"]
    _check_with_app_parser(records)

    # Targets as training mines them: the best-covering candidate, ties to the original query.
    mined = [mine_target(parse_rewriting_record(r, "c.json", i)) for i, r in enumerate(records)]
    assert [m.query for m in mined] == [
        "Cheap Flights",
        "cheap flights paris",
        "CHEAP flights",
        "after",
    ]
    assert [m.is_original for m in mined] == [True, True, True, False]


def test_trec_rewriting_skips_and_counts():
    report = ConversionReport()
    records = convert_trec_session_rewriting(SESSION_ROWS, report=report)
    assert report.read == len(SESSION_ROWS) and report.written == len(records) == 4
    assert report.dropped == {
        "session with one query": 1,  # session 2
        "last query of its session (no later query)": 4,  # sessions 1, 3, 4, 5
        "query equal to every later query of its session": 1,  # s3.i1
        "no click from this query to the end of its session": 1,  # s4.i1
        "no later query with a result": 1,  # s5.i2: only s5.i3 follows, with no result
        "later query with no usable result (not a candidate)": 2,  # s5.i3, for s5.i1 and s5.i2
        "candidate repeating an earlier query of its record (first kept)": 1,  # s1.i3 in s1.i1
        "repeated url in a result list (first occurrence kept)": 1,
        "result with neither title nor snippet": 1,
    }
    # Every interaction is a record or accounted for by exactly one interaction-level reason.
    per_interaction = (
        "session with one query",
        "last query of its session (no later query)",
        "query equal to every later query of its session",
        "no click from this query to the end of its session",
        "no later query with a result",
    )
    assert report.written + sum(report.dropped[k] for k in per_interaction) == report.read
    counts = rewriting_counts(records)
    assert counts == {
        "records": 4,
        "candidates": 3 + 3 + 2 + 2,
        "sources": (2 + 2 + 2) + (2 + 2 + 2) + (2 + 2) + (0 + 2),
        "selected_sources": 3 + 2 + 1 + 1,
        # s1.i1: c only in session query 2 (1 vs b, a = 2): no; s1.i2: c, a -> original 1,
        # session query 3 covers a: 1: no; s1.i3: no; s5.i1: yes (0 vs 1).
        "later_query_covers_more": 1,
    }


def test_trec_rewriting_rejects_bad_clicks_and_repeated_interactions():
    with pytest.raises(ValueError, match="clicked is 2"):
        convert_trec_session_rewriting([_row(1, 1, "q", [_res(1, "u", 2)])])
    with pytest.raises(ValueError, match="repeated interaction numbers"):
        convert_trec_session_rewriting([_row(1, 1, "q", []), _row(1, 1, "r", [])])


def test_check_rewriting_record_rejects_unusable_records():
    (good, *_) = convert_trec_session_rewriting(SESSION_ROWS)
    check_rewriting_record(good, "f.json", 0)
    bad_selected = {**good, "selected_sources": ["nowhere"]}
    with pytest.raises(FeedbackError, match="shown by no candidate"):
        check_rewriting_record(bad_selected, "f.json", 0)
    mapping = json.loads(json.dumps(good["query_source_mapping"]))
    mapping["original query"]["sources"].append(mapping["original query"]["sources"][0])
    with pytest.raises(FeedbackError, match="not distinct"):
        check_rewriting_record({**good, "query_source_mapping": mapping}, "f.json", 0)
    with pytest.raises(FeedbackError, match="original_query"):
        check_rewriting_record({**good, "original_query": " "}, "f.json", 0)
    # Sources given as bare urls (the app allows it) are fine.
    as_urls = {n: {**c, "sources": _urls(c)} for n, c in good["query_source_mapping"].items()}
    check_rewriting_record({**good, "query_source_mapping": as_urls}, "f.json", 0)


def test_cli_trec_session_rewriting_writes_one_record_a_line_and_refuses_overwrite(
    tmp_path: Path, capsys
):
    src = tmp_path / "serps.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in SESSION_ROWS) + "\n", encoding="utf-8")
    out = tmp_path / "rewriting.json"
    assert main(["trec-session-rewriting", "--input", str(src), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 records, 10 candidates" in printed and "7 selected sources" in printed
    text = out.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == '{"query_rewriting_data":[' and lines[-1] == "]}" and len(lines) == 6
    assert json.loads(text) == {
        "query_rewriting_data": convert_trec_session_rewriting(SESSION_ROWS)
    }

    assert main(["trec-session-rewriting", "--input", str(src), "--output", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == text
    args = ["trec-session-rewriting", "--input", str(src), "--output", str(out), "--overwrite"]
    assert main(args) == 0
    assert out.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rewriting.json", "serps.jsonl"]


# --- CANARD -> rewrite pairs --------------------------------------------------------------------


def _canard(split: str, dialog: str, turn: int, q: str, r: str, prev: list[tuple[str, str]]):
    return {
        "id": f"{dialog}_q#{turn}",
        "split": split,
        "dialog_id": dialog,
        "turn": turn,
        "question": q,
        "rewrite": r,
        "prev_questions": [p[0] for p in prev],
        "prev_rewrites": [p[1] for p in prev],
    }


T1 = ("what team did unitas play for", "what team did Johnny Unitas play for?")
T2 = ("did they win", "did the Colts win?")
CANARD_ROWS = [
    _canard("train", "D1", 0, *T1, []),
    _canard("train", "D1", 1, "  did they   win ", " did the Colts win? ", [T1]),
    _canard("dev", "DEV", 0, "dev question secret", "dev rewrite secret", []),
    _canard("train", "D1", 2, "and then?", "", [T1, T2]),  # empty rewrite: skipped
    _canard("train", "D1", 3, "where did he go", "where did Unitas go", [T1, T2, ("", " ")]),
    _canard("dev", "DEV", 1, "dev follow-up secret", "dev follow-up rewrite", [("a", "b")]),
]


def test_canard_train_only_with_rewritten_history_by_default():
    report = ConversionReport()
    pairs = convert_canard(CANARD_ROWS, report=report)
    # session_id = the dialog: the split keeps a dialog on one side.
    assert pairs == [
        {"source": T1[0], "target": T1[1], "history": [], "session_id": "D1"},
        {
            "source": "did they win",
            "target": "did the Colts win?",
            "history": [T1[1]],
            "session_id": "D1",
        },
        {
            "source": "where did he go",
            "target": "where did Unitas go",
            "history": [T1[1], T2[1]],
            "session_id": "D1",
        },
    ]
    assert "secret" not in json.dumps(pairs)  # dev rows never emitted
    assert report.read == 6 and report.written == 3
    assert report.dropped == {
        "dev split (test-only, not converted)": 2,
        "empty question or rewrite": 1,
        "empty history entry (left out)": 1,
    }
    assert any("test-only" in note for note in report.notes)
    for i, pair in enumerate(pairs):
        check_pair(pair, "pairs.jsonl", i)
        parse_rewrite_pair(pair, "pairs.jsonl", i)


def test_canard_history_of_raw_questions():
    pairs = convert_canard(CANARD_ROWS, history="questions")
    assert [p["history"] for p in pairs] == [[], [T1[0]], [T1[0], T2[0]]]
    assert [p["target"] for p in pairs] == [T1[1], "did the Colts win?", "where did Unitas go"]
    with pytest.raises(ValueError, match="history must be"):
        convert_canard(CANARD_ROWS, history="answers")


def test_canard_unknown_split_is_an_error_and_bad_pairs_are_rejected():
    with pytest.raises(ValueError, match="unknown CANARD split"):
        convert_canard([_canard("validation", "D", 0, "q", "r", [])])
    assert convert_canard([_canard("test", "D", 0, "q", "r", [])]) == []
    with pytest.raises(FeedbackError, match="target"):
        check_pair({"source": "q", "target": " ", "history": []}, "p.jsonl", 0)
    with pytest.raises(FeedbackError, match="history"):
        check_pair({"source": "q", "target": "r", "history": [""]}, "p.jsonl", 0)


def test_cli_canard_writes_json_lines_and_refuses_overwrite(tmp_path: Path, capsys):
    src = tmp_path / "canard_pairs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in CANARD_ROWS) + "\n", encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    assert main(["canard", "--input", str(src), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 pairs" in printed and "2 x dev split" in printed
    assert read_json_rows(out) == convert_canard(CANARD_ROWS)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    loaded, report = load_rewriting_data(out)  # what training reads
    assert report.kept == 3 and [p.history for p in loaded][1] == (T1[1],)

    args = ["canard", "--input", str(src), "--output", str(out), "--history", "questions"]
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert read_json_rows(out) == convert_canard(CANARD_ROWS)  # untouched
    assert main([*args, "--overwrite"]) == 0
    assert read_json_rows(out) == convert_canard(CANARD_ROWS, history="questions")

    dev_only = tmp_path / "dev.jsonl"
    dev_only.write_text(json.dumps(CANARD_ROWS[2]) + "\n", encoding="utf-8")
    assert main(["canard", "--input", str(dev_only), "--output", str(tmp_path / "d.jsonl")]) == 1
    assert not (tmp_path / "d.jsonl").exists()


def test_write_feedback_file_top_key_and_json_lines(tmp_path: Path):
    rows = [{"a": 1}, {"a": "é"}]
    out = write_feedback_file(rows, tmp_path / "r.json", top_key="query_rewriting_data")
    assert json.loads(out.read_text(encoding="utf-8")) == {"query_rewriting_data": rows}
    out = write_feedback_file(rows, tmp_path / "p.jsonl", jsonl=True)
    assert out.read_text(encoding="utf-8") == '{"a":1}\n{"a":"é"}\n'
    with pytest.raises(FileExistsError):
        write_feedback_file([], out, jsonl=True)
    write_feedback_file([], tmp_path / "e.json", top_key="query_rewriting_data")
    assert json.loads((tmp_path / "e.json").read_text()) == {"query_rewriting_data": []}


# --- The real files, where this machine has them; the hand-made rows otherwise -----------------


def test_real_or_hand_made_inputs_convert_cleanly():
    """Invariants on the real data sets when present (else on the rows above), and the shipped
    TREC file is exactly what the converter makes of the real data."""
    serps = read_json_rows(TREC_SERPS) if TREC_SERPS.is_file() else SESSION_ROWS
    records = convert_trec_session_rewriting(serps)
    _check_with_app_parser(records)
    by_id = {(r["session"], r["interaction"]): r for r in serps}
    for record in records:
        session, first = (int(x) for x in record["query_id"][1:].split(".i"))
        later = sorted(k for (s, k) in by_id if s == session and k > first)
        names = list(record["query_source_mapping"])
        assert names[0] == "original query" and len(names) >= 2
        assert all(int(n.rsplit(" ", 1)[1]) in later for n in names[1:])
        clicked = {
            res["url"]
            for k in [first, *later]
            for res in by_id[(session, k)]["results"]
            if res["clicked"]
        }
        assert record["selected_sources"] and set(record["selected_sources"]) <= clicked
    if TREC_SERPS.is_file():
        shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))["query_rewriting_data"]
        assert shipped == json.loads(json.dumps(records))

    rows = read_json_rows(CANARD_PAIRS) if CANARD_PAIRS.is_file() else CANARD_ROWS
    pairs = convert_canard(rows)
    train = [r for r in rows if r["split"] == "train"]
    assert len(pairs) == sum(bool(r["question"].strip() and r["rewrite"].strip()) for r in train)

    def text(r: dict) -> tuple[str, str]:
        return " ".join(r["question"].split()), " ".join(r["rewrite"].split())

    dev_only = {text(r) for r in rows if r["split"] == "dev"} - {text(r) for r in train}
    assert dev_only and not dev_only & {(p["source"], p["target"]) for p in pairs}
    assert pair_counts(pairs)["pairs"] == len(pairs)


def test_shipped_trec_rewriting_file_is_valid():
    records = json.loads(SHIPPED.read_text(encoding="utf-8"))["query_rewriting_data"]
    assert len(records) > 200
    _check_with_app_parser(records)
    assert len(SHIPPED.read_text(encoding="utf-8").splitlines()) == len(records) + 2
