"""Query-rewriting training data: the app's feedback records and public (source, target) pairs.

Two record formats are read, in any mix of files (``.json`` / ``.jsonl``, directories, globs;
see :mod:`datamodules.feedback`, which does the reading and the error reporting):

* **App records**, as the app writes ``query_rewriting_training_data.json``
  (``{"query_rewriting_data": [...]}``)::

      {"original_query": str, "selected_sources": [url | {"url": ...}, ...],
       "query_source_mapping": {name: {"query": str, "reasoning": str,
                                       "sources": [url | {"url": ...}, ...]}},
       "query_generator": str, "timestamp": str}

  The mapping lists the candidate queries the app searched with (usually the original query
  itself plus rewrites) and the sources each one retrieved, in retrieval order;
  ``selected_sources`` are the sources the user picked.

* **Pairs**, for public data: ``{"source": str, "target": str, "history": [str, ...]}``, with
  ``history`` optional, oldest turn first.

Both may carry an optional ``"session_id"`` (a chat conversation, a search session): the
train/validation split keeps a session on one side, since its records share context and targets.

Target mining (:func:`mine_target`) turns an app record into one training target. The
*coverage* of a candidate is the number of distinct selected urls among its sources. The target
is the candidate with the highest coverage; ties are broken

1. in favour of the original query (a candidate whose query normalises to ``original_query``,
   see :func:`datamodules.split.normalise_query`): a rewrite that finds no more than the
   original did is not worth learning, the model should leave the query alone;
2. then by how early the candidate retrieved the selected sources: the higher sum of
   ``1 / (1 + position)`` over its selected urls (first position of each url) wins;
3. then by mapping order (the first wins).

When no candidate retrieved any selected source (or nothing was selected) the record has no
signal: :func:`mine_target` returns ``None`` and :func:`load_rewriting_data` leaves the record
out, counting it in ``report.filtered``. When the original query wins, the pair's target is the
original query (``is_original=True``): the "do not rewrite" case, kept unless
``keep_unchanged=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from datamodules.feedback import (
    FeedbackError,
    OnInvalid,
    ParseReport,
    RecordFiltered,
    Source,
    optional_str,
    parse_timestamp,
    require_list,
    require_object,
    require_str,
    type_name,
)
from datamodules.feedback_files import load_feedback
from datamodules.split import normalise_query

log = logging.getLogger(__name__)

TOP_KEY = "query_rewriting_data"
FILTERED_NO_SIGNAL = "no candidate retrieved a selected source"
FILTERED_ORIGINAL_WON = "original query won (keep_unchanged=false)"
FILTERED_UNCHANGED_PAIR = "target equals source (keep_unchanged=false)"
# A record with any of these keys is parsed as that format, so that one missing the rest is
# told which field it lacks rather than that it matches no format.
APP_KEYS = ("original_query", "query_source_mapping", "selected_sources")
PAIR_KEYS = ("source", "target")


@dataclass(frozen=True)
class Candidate:
    """One query the app searched with, and the urls it retrieved."""

    name: str  # key in query_source_mapping
    query: str
    sources: tuple[str, ...]  # urls, in the order the candidate retrieved them


@dataclass(frozen=True)
class RewritingRecord:
    """One validated app record."""

    original_query: str
    selected_sources: tuple[str, ...]  # urls, in the order the user picked them
    candidates: tuple[Candidate, ...]  # mapping order
    query_generator: str | None
    timestamp: str | None
    origin: str  # "file:index"
    session_id: str | None = None  # conversation/session: kept on one side of the split
    # every source the record names, once per url (first occurrence), with the title and
    # snippet the app recorded (empty where it gave a bare url): what the retrieval judge
    # (lightning_modules.retrieval_judge) indexes
    documents: tuple[Source, ...] = ()


@dataclass(frozen=True)
class MinedTarget:
    """The training target mined from a :class:`RewritingRecord`."""

    query: str  # the training target
    # Candidate name; None when the original query wins without being a listed candidate.
    candidate: str | None
    coverage: int  # selected sources it retrieved
    is_original: bool  # target is (normalises to) the original query


@dataclass(frozen=True)
class RewritePair:
    """One training example for the rewriter."""

    source: str  # the user's question / original query
    target: str | None  # the reformulation to learn (None only for questions to rewrite)
    history: tuple[str, ...] = ()  # earlier conversation turns, oldest first
    origin: str = ""  # "file:index"
    is_original: bool = False  # target normalises to the source (the "do not rewrite" case)
    session_id: str | None = None  # conversation/session: kept on one side of the split
    timestamp: str | None = None  # ISO 8601, from the app record or the pair line
    # the app record it was mined from (None for a pairs line): what the retrieval judge
    # scores a rewrite against (its selected sources)
    record: RewritingRecord | None = field(default=None, compare=False, repr=False)

    @property
    def content_key(self) -> Hashable:
        """Equal for repeats: the same question (normalised), history and target."""
        return normalise_query(self.source), self.history, self.target


# ---------------------------------------------------------------------------------------------
# App records
# ---------------------------------------------------------------------------------------------


def _parse_url(item: Any, *, file: str, index: int, name: str) -> str:
    """A url given either as a string or as a source object with a ``url`` field."""
    if isinstance(item, str):
        if not item.strip():
            raise FeedbackError("empty url", file=file, record=index, field=name)
        return item
    if isinstance(item, dict):
        return require_str(item, "url", file=file, index=index, where=f"{name}.")
    raise FeedbackError(
        f"expected a url string or a source object with a 'url', got {type_name(item)}",
        file=file,
        record=index,
        field=name,
    )


def _parse_urls(
    raw: dict,
    key: str,
    *,
    file: str,
    index: int,
    where: str = "",
    unique: bool,
    documents: dict[str, Source] | None = None,
) -> tuple[str, ...]:
    """The urls of a list of url strings or source objects; each source object's title and
    snippet go into ``documents`` (keyed by url, first occurrence kept)."""
    items = require_list(raw, key, file=file, index=index, where=where)
    urls: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = f"{where}{key}[{i}]"
        url = _parse_url(item, file=file, index=index, name=name)
        if unique and url in seen:
            raise FeedbackError(f"url {url!r} listed twice", file=file, record=index, field=name)
        seen.add(url)
        urls.append(url)
        if documents is not None and (url not in documents or not _has_text(documents[url])):
            title = snippet = ""
            if isinstance(item, dict):
                title = optional_str(item, "title", file=file, index=index, where=f"{name}.")
                snippet = optional_str(item, "snippet", file=file, index=index, where=f"{name}.")
            documents[url] = Source(title=title or "", url=url, snippet=snippet or "")
    return tuple(urls)


def _has_text(source: Source) -> bool:
    return bool(source.title or source.snippet)


def parse_rewriting_record(raw: Any, file: str, index: int) -> RewritingRecord:
    """Validate one app record and turn it into a :class:`RewritingRecord`.

    A candidate may list the same url twice (search results repeat); the user's selection may
    not, since a pick is a pick.
    """
    record = require_object(raw, file=file, index=index)
    original_query = require_str(record, "original_query", file=file, index=index)
    documents: dict[str, Source] = {}
    selected = _parse_urls(
        record, "selected_sources", file=file, index=index, unique=True, documents=documents
    )

    mapping = record.get("query_source_mapping")
    if mapping is None:
        raise FeedbackError("missing", file=file, record=index, field="query_source_mapping")
    require_object(mapping, file=file, index=index, field="query_source_mapping")
    if not mapping:
        raise FeedbackError(
            "no candidate queries", file=file, record=index, field="query_source_mapping"
        )
    candidates = []
    for name, raw_candidate in mapping.items():
        where = f"query_source_mapping[{name!r}]"
        candidate = require_object(raw_candidate, file=file, index=index, field=where)
        query = require_str(candidate, "query", file=file, index=index, where=f"{where}.")
        optional_str(candidate, "reasoning", file=file, index=index, where=f"{where}.")
        sources = _parse_urls(
            candidate,
            "sources",
            file=file,
            index=index,
            where=f"{where}.",
            unique=False,
            documents=documents,
        )
        candidates.append(Candidate(name=name, query=query, sources=sources))

    return RewritingRecord(
        original_query=original_query,
        selected_sources=selected,
        candidates=tuple(candidates),
        query_generator=optional_str(record, "query_generator", file=file, index=index),
        timestamp=optional_str(record, "timestamp", file=file, index=index),
        origin=f"{file}:{index}",
        session_id=optional_str(record, "session_id", file=file, index=index),
        documents=tuple(documents.values()),
    )


def _first_positions(candidate: Candidate, selected: set[str]) -> dict[str, int]:
    """Each selected url the candidate retrieved, with the first position it retrieved it at."""
    first_position: dict[str, int] = {}
    for position, url in enumerate(candidate.sources):
        if url in selected:
            first_position.setdefault(url, position)
    return first_position


def candidate_coverages(record: RewritingRecord) -> list[tuple[str, int]]:
    """Every candidate query of a record, once per normalised text (the first kept), with how
    many of the user's selected sources it retrieved: the ranking of the candidates that a
    listwise objective learns from (:mod:`lightning_modules.query_rewriter`)."""
    selected = set(record.selected_sources)
    out: dict[str, tuple[str, int]] = {}
    for candidate in record.candidates:
        key = normalise_query(candidate.query)
        if key and key not in out:
            out[key] = (candidate.query.strip(), len(_first_positions(candidate, selected)))
    return list(out.values())


def mine_target(record: RewritingRecord) -> MinedTarget | None:
    """The candidate the user's picks vouch for (rules in the module docstring), or ``None``."""
    selected = set(record.selected_sources)
    original = normalise_query(record.original_query)
    best: tuple[int, bool, Fraction] | None = None
    winner: Candidate | None = None
    for candidate in record.candidates:
        first_position = _first_positions(candidate, selected)
        coverage = len(first_position)
        is_original = normalise_query(candidate.query) == original
        # Exact fractions so that equal rank scores tie exactly and rule 3 (mapping order)
        # decides, rather than the last bit of a float sum.
        rank_score = sum((Fraction(1, 1 + p) for p in first_position.values()), Fraction(0))
        key = (coverage, is_original, rank_score)
        if best is None or key > best:  # strictly better: on a full tie the first one stays
            best, winner = key, candidate
    if best is None or winner is None or best[0] == 0:
        return None
    coverage, is_original, _ = best
    return MinedTarget(
        # The "do not rewrite" target is the user's query verbatim, not the candidate's copy
        # of it (which may differ in case or spacing).
        query=record.original_query if is_original else winner.query,
        candidate=winner.name,
        coverage=coverage,
        is_original=is_original,
    )


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------


