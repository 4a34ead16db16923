"""CANARD train question-in-context rewrites -> rewrite pairs (JSON Lines).

Source: CANARD (Elgohary, Peskov, Boyd-Graber, EMNLP 2019), read as the derived
``canard_pairs.jsonl`` (one line per question: ``{"id", "split", "dialog_id", "turn",
"question", "rewrite", "prev_questions", "prev_rewrites"}``, the ``prev_*`` lists being the
earlier turns of the same QuAC dialog, oldest first). Licence: CC BY-SA 4.0 (share-alike), so
the converted pairs are not shipped in this repository: write them outside it, e.g.
``python -m datamodules.converters canard --input .../canard_pairs.jsonl
--output /tmp/canard_train_pairs.jsonl``.

Mapping: one train row -> one pair ``{"source": question, "target": rewrite, "history": [...]}``.
``history`` is the dialog's earlier turns, oldest first: with ``history="rewrites"`` (default)
in their self-contained rewritten form, which is what an app that rewrites queries actually
carries forward; with ``history="questions"`` the raw earlier questions as the user typed them.
Texts are stripped and runs of whitespace collapse to one space; empty history entries are left
out. Rows with an empty question or rewrite are skipped and counted. Rows whose rewrite equals the
question (about 6% of train: the question was already self-contained) are kept: leaving a
self-contained query alone is part of the task.

Splits: only ``split == "train"`` rows are converted. CANARD dev (and test) is TEST-ONLY for this
project (it is the query-rewriting benchmark, with the official history and multiple references
in ``/work/shared/data/canard/``): dev rows are never converted nor emitted, only counted; a
split this converter does not know is an error rather than a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from datamodules.converters import ConversionReport, read_json_rows
from datamodules.feedback import FeedbackError

HistoryMode = Literal["rewrites", "questions"]
HISTORY_MODES: tuple[str, ...] = ("rewrites", "questions")
TRAIN_SPLIT = "train"
# Dev (and test) are test-only: evaluated on, never trained or tuned on. Never convert them.
TEST_ONLY_SPLITS: tuple[str, ...] = ("dev", "test")

_WHITESPACE = re.compile(r"\s+")


def clean_text(text: Any) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    return _WHITESPACE.sub(" ", text).strip()


def read_canard(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``canard_pairs.jsonl`` (or a JSON list of the same rows), every split."""
    return read_json_rows(path)


def convert_canard(
    rows: Iterable[dict[str, Any]],
    history: HistoryMode = "rewrites",
    *,
    report: ConversionReport | None = None,
) -> list[dict[str, Any]]:
    """CANARD train rows -> ``{"source", "target", "history"}`` pairs (see the module doc).

    Dev/test rows are skipped and counted, never returned.
    """
    if history not in HISTORY_MODES:
        raise ValueError(f"history must be one of {HISTORY_MODES}, got {history!r}")
    history_key = "prev_rewrites" if history == "rewrites" else "prev_questions"
    report = report if report is not None else ConversionReport()
    pairs: list[dict[str, Any]] = []
    for row in rows:
        report.read += 1
        split = row.get("split")
        if split in TEST_ONLY_SPLITS:
            # Test-only data: must never reach a training file.
            report.drop(f"{split} split (test-only, not converted)")
            report.note("CANARD dev/test rows are test-only and were not converted")
            continue
        if split != TRAIN_SPLIT:
            raise ValueError(f"row {row.get('id')!r}: unknown CANARD split {split!r}")
        source = clean_text(row.get("question"))
        target = clean_text(row.get("rewrite"))
        if not source or not target:
            report.drop("empty question or rewrite")
            continue
        earlier = row.get(history_key)
        if not isinstance(earlier, list):
            raise ValueError(f"row {row.get('id')!r}: {history_key} is not a list")
        turns = [clean_text(turn) for turn in earlier]
        if not all(turns):
            report.drop("empty history entry (left out)", sum(not t for t in turns))
        pair = {"source": source, "target": target, "history": [t for t in turns if t]}
        if row.get("dialog_id"):  # keeps a dialog on one side of the train/validation split
            pair["session_id"] = str(row["dialog_id"])
        pairs.append(pair)
    report.written += len(pairs)
    return pairs


def check_pair(raw: Any, file: str, index: int) -> None:
    """One rewrite pair is ``{"source": str, "target": str, "history": [str, ...]}``, non-empty
    texts; raises :class:`FeedbackError` otherwise."""
    if not isinstance(raw, dict):
        raise FeedbackError(
            f"expected an object, got {type(raw).__name__}", file=file, record=index
        )
    for key in ("source", "target"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise FeedbackError("expected a non-empty string", file=file, record=index, field=key)
    turns = raw.get("history")
    if not isinstance(turns, list) or not all(isinstance(t, str) and t.strip() for t in turns):
        raise FeedbackError(
            "expected a list of non-empty strings", file=file, record=index, field="history"
        )


def pair_counts(pairs: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Pairs, pairs with history, history turns, pairs whose target equals the source."""
    counts = {"pairs": 0, "with_history": 0, "history_turns": 0, "target_equals_source": 0}
    for p in pairs:
        counts["pairs"] += 1
        counts["with_history"] += bool(p["history"])
        counts["history_turns"] += len(p["history"])
        counts["target_equals_source"] += p["target"] == p["source"]
    return counts
