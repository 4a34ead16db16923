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

import codecs
import functools
import glob
import hashlib
import json
import logging
import math
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

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
# Files
# ---------------------------------------------------------------------------------------------


def discover_feedback_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand files, directories and glob patterns (their ``*.json``/``*.jsonl``, sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for entry in paths:
        entry_str = str(entry)
        if any(ch in entry_str for ch in "*?["):
            matches = sorted(
                p
                for p in map(Path, glob.glob(entry_str, recursive=True))
                if p.is_file() and p.suffix in FEEDBACK_SUFFIXES
            )
            if not matches:
                raise FeedbackError("no .json or .jsonl file matches this pattern", file=entry_str)
            found.extend(matches)
            continue
        path = Path(entry)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix in FEEDBACK_SUFFIXES
            )
            if not files:
                raise FeedbackError("directory holds no .json or .jsonl file", file=path)
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise FeedbackError("no such file or directory", file=path)
    # The same file named twice (e.g. by a directory and a glob) is read once.
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return list(unique)


def _not_utf8(path: Path, byte: int, record: int | None = None) -> FeedbackError:
    return FeedbackError(
        f"not UTF-8 text (byte {byte} cannot be decoded); re-save the file as UTF-8",
        file=path,
        record=record,
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err.start) from None


@dataclass(frozen=True)
class ByteRange:
    """Part of a JSON Lines file: the lines starting in ``[start, end)`` (``start`` at a line
    start), the first of them being line ``first_line`` of the file."""

    start: int = 0
    end: int | None = None
    first_line: int = 1


WHOLE_FILE = ByteRange()


def iter_jsonl_lines(
    path: Path, byte_range: ByteRange = WHOLE_FILE
) -> Iterator[tuple[int, int, int, int, str]]:
    """``(line_number, byte_offset, byte_length, crc32, text)`` of each non-blank line of a
    JSON Lines file.

    Streams the file (a multi-gigabyte log is never held whole). Lines end at a line feed only:
    U+0085/U+2028 occur inside real snippets and are legal inside JSON strings. The offset and
    length locate the line's bytes (without the line feed), whose CRC-32 tells a later re-read
    whether they changed (see :mod:`datamodules.feedback_table`). A byte that is not UTF-8 is
    fatal, named by its offset in the file.
    """
    offset = byte_range.start
    with open(path, "rb") as handle:
        handle.seek(offset)
        for line_no, line in enumerate(handle, start=byte_range.first_line):
            if byte_range.end is not None and offset >= byte_range.end:
                break
            start, offset = offset, offset + len(line)
            if start == 0 and line.startswith(codecs.BOM_UTF8):
                line, start = line[len(codecs.BOM_UTF8) :], start + len(codecs.BOM_UTF8)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, start + err.start) from None
            if text and not text.isspace():
                if line[-1:] == b"\n":
                    line = line[:-1]
                yield line_no, start, len(line), zlib.crc32(line), text


@dataclass(frozen=True)
class LocatedRecord:
    """A raw record with where it came from: its index in the file and, for JSON Lines, the
    byte span of its line and the line's CRC-32 (``offset`` -1 for records of a ``.json``
    document)."""

    index: int
    raw: Any
    offset: int = -1
    length: int = 0
    crc: int = 0


def iter_located_records(
    path: Path,
    top_key: str,
    report: ParseReport,
    on_invalid: OnInvalid,
    byte_range: ByteRange = WHOLE_FILE,
) -> Iterator[LocatedRecord]:
    """Every raw record of one JSON or JSON Lines file (or of a ``byte_range`` of the latter,
    whose records are then numbered from 0), with its location.

    A syntax error that breaks a whole ``.json`` file is always fatal (no record can be trusted);
    a broken line of a ``.jsonl`` file is one bad record and honours ``on_invalid``.
    """
    if path.suffix == ".jsonl":
        lines = iter_jsonl_lines(path, byte_range)
        for index, (line_no, offset, length, crc, text) in enumerate(lines):
            report.read += 1
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                error = FeedbackError(
                    f"invalid JSON at line {line_no} column {err.colno}: {err.msg}",
                    file=path,
                    record=index,
                )
                if on_invalid == "error":
                    raise error from None
                report.drop(error)
                continue
            yield LocatedRecord(index, raw, offset, length, crc)
        return

    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise FeedbackError(
            f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}", file=path
        ) from None
    del text
    if isinstance(data, dict):
        if top_key not in data:
            raise FeedbackError(
                f"expected a top-level key '{top_key}' (found: {sorted(data)[:5]})",
                file=path,
                field=top_key,
            )
        data = data[top_key]
    if not isinstance(data, list):
        raise FeedbackError(
            f"expected a list of records, got {type(data).__name__}", file=path, field=top_key
        )
    for index, raw in enumerate(data):
        report.read += 1
        yield LocatedRecord(index, raw)