def parse_rewrite_pair(
    raw: Any, file: str, index: int, *, require_target: bool = True
) -> RewritePair:
    """Validate one ``{"source", "target", "history"?}`` record.

    ``require_target=False`` reads questions to rewrite (``predict``): ``target`` may be absent.
    """
    record = require_object(raw, file=file, index=index)
    source = require_str(record, "source", file=file, index=index).strip()
    target: str | None = None
    if require_target or record.get("target") is not None:
        target = require_str(record, "target", file=file, index=index).strip()
    history = []
    for i, turn in enumerate(
        require_list(record, "history", file=file, index=index, required=False)
    ):
        name = f"history[{i}]"
        if not isinstance(turn, str):
            raise FeedbackError(
                f"expected a string, got {type_name(turn)}", file=file, record=index, field=name
            )
        if not turn.strip():
            raise FeedbackError("empty", file=file, record=index, field=name)
        history.append(turn.strip())
    return RewritePair(
        source=source,
        target=target,
        history=tuple(history),
        origin=f"{file}:{index}",
        is_original=target is not None and normalise_query(source) == normalise_query(target),
        session_id=optional_str(record, "session_id", file=file, index=index),
        timestamp=optional_str(record, "timestamp", file=file, index=index),
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _parse_any(raw: Any, file: str, index: int, *, keep_unchanged: bool) -> RewritePair:
    """One record of either format as a pair; raises RecordFiltered when it has no signal."""
    record = require_object(raw, file=file, index=index)
    if any(key in record for key in APP_KEYS):
        parsed = parse_rewriting_record(record, file, index)
        mined = mine_target(parsed)
        if mined is None:
            raise RecordFiltered(FILTERED_NO_SIGNAL)
        if mined.is_original and not keep_unchanged:
            raise RecordFiltered(FILTERED_ORIGINAL_WON)
        return RewritePair(
            source=parsed.original_query.strip(),
            target=mined.query.strip(),
            origin=parsed.origin,
            is_original=mined.is_original,
            session_id=parsed.session_id,
            timestamp=parsed.timestamp,
            record=parsed,
        )
    if any(key in record for key in PAIR_KEYS):
        pair = parse_rewrite_pair(record, file, index)
        if pair.is_original and not keep_unchanged:
            raise RecordFiltered(FILTERED_UNCHANGED_PAIR)
        return pair
    raise FeedbackError(
        "expected an app record with 'original_query' or a pair with 'source' and 'target' "
        f"(found keys: {sorted(record)[:5]})",
        file=file,
        record=index,
    )


def load_rewriting_data(
    paths: str | Path | Sequence[str | Path],
    *,
    keep_unchanged: bool = True,
    on_invalid: OnInvalid = "error",
    deduplicate: bool = False,
    require_timestamp: bool = False,
) -> tuple[list[RewritePair], ParseReport]:
    """Load app records and pairs from files, directories or globs as :class:`RewritePair` s.

    App records become one pair each (source: the original query, target: the mined target,
    no history); records without signal are counted in ``report.filtered``. With
    ``keep_unchanged=False`` pairs whose target is the source (the original query won, or a
    public pair that does not rewrite) are left out too, and counted there. ``deduplicate``
    drops repeats (:attr:`RewritePair.content_key`); ``require_timestamp`` (the time split)
    makes a missing or unreadable ``timestamp`` an error.
    """

    def parse(raw: Any, file: str, index: int) -> RewritePair:
        pair = _parse_any(raw, file, index, keep_unchanged=keep_unchanged)
        if require_timestamp:
            parse_timestamp(pair.timestamp, file=file, index=index)
        return pair

    pairs, report = load_feedback(
        paths,
        top_key=TOP_KEY,
        parse_record=parse,
        on_invalid=on_invalid,
        dedupe_key=(lambda pair: pair.content_key) if deduplicate else None,
    )
    n_unchanged = sum(p.is_original for p in pairs)
    log.info(
        "Query rewriting data: %d pairs (%d rewrites, %d unchanged)",
        len(pairs),
        len(pairs) - n_unchanged,
        n_unchanged,
    )
    return pairs, report


def load_rewrite_inputs(
    paths: str | Path | Sequence[str | Path], *, on_invalid: OnInvalid = "error"
) -> tuple[list[RewritePair], ParseReport]:
    """Questions to rewrite (``predict``): app records' ``original_query`` or pairs lines.

    Targets are optional here; an app record is validated in full but nothing is mined.
    """

    def parse(raw: Any, file: str, index: int) -> RewritePair:
        record = require_object(raw, file=file, index=index)
        if any(key in record for key in APP_KEYS):
            parsed = parse_rewriting_record(record, file, index)
            return RewritePair(
                source=parsed.original_query.strip(), target=None, origin=parsed.origin
            )
        if "source" in record:
            return parse_rewrite_pair(record, file, index, require_target=False)
        raise FeedbackError(
            "expected an app record with 'original_query' or a line with 'source' "
            f"(found keys: {sorted(record)[:5]})",
            file=file,
            record=index,
        )

    return load_feedback(paths, top_key=TOP_KEY, parse_record=parse, on_invalid=on_invalid)
