"""WikiQA train/dev -> app reranker feedback. The test split is refused.

Source: WikiQA (Yang, Yih and Meek, EMNLP 2015; Microsoft Research): Bing query-log questions,
each with the sentences of a Wikipedia summary as candidates and a binary label per sentence;
read here as the derived JSON Lines ``wikiqa_grouped.jsonl``, one line per question:
``{"split", "query", "candidates": [{"sentence", "title", "label"}]}``. Licence: Microsoft
Research Data License Agreement, **non-commercial research use only**; converted files carry
that restriction.

Test split: WikiQA's ``test`` split is a benchmark; it must never be trained on, so this
converter refuses to convert it (asking for it raises :class:`ValueError`) and skips its rows,
counting them in the report. Only ``train`` and ``dev`` are converted.

Mapping: one question -> one record; candidates keep their order; ``label == 1`` -> positive
(in display order), others negative; ``title`` is the candidate's Wikipedia page title (``""``
where the data has none: the train split), ``snippet`` the sentence as given (WikiQA's own
tokenisation is kept). WikiQA has no urls, so stable ones are synthesised:
``wikiqa://{split}/{n}/{i}``, ``n`` the question's 0-based index within its split (in file
order, counting every question of that split) and ``i`` the candidate's 0-based index;
``query_id`` is ``wikiqa-{split}-{n}``; ``timestamp`` null. About 59% of the questions have no
positive sentence; they are kept (all-negative lists).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datamodules.converters import ConversionReport, make_record, read_json_rows

TRAINABLE_SPLITS = ("train", "dev")
TEST_ONLY_SPLITS = ("test",)


def read_wikiqa(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``wikiqa_grouped.jsonl`` (or a JSON list of the same rows)."""
    return read_json_rows(path)


def convert_wikiqa(
    rows: Iterable[dict[str, Any]],
    *,
    splits: Sequence[str] = TRAINABLE_SPLITS,
    report: ConversionReport | None = None,
) -> list[dict[str, Any]]:
    """Convert WikiQA questions of ``splits`` (train and/or dev) into app records.

    Raises :class:`ValueError` if ``splits`` names the test split or an unknown split, or if a
    row has an unknown split. Rows of the test split, and of a known split not asked for, are
    skipped and counted in ``report``.
    """
    report = report if report is not None else ConversionReport()
    splits = tuple(splits)
    for split in splits:
        if split in TEST_ONLY_SPLITS:
            raise ValueError(
                f"WikiQA split {split!r} is test-only and is never converted into training data"
            )
        if split not in TRAINABLE_SPLITS:
            raise ValueError(f"unknown WikiQA split {split!r}; choose from {TRAINABLE_SPLITS}")
    index_in_split: Counter = Counter()
    records: list[dict[str, Any]] = []
    for row_no, row in enumerate(rows):
        report.read += 1
        split = row.get("split")
        if split not in TRAINABLE_SPLITS + TEST_ONLY_SPLITS:
            raise ValueError(f"row {row_no}: unknown WikiQA split {split!r}")
        n = index_in_split[split]
        index_in_split[split] += 1
        if split in TEST_ONLY_SPLITS:
            report.drop(f"{split} split (test-only, not converted)")
            report.note("WikiQA test split skipped: it is test-only")
            continue
        if split not in splits:
            report.drop(f"{split} split (not asked for)")
            continue
        query = (row.get("query") or "").strip()
        if not query:
            report.drop("empty query")
            continue
        sources: list[dict[str, str]] = []
        positive: list[bool] = []
        for i, cand in enumerate(row.get("candidates") or []):
            sentence = (cand.get("sentence") or "").strip()
            title = (cand.get("title") or "").strip()
            if not sentence and not title:
                report.drop("candidate with neither sentence nor title")
                continue
            label = cand.get("label")
            if label not in (0, 1):
                raise ValueError(f"row {row_no}: candidate {i}: label is {label!r}")
            sources.append(
                {"title": title, "url": f"wikiqa://{split}/{n}/{i}", "snippet": sentence}
            )
            positive.append(bool(label))
        if not sources:
            report.drop("question with no candidate")
            continue
        records.append(
            make_record(
                query=query, query_id=f"wikiqa-{split}-{n}", sources=sources, positive=positive
            )
        )
    report.written += len(records)
    return records
