"""MS MARCO v1.1 QnA rows -> app reranker feedback.

Source: MS MARCO v1.1 question answering data (Microsoft; real Bing queries, up to 10 passages
each, with a human ``is_selected`` flag on the passages used to write the answer), as the Hugging
Face ``ms_marco`` ``v1.1`` rows: ``{"query_id", "query", "passages": {"is_selected": [...],
"passage_text": [...], "url": [...]}, ...}``. Licence: MS MARCO terms, **non-commercial research
use only**; converted files carry that restriction.

Mapping: one row -> one record; passages keep their order (the baseline ranking);
``is_selected == 1`` -> positive (in display order: the data has no pick order), others
negative; ``title`` is ``""`` (MS MARCO has no titles), ``snippet`` is the passage text,
``query_id`` is ``str(query_id)``, ``timestamp`` is null.

Repeated urls: a query often shows several passages of one page (in the v1.1 sample, 173 of 200
queries), sometimes with different labels. Because the parser marks every source with a positive
url positive, the first passage keeps the url and each later passage of the same url gets
``#passage-{position}`` appended, ``position`` being its 0-based index in the row's passage list.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datamodules.converters import ConversionReport, disambiguate_urls, make_record, read_json_rows


def read_msmarco(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an MS MARCO v1.1 QnA dump: a JSON list (``.json``) or JSON Lines (``.jsonl``)."""
    return read_json_rows(path)


def _flag(value: Any, where: str) -> bool:
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise ValueError(f"{where}: is_selected must be 0 or 1, got {value!r}")


def convert_msmarco(
    rows: Iterable[dict[str, Any]], *, report: ConversionReport | None = None
) -> list[dict[str, Any]]:
    """Convert MS MARCO v1.1 QnA rows into app records (see the module docstring).

    Passages with empty text are dropped; a row with an empty query or no passage left is
    dropped; each drop is counted in ``report``. A passage with an empty url gets
    ``msmarco://{query_id}/{position}``. Malformed rows (passage lists of different lengths,
    labels other than 0/1) raise :class:`ValueError`.
    """
    report = report if report is not None else ConversionReport()
    records: list[dict[str, Any]] = []
    for row_no, row in enumerate(rows):
        report.read += 1
        query_id = str(row.get("query_id", row_no))
        where = f"row {row_no} (query_id {query_id})"
        query = (row.get("query") or "").strip()
        passages = row.get("passages") or {}
        texts = passages.get("passage_text") or []
        urls = passages.get("url") or []
        selected = passages.get("is_selected") or []
        if not (len(texts) == len(urls) == len(selected)):
            raise ValueError(
                f"{where}: passages have {len(texts)} texts, {len(urls)} urls and "
                f"{len(selected)} is_selected flags"
            )
        if not query:
            report.drop("empty query")
            continue
        kept: list[tuple[int, str, str, bool]] = []
        for position, (text, url, flag) in enumerate(zip(texts, urls, selected, strict=True)):
            is_positive = _flag(flag, f"{where}: passage {position}")
            text = (text or "").strip()
            if not text:
                report.drop("passage with empty text")
                continue
            url = (url or "").strip() or f"msmarco://{query_id}/{position}"
            kept.append((position, url, text, is_positive))
        if not kept:
            report.drop("no passage left")
            continue
        unique_urls = disambiguate_urls(
            [url for _, url, _, _ in kept], [f"passage-{pos}" for pos, _, _, _ in kept]
        )
        if len(set(url for _, url, _, _ in kept)) < len(kept):
            report.note("repeated urls within a query got '#passage-{position}' appended")
        sources = [
            {"title": "", "url": url, "snippet": text}
            for url, (_, _, text, _) in zip(unique_urls, kept, strict=True)
        ]
        records.append(
            make_record(
                query=query,
                query_id=query_id,
                sources=sources,
                positive=[p for _, _, _, p in kept],
            )
        )
    report.written += len(records)
    return records
