"""Reading feedback files of any size: discovery (files, folders, globs), JSON and JSON Lines
records located by byte range, validation record by record with a report, in one pass."""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from datamodules.feedback import (
    FEEDBACK_SUFFIXES,
    FeedbackError,
    OnInvalid,
    ParseReport,
    RecordFiltered,
)

log = logging.getLogger(__name__)

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
