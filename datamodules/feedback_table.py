"""Feedback logs too large to hold: validated records kept as where they lie.

:func:`index_feedback` reads and validates every record once, with the same parser and rules as
:func:`datamodules.feedback_files.load_feedback`, but keeps for each record only its location (file,
byte offset and length of its JSON Lines line, a CRC-32 of those bytes) and a few numbers the
data module needs to split and filter without re-reading it (its *facts*): some 60 bytes a
record where the parsed Python objects take ~10 KB. :class:`FeedbackTable` parses a record again
when a batch asks for it (tens of microseconds, next to milliseconds of model time), so memory
stays flat however many epochs run. Records of a ``.json`` document, a single JSON value that
cannot be read in part, are kept as parsed.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import zlib
from array import array
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from datamodules.feedback import FeedbackError, OnInvalid, ParseReport
from datamodules.feedback_files import (
    WHOLE_FILE,
    ByteRange,
    check_on_invalid,
    discover_feedback_files,
    iter_validated_file,
    log_report,
)

RecordT = TypeVar("RecordT")


@dataclass(frozen=True)
class FactSpec(Generic[RecordT]):
    """What a table remembers of each record: ``facts_of(record)`` returns one value per name,
    stored with the :mod:`array` type code ``types[name]`` (``"d"`` float, ``"q"`` int, ``"Q"``
    unsigned int, ``"b"`` bool)."""

    types: Mapping[str, str]
    facts_of: Callable[[RecordT], tuple]


class _JsonLinesFile:
    """Re-reads records of one JSON Lines file by byte span (``os.pread``: no mapping, so the
    pages read do not count as the process's memory)."""

    def __init__(self, path: str, parse_record: Callable[[Any, str, int], Any]) -> None:
        self.path = path
        self.parse_record = parse_record
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict:  # a DataLoader worker opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # not shared across a fork
            flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # (O_BINARY: Windows)
            self._fd, self._pid = os.open(self.path, flags), os.getpid()
        return self._fd

    def record(self, offset: int, length: int, crc: int, index: int) -> Any:
        descriptor = self._descriptor()
        if hasattr(os, "pread"):
            line = os.pread(descriptor, length, offset)
        else:  # Windows: this descriptor is this process's own, so seek + read is safe
            os.lseek(descriptor, offset, os.SEEK_SET)
            line = os.read(descriptor, length)
        if len(line) != length or zlib.crc32(line) != crc:
            # Appending to a log is fine (earlier lines keep their place); rewriting it during a
            # run is not: the record read now is not the one that was validated and split.
            raise FeedbackError(
                "the record changed on disk after the data were loaded; restart the run "
                "(append to a log that is being trained on, never rewrite it)",
                file=self.path,
                record=index,
            )
        return self.parse_record(json.loads(line), self.path, index)


class _InMemory:
    """Records of a ``.json`` document, kept as parsed."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def record(self, offset: int, length: int, crc: int, index: int) -> Any:
        return self.records[offset]


class FeedbackTable(Sequence[RecordT]):
    """A read-only sequence of validated records, most of them re-read from disk on access.

    ``table[i]`` is the record; ``table.facts[name][i]`` its facts (numpy arrays, so splits and
    filters run on a million records in milliseconds); ``table.select(rows)`` a sub-table.
    """

    def __init__(
        self,
        stores: list[_JsonLinesFile | _InMemory],
        columns: dict[str, np.ndarray],
        facts: dict[str, np.ndarray],
    ) -> None:
        self._stores = stores
        self._columns = columns  # store, offset, length, crc, index: where each record lies
        self.facts = facts

    def __len__(self) -> int:
        return len(self._columns["store"])

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return self.select(np.arange(len(self))[row])
        c = self._columns
        return self._stores[c["store"][row]].record(
            int(c["offset"][row]), int(c["length"][row]), int(c["crc"][row]), int(c["index"][row])
        )

    def __iter__(self) -> Iterator[RecordT]:
        for row in range(len(self)):
            yield self[row]

    def __repr__(self) -> str:
        return f"FeedbackTable({len(self)} records)"

    def select(self, rows: np.ndarray | Sequence[int] | Sequence[bool]) -> FeedbackTable[RecordT]:
        """The records at ``rows`` (indices, or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype != bool:
            rows = rows.astype(np.int64)
        return FeedbackTable(
            self._stores,
            {name: column[rows] for name, column in self._columns.items()},
            {name: fact[rows] for name, fact in self.facts.items()},
        )

    @classmethod
    def from_records(cls, records: Sequence[RecordT], spec: FactSpec[RecordT]) -> FeedbackTable:
        """A table over records already in memory (tests, records built in code)."""
        store = _InMemory()
        builder = _TableBuilder(spec)
        for position, record in enumerate(records):
            store.records.append(record)
            builder.add(0, position, 0, 0, position, record)
        return builder.build([store])


class _TableBuilder:
    """Accumulates columns in compact :mod:`array` buffers (a Python list of a million tuples
    would itself take ~100 MB), plus whole numpy parts read by worker processes."""

    def __init__(self, spec: FactSpec) -> None:
        self.spec = spec
        self.parts: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        self._start_buffers()

    def _start_buffers(self) -> None:
        self.columns = {name: array(code) for name, code in COLUMN_TYPES.items()}
        self.facts = {name: array(code) for name, code in self.spec.types.items()}
        self._fact_columns = list(self.facts.values())

    def add(self, store: int, offset: int, length: int, crc: int, index: int, record) -> None:
        c = self.columns
        c["store"].append(store)
        c["offset"].append(offset)
        c["length"].append(length)
        c["crc"].append(crc)
        c["index"].append(index)
        for column, value in zip(self._fact_columns, self.spec.facts_of(record), strict=True):
            column.append(value)

    def _flush(self) -> None:
        def to_numpy(column: array) -> np.ndarray:  # (the buffer protocol: no copy per item)
            values = np.array(column)
            return values.astype(bool) if column.typecode == "b" else values

        self.parts.append(
            (
                {name: to_numpy(column) for name, column in self.columns.items()},
                {name: to_numpy(column) for name, column in self.facts.items()},
            )
        )
        self._start_buffers()

    def extend(self, columns: dict[str, np.ndarray], facts: dict[str, np.ndarray]) -> None:
        self._flush()
        self.parts.append((columns, facts))

    def build(self, stores: list) -> FeedbackTable:
        self._flush()
        return FeedbackTable(
            stores,
            {name: np.concatenate([p[0][name] for p in self.parts]) for name in COLUMN_TYPES},
            {name: np.concatenate([p[1][name] for p in self.parts]) for name in self.spec.types},
        )


COLUMN_TYPES = {"store": "i", "offset": "q", "length": "q", "crc": "L", "index": "q"}
# JSON Lines files from this size on are read by several processes (a ~3.7 KB record takes
# ~50 us to validate: 64 MiB is about a second of work, worth the start of a pool).
PARALLEL_MIN_BYTES = 64 * 2**20


@dataclass
class _PartTask:
    path: str
    byte_range: ByteRange
    top_key: str
    parse_record: Callable
    facts: FactSpec
    on_invalid: OnInvalid
    dedupe_key: Callable | None


@dataclass
class _PartResult:
    columns: dict[str, np.ndarray]
    facts: dict[str, np.ndarray]
    digests: list[bytes | None]
    report: ParseReport
    error: FeedbackError | None = None


def _index_part(task: _PartTask) -> _PartResult:
    """Validates one byte range of a file (in a worker process); record indices from 0."""
    report = ParseReport()
    builder = _TableBuilder(task.facts)
    digests: list[bytes | None] = []
    error = None
    try:
        for located, record, digest in iter_validated_file(
            Path(task.path),
            report,
            set(),  # repeats across parts are found by the caller, in file order
            top_key=task.top_key,
            parse_record=task.parse_record,
            on_invalid=task.on_invalid,
            dedupe_key=task.dedupe_key,
            byte_range=task.byte_range,
        ):
            builder.add(0, located.offset, located.length, located.crc, located.index, record)
            digests.append(digest)
    except FeedbackError as caught:  # reported by the caller once earlier parts are merged
        error = caught
    table = builder.build([])
    return _PartResult(table._columns, table.facts, digests, report, error)


def _byte_ranges(path: Path, parts: int) -> list[ByteRange]:
    """``parts`` ranges of about equal size, each starting at a line start, with line numbers
    (counted with ``bytes.count``: a pass over the file at memory speed)."""
    size = path.stat().st_size
    starts = [0]
    with open(path, "rb") as handle:
        for k in range(1, parts):
            handle.seek(max(size * k // parts, starts[-1]))
            handle.readline()
            if handle.tell() < size and handle.tell() > starts[-1]:
                starts.append(handle.tell())
        ranges, line, position = [], 1, 0
        for start, end in zip(starts, [*starts[1:], None], strict=True):
            handle.seek(position)
            while position < start:  # newlines before this range
                block = handle.read(min(2**24, start - position))
                line += block.count(b"\n")
                position += len(block)
            ranges.append(ByteRange(start, end, line))
    return ranges


def _default_workers() -> int:
    """One reading process per core this process may use, at most 8."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(8, len(usable) if usable else os.cpu_count() or 1))


def index_feedback(
    paths: str | Path | Sequence[str | Path],
    *,
    top_key: str,
    parse_record: Callable[[Any, str, int], RecordT],
    facts: FactSpec[RecordT],
    on_invalid: OnInvalid = "error",
    dedupe_key: Callable[[RecordT], Hashable] | None = None,
    workers: int | None = None,
) -> tuple[FeedbackTable[RecordT], ParseReport]:
    """:func:`~datamodules.feedback_files.load_feedback` for large logs: the same validation, report
    and de-duplication, returned as a :class:`FeedbackTable`.

    JSON Lines files of :data:`PARALLEL_MIN_BYTES` or more are split into byte ranges that
    ``workers`` processes (default: one per core, at most 8; 1 reads in this process) validate
    at once; the result is the same as reading them here, in the same order. ``parse_record``,
    ``facts.facts_of`` and ``dedupe_key`` must then be picklable (module-level functions or
    ``functools.partial`` of them), as DataLoader workers that re-read records need anyway.
    """
    check_on_invalid(on_invalid)
    workers = _default_workers() if workers is None else max(1, workers)
    report = ParseReport()
    builder = _TableBuilder(facts)
    stores: list[_JsonLinesFile | _InMemory] = []
    seen: set[bytes] = set()
    validate = functools.partial(
        iter_validated_file,
        top_key=top_key,
        parse_record=parse_record,
        on_invalid=on_invalid,
        dedupe_key=dedupe_key,
    )
    for path in discover_feedback_files(paths):
        report.files.append(str(path))
        store = len(stores)
        if path.suffix != ".jsonl":
            in_memory = _InMemory()
            stores.append(in_memory)
            for located, record, _ in validate(path, report, seen):
                builder.add(store, len(in_memory.records), 0, 0, located.index, record)
                in_memory.records.append(record)
            continue
        stores.append(_JsonLinesFile(str(path), parse_record))
        if workers > 1 and path.stat().st_size >= PARALLEL_MIN_BYTES:
            task = _PartTask(
                str(path), WHOLE_FILE, top_key, parse_record, facts, on_invalid, dedupe_key
            )
            tasks = [replace(task, byte_range=r) for r in _byte_ranges(path, 2 * workers)]
            context = multiprocessing.get_context(
                "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            )
            with context.Pool(min(workers, len(tasks))) as pool:
                records_before = 0
                for part in pool.imap(_index_part, tasks):  # (in file order)
                    report.merge_part(part.report, records_before)
                    if part.error is not None:
                        raise part.error.shifted(records_before)
                    keep = np.ones(len(part.digests), dtype=bool)
                    if dedupe_key is not None:
                        for row, digest in enumerate(part.digests):
                            if digest in seen:
                                keep[row] = False
                                report.duplicates += 1
                            else:
                                seen.add(digest)
                    columns = {name: column[keep] for name, column in part.columns.items()}
                    columns["store"][:] = store
                    columns["index"] += records_before
                    builder.extend(columns, {k: v[keep] for k, v in part.facts.items()})
                    report.kept += int(keep.sum())
                    records_before += part.report.read
            continue
        for located, record, _ in validate(path, report, seen):
            builder.add(store, located.offset, located.length, located.crc, located.index, record)
    log_report(report)
    return builder.build(stores), report
