"""TREC Session Track 2013 sessions -> app query-rewriting feedback.

Source: the same ``session2013_serps.jsonl`` as :mod:`.trec_session` (one line per interaction:
``{"session", "interaction", "topic_desc", "query", "results": [{"rank", "url", "title",
"snippet", "clueweb12id", "clicked"}]}``). Licence: public TREC research data distributed by NIST
for research use (see ``training_data/LICENSES/TREC_SESSION_2013.txt``).

Why it fits: a session is a user reformulating a query until the results serve them. The app's
query-rewriting record holds an original query, candidate queries with the sources each one
found, and the sources the user selected; the training target is mined downstream as the
candidate whose sources cover the selected sources best. A session gives exactly that: an
earlier query, the queries the user tried after it with the results each returned, and the
results the user clicked from then on.

Mapping: interactions are ordered by ``interaction`` within their session. For each interaction
``i`` with at least one later interaction, one record:

* ``original_query``: query ``i`` (cleaned with :func:`.trec_session.clean_text`).
* ``query_source_mapping``: ``"original query"`` -> query ``i``, then ``"session query {k}"``
  (``k`` = TREC interaction number) for each later query ``k`` in session order. Each entry has
  ``reasoning`` ``"TREC Session 2013 session {S} interaction {k}"`` and ``sources``: the results
  that query returned, in rank order, as ``{"title", "url", "snippet"}`` objects (text cleaned as
  in :mod:`.trec_session`).
* ``selected_sources``: the urls the user clicked in interactions ``i``..end, distinct, in click
  order as far as the data tells it (interaction order, then rank order: the JSONL has no click
  times).
* ``query_generator``: ``"trec_session_2013"``; ``timestamp``: null; ``query_id``:
  ``s{S}.i{i}`` (not an app field); ``session_id``: ``s{S}`` (optional in the app's format:
  records of one session share candidates and clicks, and the split keeps a session on one
  side).

Cleaning, per interaction (counted once in the report): results with neither title nor snippet
are dropped (3 in 2013, none clicked); an empty url becomes ``clueweb12://{clueweb12id}`` (none in
2013); a url repeated within one result list (different ClueWeb12 documents) keeps its first
occurrence only, a click on a later occurrence counting as a click on that url. An interaction
with an empty query is left out of its session.

Candidates and skips: a later query whose text equals (case- and space-insensitively) an earlier
candidate of the record is left out (the first is kept; in 2013 a repeated query always returned
the same urls). A later query with no usable result (two interactions in 2013 have none) is left
out: it cannot cover a selected source. The original query is always present, even with no
source. A record is skipped when its session has one interaction, when ``i`` is the last
interaction, when every later query repeats query ``i`` (no alternative), when no later query
has a result, or when nothing was clicked in ``i``..end (no target can be mined). A clicked url
that no candidate shows (impossible with the rules above, kept as a guard) is left out of
``selected_sources`` and counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.converters import ConversionReport, read_json_rows
from datamodules.converters.trec_session import clean_text, result_url
from datamodules.feedback import FeedbackError
from datamodules.split import normalise_query

QUERY_GENERATOR = "trec_session_2013"
ORIGINAL = "original query"


@dataclass(frozen=True)
class _Interaction:
    session: Any
    number: int
    query: str
    sources: tuple[dict[str, str], ...]  # distinct urls, rank order
    clicked: tuple[str, ...]  # distinct clicked urls, rank order


def read_trec_session_rewriting(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``session2013_serps.jsonl`` (or a JSON list of the same rows)."""
    return read_json_rows(path)


def _clean_interaction(row: dict[str, Any], report: ConversionReport) -> _Interaction | None:
    where = f"s{row['session']}.i{row['interaction']}"
    query = clean_text(row.get("query"))
    if not query:
        report.drop("interaction with an empty query (left out of its session)")
        return None
    sources: list[dict[str, str]] = []
    seen: set[str] = set()
    clicked: list[str] = []
    for result in sorted(row.get("results") or [], key=lambda r: r["rank"]):
        click = result.get("clicked")
        if click not in (0, 1):
            raise ValueError(f"{where}: rank {result['rank']}: clicked is {click!r}")
        title = clean_text(result.get("title"))
        snippet = clean_text(result.get("snippet"))
        if not title and not snippet:
            report.drop("result with neither title nor snippet")
            if click:
                report.drop("click on a result with neither title nor snippet")
            continue
        url = result_url(result, report)
        if url is None:
            continue
        if url in seen:
            report.drop("repeated url in a result list (first occurrence kept)")
        else:
            seen.add(url)
            sources.append({"title": title, "url": url, "snippet": snippet})
        if click and url not in clicked:
            clicked.append(url)
    return _Interaction(
        row["session"], int(row["interaction"]), query, tuple(sources), tuple(clicked)
    )


def _record(
    earlier: _Interaction, later: list[_Interaction], report: ConversionReport
) -> dict[str, Any] | None:
    def entry(it: _Interaction) -> dict[str, Any]:
        return {
            "query": it.query,
            "reasoning": f"TREC Session 2013 session {it.session} interaction {it.number}",
            "sources": [dict(s) for s in it.sources],
        }

    key = normalise_query(earlier.query)
    if all(normalise_query(it.query) == key for it in later):
        report.drop("query equal to every later query of its session")
        return None
    mapping = {ORIGINAL: entry(earlier)}
    texts = {key}
    for it in later:
        text = normalise_query(it.query)
        if text in texts:
            report.drop("candidate repeating an earlier query of its record (first kept)")
            continue
        if not it.sources:
            report.drop("later query with no usable result (not a candidate)")
            continue
        texts.add(text)
        mapping[f"session query {it.number}"] = entry(it)
    if len(mapping) == 1:
        report.drop("no later query with a result")
        return None

    shown = {s["url"] for candidate in mapping.values() for s in candidate["sources"]}
    selected: list[str] = []
    for it in [earlier, *later]:
        for url in it.clicked:
            if url in selected:
                continue
            if url not in shown:
                report.drop("clicked url that no candidate shows")
                continue
            selected.append(url)
    if not selected:
        report.drop("no click from this query to the end of its session")
        return None
    return {
        "original_query": earlier.query,
        "selected_sources": selected,
        "query_source_mapping": mapping,
        "query_generator": QUERY_GENERATOR,
        "timestamp": None,
        "query_id": f"s{earlier.session}.i{earlier.number}",
        "session_id": f"s{earlier.session}",
    }


