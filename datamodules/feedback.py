"""The one place that reads and validates the app's feedback files.

Everything downstream receives typed, validated records (:class:`RerankerRecord`). A file that
cannot be trusted is reported with its path, the record's index and the offending field
(:class:`FeedbackError`); in ``on_invalid="skip"`` mode bad records are dropped and counted in a
:class:`ParseReport` instead, so training never sees a half-parsed record.

Accepted inputs: a ``.json`` file (``{"reranker_data": [...]}`` as the app writes it, or a bare
list of records), a ``.jsonl`` file (one record a line, for large logs), a directory of such
files, or a glob pattern; any mix of these.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from datamodules.split import normalise_query

log = logging.getLogger(__name__)

OnInvalid = Literal["error", "skip"]
LabelMode = Literal["binary", "pick_order"]
FEEDBACK_SUFFIXES = (".json", ".jsonl")
# Grades given to the user's 1st, 2nd, 3rd... pick in ``label_mode="pick_order"``; later picks
# get the last value. Unpicked sources get 0.
PICK_ORDER_GRADES = (3.0, 2.0, 1.0)


class FeedbackError(ValueError):
    """A feedback file or record that cannot be used, located as precisely as possible."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file)
        self.record = record
        self.field = field
        self.reason = message
        where = self.file
        if record is not None:
            where += f": record {record}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keyword-only arguments: the default pickling would lose them
        return _rebuild_feedback_error, (self.reason, self.file, self.record, self.field)

    def shifted(self, records: int) -> FeedbackError:
        """The same error with its record index moved by ``records`` (a part of a file read
        on its own counts its records from 0)."""
        record = None if self.record is None else self.record + records
        return FeedbackError(self.reason, file=self.file, record=record, field=self.field)


def _rebuild_feedback_error(reason: str, file: str, record: int | None, field: str | None):
    return FeedbackError(reason, file=file, record=record, field=field)


