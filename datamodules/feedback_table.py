"""Feedback logs too large to hold: validated records kept as where they lie.

:func:`index_feedback` reads and validates every record once, with the same parser and rules as
:func:`datamodules.feedback.load_feedback`, but keeps for each record only its location (file,
byte offset and length of its JSON Lines line, a CRC-32 of those bytes) and a few numbers the
data module needs to split and filter without re-reading it (its *facts*): some 60 bytes a
record where the parsed Python objects take ~10 KB. :class:`FeedbackTable` parses a record again
when a batch asks for it (tens of microseconds, next to milliseconds of model time), so memory
stays flat however many epochs run. Records of a ``.json`` document, a single JSON value that
cannot be read in part, are kept as parsed.
"""

from __future__ import annotations

import json
import os
import zlib
from array import array
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from datamodules.feedback import FeedbackError, OnInvalid, ParseReport, iter_validated, log_report

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
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def record(self, offset: int, length: int, crc: int, index: int) -> Any:
        line = os.pread(self._descriptor(), length, offset)
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
    would itself take ~100 MB)."""

    def __init__(self, spec: FactSpec) -> None:
        self.spec = spec
        self.columns = {
            "store": array("i"),
            "offset": array("q"),
            "length": array("q"),
            "crc": array("L"),
            "index": array("q"),
        }
        self.facts = {name: array(code) for name, code in spec.types.items()}
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

    def build(self, stores: list) -> FeedbackTable:
        def to_numpy(column: array) -> np.ndarray:  # (the buffer protocol: no copy per item)
            values = np.array(column)
            return values.astype(bool) if column.typecode == "b" else values

        return FeedbackTable(
            stores,
            {name: to_numpy(column) for name, column in self.columns.items()},
            {name: to_numpy(column) for name, column in self.facts.items()},
        )


def index_feedback(
    paths: str | Path | Sequence[str | Path],
    *,
    top_key: str,
    parse_record: Callable[[Any, str, int], RecordT],
    facts: FactSpec[RecordT],
    on_invalid: OnInvalid = "error",
    dedupe_key: Callable[[RecordT], Hashable] | None = None,
) -> tuple[FeedbackTable[RecordT], ParseReport]:
    """:func:`~datamodules.feedback.load_feedback` for large logs: the same validation, report
    and de-duplication, returned as a :class:`FeedbackTable`.

    ``parse_record`` must be picklable (a module-level function or a ``functools.partial`` of
    one) when DataLoader workers re-read records.
    """
    report = ParseReport()
    builder = _TableBuilder(facts)
    stores: list[_JsonLinesFile | _InMemory] = []
    store_of_file: dict[int, int] = {}
    for file_number, located, record in iter_validated(
        paths,
        report,
        top_key=top_key,
        parse_record=parse_record,
        on_invalid=on_invalid,
        dedupe_key=dedupe_key,
    ):
        store = store_of_file.get(file_number)
        if store is None:
            store = store_of_file[file_number] = len(stores)
            file = report.files[file_number]
            jsonl = located.offset >= 0
            stores.append(_JsonLinesFile(file, parse_record) if jsonl else _InMemory())
        if located.offset >= 0:
            builder.add(store, located.offset, located.length, located.crc, located.index, record)
        else:
            in_memory = stores[store]
            builder.add(store, len(in_memory.records), 0, 0, located.index, record)
            in_memory.records.append(record)
    log_report(report)
    return builder.build(stores), report