def convert_trec_session_rewriting(
    rows: Iterable[dict[str, Any]], *, report: ConversionReport | None = None
) -> list[dict[str, Any]]:
    """Convert TREC Session 2013 sessions into query-rewriting records (see the module doc)."""
    report = report if report is not None else ConversionReport()
    sessions: dict[Any, list[_Interaction]] = defaultdict(list)
    for row in rows:
        report.read += 1
        interaction = _clean_interaction(row, report)
        if interaction is not None:
            sessions[interaction.session].append(interaction)

    records: list[dict[str, Any]] = []
    for interactions in sessions.values():
        interactions.sort(key=lambda it: it.number)
        numbers = [it.number for it in interactions]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"session {interactions[0].session}: repeated interaction numbers")
        if len(interactions) == 1:
            report.drop("session with one query")
            continue
        report.drop("last query of its session (no later query)")
        for i, earlier in enumerate(interactions[:-1]):
            record = _record(earlier, interactions[i + 1 :], report)
            if record is not None:
                records.append(record)
    report.written += len(records)
    return records


# ---------------------------------------------------------------------------------------------
# Checks and counts
# ---------------------------------------------------------------------------------------------


def check_rewriting_record(raw: Any, file: str, index: int) -> None:
    """Structural check of one app query-rewriting record; raises :class:`FeedbackError`.

    Beyond the types: candidate queries are non-empty, each candidate's source urls are
    distinct, sources have a title or a snippet, and every selected url is shown by a candidate
    (otherwise no candidate could ever cover it).
    """

    def fail(message: str, field: str | None = None) -> None:
        raise FeedbackError(message, file=file, record=index, field=field)

    if not isinstance(raw, dict):
        fail(f"expected an object, got {type(raw).__name__}")
    query = raw.get("original_query")
    if not isinstance(query, str) or not query.strip():
        fail("expected a non-empty string", "original_query")
    generator = raw.get("query_generator")
    if generator is not None and not isinstance(generator, str):
        fail("expected a string", "query_generator")
    timestamp = raw.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        fail("expected a string or null", "timestamp")
    mapping = raw.get("query_source_mapping")
    if not isinstance(mapping, dict) or not mapping:
        fail("expected a non-empty object", "query_source_mapping")
    shown: set[str] = set()
    for name, candidate in mapping.items():
        where = f"query_source_mapping[{name!r}]"
        if not isinstance(candidate, dict):
            fail("expected an object", where)
        text = candidate.get("query")
        if not isinstance(text, str) or not text.strip():
            fail("expected a non-empty string", f"{where}.query")
        if not isinstance(candidate.get("reasoning", ""), str):
            fail("expected a string", f"{where}.reasoning")
        sources = candidate.get("sources")
        if not isinstance(sources, list):
            fail("expected a list", f"{where}.sources")
        urls: list[str] = []
        for p, source in enumerate(sources):
            at = f"{where}.sources[{p}]"
            if isinstance(source, str):
                url = source
            elif isinstance(source, dict):
                url = source.get("url")
                title, snippet = source.get("title", ""), source.get("snippet", "")
                if not isinstance(title, str) or not isinstance(snippet, str):
                    fail("title and snippet must be strings", at)
                if not title.strip() and not snippet.strip():
                    fail("source has neither title nor snippet text", at)
            else:
                fail("expected a source object or a url string", at)
            if not isinstance(url, str) or not url.strip():
                fail("expected a non-empty url", at)
            urls.append(url)
        if len(set(urls)) != len(urls):
            fail("urls are not distinct", f"{where}.sources")
        shown.update(urls)
    selected = raw.get("selected_sources")
    if not isinstance(selected, list) or not all(isinstance(u, str) for u in selected):
        fail("expected a list of url strings", "selected_sources")
    if len(set(selected)) != len(selected):
        fail("a url is listed twice", "selected_sources")
    missing = [u for u in selected if u not in shown]
    if missing:
        fail(f"url {missing[0]!r} is shown by no candidate", "selected_sources")


def rewriting_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Records, candidates, sources, selected sources, and how the coverage target falls.

    ``later_query_covers_more``: records where some later query's sources cover strictly more
    selected sources than the original query's (the mined target is then a rewrite).
    """
    counts = {
        "records": 0,
        "candidates": 0,
        "sources": 0,
        "selected_sources": 0,
        "later_query_covers_more": 0,
    }
    for r in records:
        selected = set(r["selected_sources"])
        coverage = []
        for candidate in r["query_source_mapping"].values():
            urls = {s if isinstance(s, str) else s["url"] for s in candidate["sources"]}
            coverage.append(len(urls & selected))
            counts["sources"] += len(candidate["sources"])
        counts["records"] += 1
        counts["candidates"] += len(coverage)
        counts["selected_sources"] += len(selected)
        counts["later_query_covers_more"] += max(coverage[1:], default=0) > coverage[0]
    return counts