class RecordFiltered(Exception):
    """Raised by a ``parse_record`` for a valid record that carries no training signal.

    Not a :class:`FeedbackError`: the record is fine, so ``on_invalid`` does not apply; the load
    counts it in :attr:`ParseReport.filtered` under ``reason`` and moves on.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Source:
    """One source the app showed for a query."""

    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class RerankerRecord:
    """One query with its sources in the order the app displayed them.

    Sources are keyed by position, never by url alone: the same url can be shown twice for one
    query (real logs have this), and ``grades[i]`` belongs to ``sources[i]``.
    """

    query: str
    sources: tuple[Source, ...]
    grades: tuple[float, ...]
    query_id: str
    timestamp: str | None = None
    origin: str = ""
    # False for a source in neither positive_sources nor negative_sources when the record lists
    # its negatives explicitly (e.g. a click log's results below the last click): shown, but
    # not known to be irrelevant. Training leaves such sources out; evaluation counts them as
    # not relevant (trec_eval's convention for unjudged documents).
    judged: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if not self.judged:
            object.__setattr__(self, "judged", (True,) * len(self.sources))

    @property
    def has_positive(self) -> bool:
        return any(g > 0 for g in self.grades)

    @property
    def content_key(self) -> Hashable:
        """Equal for repeats: the same query (normalised) shown the same sources, same picks."""
        urls = tuple(source.url for source in self.sources)
        return normalise_query(self.query), urls, self.grades, self.judged

    @property
    def has_contrast(self) -> bool:
        """True when the judged grades differ, i.e. the list can teach a ranking loss."""
        return len({g for g, j in zip(self.grades, self.judged, strict=True) if j}) > 1


@dataclass
class ParseReport:
    """What a load read, kept and dropped (with reasons), for logs and for the user."""

    files: list[str] = field(default_factory=list)
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    # Valid records left out because they cannot teach anything (see RecordFiltered), by reason.
    filtered: Counter = field(default_factory=Counter)
    # Repeats of an earlier record (same content key) left out; the first one is kept.
    duplicates: int = 0

    # The errors behind ``examples`` (for merging the reports of parts of a file).
    example_errors: list[FeedbackError] = field(default_factory=list, repr=False)

    def drop(self, error: FeedbackError, max_examples: int = 5) -> None:
        self.dropped[error.reason if error.field is None else f"{error.field}: {error.reason}"] += 1
        if len(self.examples) < max_examples:
            self.examples.append(str(error))
            self.example_errors.append(error)

    def merge_part(self, part: ParseReport, records_before: int, max_examples: int = 5) -> None:
        """Add the counts of a part of a file read on its own, whose record indices start
        ``records_before`` records into the file (``kept`` is left to the caller)."""
        self.read += part.read
        self.dropped.update(part.dropped)
        self.filtered.update(part.filtered)
        self.duplicates += part.duplicates
        for error in part.example_errors[: max(0, max_examples - len(self.examples))]:
            shifted = error.shifted(records_before)
            self.examples.append(str(shifted))
            self.example_errors.append(shifted)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def n_filtered(self) -> int:
        return sum(self.filtered.values())

    def summary(self) -> str:
        text = f"read {self.read} records from {len(self.files)} file(s), kept {self.kept}"
        if self.duplicates:
            text += f", dropped {self.duplicates} duplicate(s)"
        if self.n_filtered:
            reasons = "; ".join(f"{n} x {reason}" for reason, n in self.filtered.most_common())
            text += f", filtered {self.n_filtered} ({reasons})"
        if self.n_dropped:
            reasons = "; ".join(f"{n} x {reason}" for reason, n in self.dropped.most_common())
            text += f", dropped {self.n_dropped} ({reasons})"
        return text


# ---------------------------------------------------------------------------------------------
# Field checks shared by the record parsers
# ---------------------------------------------------------------------------------------------


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def require_str(
    raw: dict, key: str, *, file: str, index: int, where: str = "", non_empty: bool = True
) -> str:
    name = f"{where}{key}"
    if key not in raw:
        raise FeedbackError("missing", file=file, record=index, field=name)
    value = raw[key]
    if not isinstance(value, str):
        raise FeedbackError(
            f"expected a string, got {type_name(value)}", file=file, record=index, field=name
        )
    if non_empty and not value.strip():
        raise FeedbackError("empty", file=file, record=index, field=name)
    return value


def parse_timestamp(value: Any, *, file: str, index: int, field: str = "timestamp") -> datetime:
    """An ISO 8601 time (``2025-07-19T10:00:00``, with ``Z`` or an offset, or a date alone) as
    an aware datetime; times without an offset are taken as UTC."""
    if value is None:
        raise FeedbackError(
            "missing (the time split needs it)", file=file, record=index, field=field
        )
    if not isinstance(value, str):
        raise FeedbackError(
            f"expected an ISO 8601 string, got {type_name(value)}",
            file=file,
            record=index,
            field=field,
        )
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FeedbackError(
            f"not an ISO 8601 time: {value!r}", file=file, record=index, field=field
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def record_time(record: Any) -> datetime:
    """The parsed ``timestamp`` of a loaded record (anything with ``timestamp`` and an
    ``origin`` of the form ``file:index``)."""
    file, _, index = record.origin.rpartition(":")
    return parse_timestamp(record.timestamp, file=file, index=int(index) if index.isdigit() else -1)


def optional_str(raw: dict, key: str, *, file: str, index: int, where: str = "") -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FeedbackError(
            f"expected a string, got {type_name(value)}",
            file=file,
            record=index,
            field=f"{where}{key}",
        )
    return value


def require_list(
    raw: dict, key: str, *, file: str, index: int, required: bool = True, where: str = ""
) -> list:
    name = f"{where}{key}"
    if key not in raw or raw[key] is None:
        if required:
            raise FeedbackError("missing", file=file, record=index, field=name)
        return []
    value = raw[key]
    if not isinstance(value, list):
        raise FeedbackError(
            f"expected a list, got {type_name(value)}", file=file, record=index, field=name
        )
    return value


def require_object(raw: Any, *, file: str, index: int, field: str | None = None) -> dict:
    """``raw`` itself must be a JSON object (the record, or one of its fields)."""
    if not isinstance(raw, dict):
        raise FeedbackError(
            f"expected an object, got {type_name(raw)}", file=file, record=index, field=field
        )
    return raw


# ---------------------------------------------------------------------------------------------
# Documents: how a source becomes the text a model reads
# ---------------------------------------------------------------------------------------------


def clip_text(text: str, max_chars: int | None) -> str:
    """``text`` cut to ``max_chars`` characters: a bound on what reaches the tokenizer, which
    would otherwise read a multi-megabyte snippet whole before truncating it to a few hundred
    tokens."""
    return text if max_chars is None or len(text) <= max_chars else text[:max_chars]


def render_document(template: str, source: Source, max_chars: int | None = None) -> str:
    """The text the model reads for a source, e.g. ``"{title}\\n{snippet}"``.

    Surrounding whitespace is stripped so that a missing title leaves no stray separator. Each
    field is clipped to ``max_chars`` first, so a huge snippet cannot crowd out the title.
    """
    fields = {
        "title": clip_text(source.title, max_chars),
        "snippet": clip_text(source.snippet, max_chars),
        "url": clip_text(source.url, max_chars),
    }
    return template.format(**fields).strip()