def iter_raw_records(
    path: Path, top_key: str, report: ParseReport, on_invalid: OnInvalid
) -> Iterator[tuple[int, Any]]:
    """``(record_index, raw_record)`` of one file (see :func:`iter_located_records`)."""
    for located in iter_located_records(path, top_key, report, on_invalid):
        yield located.index, located.raw


RecordT = TypeVar("RecordT")


def content_digest(key: Hashable) -> bytes:
    """A 128-bit digest of a de-duplication key: a million of them fit in a few dozen MB,
    where the keys themselves (queries, urls) would take gigabytes."""
    return hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def iter_validated_file(
    path: Path,
    report: ParseReport,
    seen: set[bytes],
    *,
    top_key: str,
    parse_record: Callable[[Any, str, int], RecordT],
    on_invalid: OnInvalid = "error",
    dedupe_key: Callable[[RecordT], Hashable] | None = None,
    byte_range: ByteRange = WHOLE_FILE,
) -> Iterator[tuple[LocatedRecord, RecordT, bytes | None]]:
    """``(location, record, content digest)`` of every valid record of one file that is not in
    ``seen`` (which it extends), counting the rest in ``report``."""
    for located in iter_located_records(path, top_key, report, on_invalid, byte_range):
        digest = None
        try:
            record = parse_record(located.raw, str(path), located.index)
            if dedupe_key is not None:
                digest = content_digest(dedupe_key(record))
                if digest in seen:
                    report.duplicates += 1
                    continue
                seen.add(digest)
        except RecordFiltered as filtered:
            report.filtered[filtered.reason] += 1
            continue
        except FeedbackError as error:
            if on_invalid == "error":
                raise
            report.drop(error)
            continue
        report.kept += 1
        yield located, record, digest


def check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")


def iter_validated(
    paths: str | Path | Sequence[str | Path],
    report: ParseReport,
    *,
    top_key: str,
    parse_record: Callable[[Any, str, int], RecordT],
    on_invalid: OnInvalid = "error",
    dedupe_key: Callable[[RecordT], Hashable] | None = None,
) -> Iterator[tuple[int, LocatedRecord, RecordT]]:
    """``(file_number, location, record)`` of every valid, new record, counting the rest in
    ``report`` (see :func:`load_feedback` for the rules)."""
    check_on_invalid(on_invalid)
    seen: set[bytes] = set()
    for file_number, path in enumerate(discover_feedback_files(paths)):
        report.files.append(str(path))
        for located, record, _ in iter_validated_file(
            path,
            report,
            seen,
            top_key=top_key,
            parse_record=parse_record,
            on_invalid=on_invalid,
            dedupe_key=dedupe_key,
        ):
            yield file_number, located, record


def log_report(report: ParseReport) -> None:
    if report.n_dropped:
        log.warning("Feedback: %s", report.summary())
        for example in report.examples:
            log.warning("  dropped: %s", example)
    else:
        log.info("Feedback: %s", report.summary())


def load_feedback(
    paths: str | Path | Sequence[str | Path],
    *,
    top_key: str,
    parse_record: Callable[[Any, str, int], RecordT],
    on_invalid: OnInvalid = "error",
    dedupe_key: Callable[[RecordT], Hashable] | None = None,
) -> tuple[list[RecordT], ParseReport]:
    """Read every record of every file with ``parse_record(raw, file, index)``.

    ``parse_record`` raises :class:`FeedbackError` for a bad record; ``on_invalid`` decides
    whether that stops the load (``"error"``) or drops the record and counts it (``"skip"``).
    It raises :class:`RecordFiltered` for a valid record without training signal, which is
    left out and counted in ``report.filtered`` whatever ``on_invalid`` says. With
    ``dedupe_key``, a record whose key was seen before (in any file of this load) is a repeat:
    the first is kept, the others are counted in ``report.duplicates``.

    Every record stays in memory; :func:`datamodules.feedback_table.index_feedback` keeps
    only where each record lies, for logs too large for that.
    """
    report = ParseReport()
    records = [
        record
        for _, _, record in iter_validated(
            paths,
            report,
            top_key=top_key,
            parse_record=parse_record,
            on_invalid=on_invalid,
            dedupe_key=dedupe_key,
        )
    ]
    log_report(report)
    return records, report


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
