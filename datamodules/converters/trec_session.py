"""TREC Session Track 2013 SERPs and clicks -> app reranker feedback.

Source: TREC Session Track 2013 (NIST, ``sessiontrack2013.xml``): real search sessions, each
query's result list (rank, url, title, snippet, ClueWeb12 id) and the results the user clicked;
read here as the derived JSON Lines ``session2013_serps.jsonl``, one line per interaction:
``{"session", "interaction", "query", "results": [{"rank", "url", "title", "snippet",
"clueweb12id", "clicked"}]}``. Licence: public TREC research data distributed by NIST
(trec.nist.gov/data/session2013.html) for research use; no relevance judgments are included,
only clicks.

Mapping: one interaction -> one record (the same query text in several sessions stays several
records); results in rank order; ``clicked == 1`` -> positive (in rank order: the JSONL has no
click order); ``query_id`` is ``s{session}.i{interaction}``; ``timestamp`` null.

Negatives (``negatives=``): ``"all"`` (default) makes every unclicked result a negative, the
app's own convention. Clicks are position-biased, though: users click near the top and may never
look at results further down, so "not clicked" below the last click says little about
relevance. ``"skip_above"`` follows Joachims (KDD 2002, "Optimizing Search Engines using
Clickthrough Data"): only results the user skipped *above* a click are negatives; results below
the last click stay in ``all_sources`` (the displayed list, for evaluation) but in neither label
list, i.e. unjudged, and training leaves them out. With the default recipe, "all" measured
slightly better on validation feedback (best val NDCG@10 0.671 vs 0.668), so it is the default.

Text cleaning (conservative, :func:`clean_text`): the titles and snippets carry literal JSON
escapes (``\\"``, ``\\/``, ``\\t``, ``\\r``, ``\\\\``, ``\\u00a3``) and HTML entities
(``&mdash;``, ``&nbsp;``, ``&#8217;``...). Those escapes are decoded (``\\t``/``\\r``/``\\n`` as
spaces), entities are unescaped once, and runs of whitespace collapse to one space. Nothing else
is changed: a few titles keep HTML tags (``<font color=red>``) and mis-decoded bytes
("VoiceSuiteâ\\x84¢") as the data has them.

Drops (counted in the report): results with neither title nor snippet after cleaning; an
interaction with no result left (two interactions in 2013 have no results at all). Repeated urls
in one result list (38 lists; different ClueWeb12 documents with the same url) keep the url on
the first and get ``#rank-{rank}`` on later ones, so that each click stays with its own result.
An empty url is replaced by ``clueweb12://{clueweb12id}`` (none in 2013).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from datamodules.converters import ConversionReport, disambiguate_urls, make_record, read_json_rows

_JSON_ESCAPE = re.compile(r'\\(["/\\trn]|u[0-9a-fA-F]{4})')
_WHITESPACE = re.compile(r"\s+")
_ESCAPES = {'"': '"', "/": "/", "\\": "\\", "t": " ", "r": " ", "n": " "}


def _decode_escape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code.startswith("u"):
        return chr(int(code[1:], 16))
    return _ESCAPES[code]


def clean_text(text: str | None) -> str:
    """Decode literal JSON escapes, unescape HTML entities once, collapse whitespace."""
    if not text:
        return ""
    text = _JSON_ESCAPE.sub(_decode_escape, text)
    text = html.unescape(text)
    return _WHITESPACE.sub(" ", text).strip()


def read_trec_session(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``session2013_serps.jsonl`` (or a JSON list of the same rows)."""
    return read_json_rows(path)


def result_url(result: dict[str, Any], report: ConversionReport) -> str | None:
    """A result's url; ``clueweb12://{id}`` when it has none; ``None`` (counted) without both."""
    url = (result.get("url") or "").strip()
    if url:
        return url
    doc_id = (result.get("clueweb12id") or "").strip()
    if not doc_id:
        report.drop("result with neither url nor clueweb12id")
        return None
    return f"clueweb12://{doc_id}"


def convert_trec_session(
    rows: Iterable[dict[str, Any]],
    *,
    report: ConversionReport | None = None,
    negatives: Literal["skip_above", "all"] = "all",
) -> list[dict[str, Any]]:
    """Convert TREC Session 2013 interactions into app records (see the module docstring)."""
    report = report if report is not None else ConversionReport()
    records: list[dict[str, Any]] = []
    for row in rows:
        report.read += 1
        query_id = f"s{row['session']}.i{row['interaction']}"
        query = clean_text(row.get("query"))
        if not query:
            report.drop("empty query")
            continue
        results = sorted(row.get("results") or [], key=lambda r: r["rank"])
        kept: list[tuple[int, str, str, str, bool]] = []
        for result in results:
            title = clean_text(result.get("title"))
            snippet = clean_text(result.get("snippet"))
            if not title and not snippet:
                report.drop("result with neither title nor snippet")
                continue
            url = result_url(result, report)
            if url is None:
                continue
            clicked = result.get("clicked")
            if clicked not in (0, 1):
                raise ValueError(f"{query_id}: rank {result['rank']}: clicked is {clicked!r}")
            kept.append((result["rank"], url, title, snippet, bool(clicked)))
        if not kept:
            report.drop("interaction with no usable result")
            continue
        urls = [url for _, url, _, _, _ in kept]
        if len(set(urls)) < len(urls):
            report.note("repeated urls in a result list got '#rank-{rank}' appended")
        urls = disambiguate_urls(urls, [f"rank-{rank}" for rank, _, _, _, _ in kept])
        sources = [
            {"title": title, "url": url, "snippet": snippet}
            for url, (_, _, title, snippet, _) in zip(urls, kept, strict=True)
        ]
        clicks = [clicked for _, _, _, _, clicked in kept]
        if negatives == "all":
            skipped = [not c for c in clicks]
        elif negatives == "skip_above":
            last_click = max((i for i, c in enumerate(clicks) if c), default=-1)
            skipped = [not c and i < last_click for i, c in enumerate(clicks)]
        else:
            raise ValueError(f"negatives must be 'skip_above' or 'all', got {negatives!r}")
        records.append(
            make_record(
                query=query, query_id=query_id, sources=sources, positive=clicks, negative=skipped
            )
        )
    report.written += len(records)
    return records
