"""Converters from public data sets into the app's feedback formats.

Each converter module has a reader ``read_<name>(path)`` that returns the data set's parsed rows
and a pure function ``convert_<name>(rows)`` that turns them into records of one of three kinds.

Reranker feedback (``{"reranker_data": [...]}``), accepted by
:func:`datamodules.reranker_records.parse_reranker_record`::

    {"query": str,
     "query_id": str,
     "all_sources": [{"title": str, "url": str, "snippet": str}, ...],   # display order
     "positive_sources": [url, ...],                                     # pick order
     "negative_sources": [url, ...],
     "timestamp": null}

``all_sources`` keeps the data set's own display order (it is the baseline ranking).

Query-rewriting feedback (``{"query_rewriting_data": [...]}``), the app's own shape::

    {"original_query": str,
     "selected_sources": [url, ...],
     "query_source_mapping": {name: {"query": str, "reasoning": str,
                                     "sources": [{"title", "url", "snippet"}, ...]}},
     "query_generator": str,
     "timestamp": null}

Rewrite pairs (JSON Lines, one ``{"source": str, "target": str, "history": [str, ...]}`` a
line): a query, its self-contained rewrite and the earlier turns of the conversation.

Converters:

* :mod:`.msmarco`: MS MARCO v1.1 QnA (``is_selected`` passages are positives). Reranker.
* :mod:`.trec_session`: TREC Session Track 2013 (clicked results are positives). Reranker.
* :mod:`.wikiqa`: WikiQA train and dev (label 1 sentences are positives; test is refused).
  Reranker.
* :mod:`.trec_session_rewriting`: TREC Session Track 2013 sessions (an earlier query, the
  session's later queries with their results, the clicked results). Query rewriting.
* :mod:`.canard`: CANARD train (question -> self-contained rewrite, with the dialog's earlier
  turns; dev is test-only and never converted). Rewrite pairs.

Run them with ``python -m datamodules.converters {msmarco,trec-session,wikiqa,
trec-session-rewriting,canard} --input PATH --output PATH``.

Repeated urls: the parser marks *every* source that shows a positive url as positive. When a data
set shows the same url more than once for one query (MS MARCO does: several passages of one page,
sometimes with different labels), :func:`disambiguate_urls` keeps the first occurrence as it is
and appends a fragment to each later one (``#passage-{position}`` for MS MARCO, ``#rank-{rank}``
for TREC Session), so that each label stays with its own passage.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ConversionReport:
    """What a conversion read, wrote and dropped (reason -> count), for the CLI and logs."""

    read: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)


def disambiguate_urls(urls: Sequence[str], tags: Sequence[str] | None = None) -> list[str]:
    """Make the urls of one query's sources distinct.

    The first occurrence of a url is kept unchanged; each later occurrence gets ``#{tag}``
    appended, where ``tags[i]`` names position ``i`` (default ``passage-{i}``, ``i`` 0-based).
    Should the result collide with another url of the list, ``-2``, ``-3``... is appended too.
    """
    if tags is None:
        tags = [f"passage-{i}" for i in range(len(urls))]
    if len(tags) != len(urls):
        raise ValueError(f"got {len(tags)} tags for {len(urls)} urls")
    taken = set(urls)
    seen: set[str] = set()
    out: list[str] = []
    for url, tag in zip(urls, tags, strict=True):
        if url not in seen:
            seen.add(url)
            out.append(url)
            continue
        candidate = f"{url}#{tag}"
        suffix = 2
        while candidate in taken:
            candidate = f"{url}#{tag}-{suffix}"
            suffix += 1
        taken.add(candidate)
        out.append(candidate)
    return out


def make_record(
    *,
    query: str,
    query_id: str,
    sources: Sequence[dict[str, str]],
    positive: Sequence[bool],
    negative: Sequence[bool] | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """An app record from sources (already with distinct urls) and one flag per source.

    ``positive_sources`` follows the order of ``sources``: callers pass sources in pick order
    when it differs from display order. ``negative`` defaults to "every source not positive";
    sources in neither list are unjudged (left out of training, see datamodules/feedback.py).
    """
    if negative is None:
        negative = [not p for p in positive]
    if len(sources) != len(positive) or len(sources) != len(negative):
        raise ValueError(f"got {len(positive)} labels for {len(sources)} sources")
    if any(p and n for p, n in zip(positive, negative, strict=True)):
        raise ValueError(f"query {query_id!r}: a source is both positive and negative")
    urls = [s["url"] for s in sources]
    if len(set(urls)) != len(urls):
        raise ValueError(f"query {query_id!r}: urls are not distinct; use disambiguate_urls")
    return {
        "query": query,
        "query_id": query_id,
        "all_sources": [dict(s) for s in sources],
        "positive_sources": [u for u, p in zip(urls, positive, strict=True) if p],
        "negative_sources": [u for u, n in zip(urls, negative, strict=True) if n],
        "timestamp": timestamp,
    }


def read_json_rows(path: str | Path) -> list[Any]:
    """Rows of a ``.jsonl`` file (one JSON value a line) or of a ``.json`` file holding a list."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        rows = []
        # Split on "\n" only: str.splitlines() also breaks on U+0085, U+2028... which JSON
        # strings may hold unescaped (TREC Session 2013 has a U+0085 in a snippet).
        for line_no, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_no}: invalid JSON: {err.msg}") from None
        return rows
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return data


def dump_feedback(records: Iterable[dict[str, Any]], top_key: str = "reranker_data") -> str:
    """``{top_key: [...]}`` with one record a line: compact, yet diffs stay readable."""
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]
    head = json.dumps(top_key)
    if not lines:
        return "{" + head + ":[]}\n"
    return "{" + head + ":[\n" + ",\n".join(lines) + "\n]}\n"


def dump_jsonl(records: Iterable[dict[str, Any]]) -> str:
    """JSON Lines: one compact record a line."""
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def write_text_atomically(text: str, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``text`` atomically (temp file in the same folder, then ``os.replace``).

    Raises :class:`FileExistsError` when ``output`` exists and ``overwrite`` is false.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return output


def write_feedback_file(
    records: Sequence[dict[str, Any]],
    output: str | Path,
    *,
    overwrite: bool = False,
    top_key: str = "reranker_data",
    jsonl: bool = False,
) -> Path:
    """Write records atomically (temp file in the same folder, then ``os.replace``).

    ``{top_key: [...]}`` with one record a line (``top_key`` is ``"reranker_data"`` or
    ``"query_rewriting_data"``), or JSON Lines when ``jsonl`` is true (``top_key`` unused).
    Raises :class:`FileExistsError` when ``output`` exists and ``overwrite`` is false.
    """
    text = dump_jsonl(records) if jsonl else dump_feedback(records, top_key)
    return write_text_atomically(text, output, overwrite=overwrite)


def feedback_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Records, sources, positive sources and records without a positive, for reports."""
    counts = {"records": 0, "sources": 0, "positives": 0, "records_without_positive": 0}
    for r in records:
        counts["records"] += 1
        counts["sources"] += len(r["all_sources"])
        counts["positives"] += len(r["positive_sources"])
        counts["records_without_positive"] += not r["positive_sources"]
    return counts
