"""The reranker's feedback records: parsing and validating one ``reranker_data`` record (its
sources, picks and negatives) and loading whole files of them."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.feedback import (
    PICK_ORDER_GRADES,
    FeedbackError,
    LabelMode,
    OnInvalid,
    ParseReport,
    RerankerRecord,
    Source,
    optional_str,
    parse_timestamp,
    require_list,
    require_object,
    require_str,
    type_name,
)
from datamodules.feedback_files import (
    load_feedback,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Reranker records
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def file_stem(file: str) -> str:
    """``Path(file).stem``, cached: asked once per record, for a handful of files."""
    return Path(file).stem


def parse_source(raw: Any, *, file: str, index: int, position: int) -> Source:
    # The common, valid source is accepted without building any error text: this runs ten
    # times per record, a million records per large log. Whatever it does not accept goes
    # through the full checks below, which accept the same sources and name what is wrong.
    if type(raw) is dict:
        url, title, snippet = raw.get("url"), raw.get("title"), raw.get("snippet")
        if (
            type(url) is str
            and url
            and not url.isspace()
            and (title is None or type(title) is str)
            and (snippet is None or type(snippet) is str)
            and ((title and not title.isspace()) or (snippet and not snippet.isspace()))
        ):
            return Source(title=title or "", url=url, snippet=snippet or "")
    where = f"all_sources[{position}]."
    require_object(raw, file=file, index=index, field=f"all_sources[{position}]")
    url = require_str(raw, "url", file=file, index=index, where=where)
    title = optional_str(raw, "title", file=file, index=index, where=where) or ""
    snippet = optional_str(raw, "snippet", file=file, index=index, where=where) or ""
    if not title.strip() and not snippet.strip():
        raise FeedbackError(
            "source has neither title nor snippet text",
            file=file,
            record=index,
            field=f"all_sources[{position}]",
        )
    return Source(title=title, url=url, snippet=snippet)


def _url_list(raw: dict, key: str, positions: dict[str, list[int]], *, file: str, index: int):
    urls = require_list(raw, key, file=file, index=index, required=key == "positive_sources")
    seen: set[str] = set()
    for i, url in enumerate(urls):
        name = f"{key}[{i}]"
        if not isinstance(url, str):
            raise FeedbackError(
                f"expected a url string, got {type_name(url)}", file=file, record=index, field=name
            )
        if url not in positions:
            raise FeedbackError(
                f"url {url!r} is not among all_sources", file=file, record=index, field=name
            )
        if url in seen:
            raise FeedbackError(f"url {url!r} listed twice", file=file, record=index, field=name)
        seen.add(url)
    return urls


def parse_reranker_record(
    raw: Any,
    file: str,
    index: int,
    *,
    label_mode: LabelMode = "binary",
    require_timestamp: bool = False,
) -> RerankerRecord:
    """Validate one app record and turn it into a :class:`RerankerRecord`.

    Labels: a url in ``positive_sources`` marks every position that shows it (the same page is
    equally relevant wherever it appears). Sources in neither list are negatives when the record
    has no ``negative_sources`` (the app's "the rest are negatives"); when it lists its
    negatives, they are unjudged (``judged[i] = False``). ``label_mode="binary"`` gives picks 1;
    ``"pick_order"`` grades picks by the order the user picked them (3, 2, 1, then 1). An
    optional ``relevance: {url: grade}`` overrides both for the urls it names.
    ``require_timestamp`` (the time split) makes a missing or unreadable ``timestamp`` an error.
    """
    record = require_object(raw, file=file, index=index)
    query = require_str(record, "query", file=file, index=index)
    raw_sources = require_list(record, "all_sources", file=file, index=index)
    if not raw_sources:
        raise FeedbackError("no sources", file=file, record=index, field="all_sources")
    sources = tuple(
        parse_source(s, file=file, index=index, position=p) for p, s in enumerate(raw_sources)
    )
    positions: dict[str, list[int]] = {}
    for p, source in enumerate(sources):
        positions.setdefault(source.url, []).append(p)

    positives = _url_list(record, "positive_sources", positions, file=file, index=index)
    negatives = _url_list(record, "negative_sources", positions, file=file, index=index)
    both = set(positives) & set(negatives)
    if both:
        raise FeedbackError(
            f"url {sorted(both)[0]!r} is both positive and negative",
            file=file,
            record=index,
            field="negative_sources",
        )

    judged = [True] * len(sources)
    if record.get("negative_sources") is not None:
        labelled = set(positives) | set(negatives) | set(record.get("relevance") or {})
        judged = [s.url in labelled for s in sources]
    grades = [0.0] * len(sources)
    for rank, url in enumerate(positives):
        if label_mode == "binary":
            grade = 1.0
        elif label_mode == "pick_order":
            grade = PICK_ORDER_GRADES[min(rank, len(PICK_ORDER_GRADES) - 1)]
        else:
            raise ValueError(f"label_mode must be 'binary' or 'pick_order', got {label_mode!r}")
        for p in positions[url]:
            grades[p] = grade

    relevance = record.get("relevance")
    if relevance is not None:
        if not isinstance(relevance, dict):
            raise FeedbackError(
                f"expected an object {{url: grade}}, got {type_name(relevance)}",
                file=file,
                record=index,
                field="relevance",
            )
        for url, grade in relevance.items():
            name = f"relevance[{url!r}]"
            if url not in positions:
                raise FeedbackError(
                    "url is not among all_sources", file=file, record=index, field=name
                )
            if (
                isinstance(grade, bool)
                or not isinstance(grade, (int, float))
                or not math.isfinite(grade)
                or grade < 0
            ):
                raise FeedbackError(
                    f"expected a finite grade >= 0, got {grade!r}",
                    file=file,
                    record=index,
                    field=name,
                )
            for p in positions[url]:
                grades[p] = float(grade)

    query_id = record.get("query_id")
    if query_id is not None and not isinstance(query_id, (str, int)):
        raise FeedbackError(
            f"expected a string or integer, got {type_name(query_id)}",
            file=file,
            record=index,
            field="query_id",
        )
    timestamp = optional_str(record, "timestamp", file=file, index=index)
    if require_timestamp:
        parse_timestamp(record.get("timestamp"), file=file, index=index)
    return RerankerRecord(
        query=query,
        sources=sources,
        grades=tuple(grades),
        query_id=str(query_id) if query_id is not None else f"{file_stem(file)}:{index}",
        timestamp=timestamp,
        origin=f"{file}:{index}",
        judged=tuple(judged),
    )


def load_reranker_feedback(
    paths: str | Path | Sequence[str | Path],
    *,
    label_mode: LabelMode = "binary",
    on_invalid: OnInvalid = "error",
    deduplicate: bool = False,
    require_timestamp: bool = False,
) -> tuple[list[RerankerRecord], ParseReport]:
    """Load ``reranker_training_data.json``-style feedback from files, directories or globs.

    ``deduplicate`` drops repeats (:attr:`RerankerRecord.content_key`), counted in the report.
    """

    def parse(raw: Any, file: str, index: int) -> RerankerRecord:
        return parse_reranker_record(
            raw, file, index, label_mode=label_mode, require_timestamp=require_timestamp
        )

    return load_feedback(
        paths,
        top_key="reranker_data",
        parse_record=parse,
        on_invalid=on_invalid,
        dedupe_key=(lambda record: record.content_key) if deduplicate else None,
    )
