"""Deterministic train/validation splits.

By hash (the default): a record's side depends only on its normalised query text (and an
optional salt), never on the order or size of the data: the same query always lands on the same
side, both copies of a repeated query land together, and as feedback grows old queries stay where
they were.

By time: the newest records validate and everything older trains, which is what a deployed
model faces (tomorrow's queries, not a random sample of yesterday's).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Literal, TypeVar

SplitMode = Literal["hash", "time"]
_WHITESPACE = re.compile(r"\s+")
T = TypeVar("T")


def normalise_query(query: str) -> str:
    """Case-, width- and whitespace-insensitive form of a query (NFKC, casefold, one space)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", query).casefold()).strip()


def query_bucket(query: str, salt: str = "") -> float:
    """A stable number in [0, 1) for the query: the first 8 bytes of a SHA-256 hash."""
    digest = hashlib.sha256(f"{salt}\x1f{normalise_query(query)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation_query(query: str, validation_fraction: float, salt: str = "") -> bool:
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    return query_bucket(query, salt) < validation_fraction


def split_by_hash(
    items: Iterable[T], key: Callable[[T], str], validation_fraction: float, salt: str = ""
) -> tuple[list[T], list[T]]:
    """``(train, validation)``: each item's side is decided by the hash of ``key(item)``."""
    train: list[T] = []
    validation: list[T] = []
    for item in items:
        is_val = is_validation_query(key(item), validation_fraction, salt)
        (validation if is_val else train).append(item)
    return train, validation


def drop_held_out(items: Sequence[T], held_out: Iterable[str], key: Callable[[T], str]) -> list[T]:
    """``items`` without those whose normalised ``key`` is among the ``held_out`` texts."""
    held = {normalise_query(text) for text in held_out}
    return [item for item in items if normalise_query(key(item)) not in held]


def split_by_time(
    items: Iterable[T], time_of: Callable[[T], datetime], validation_fraction: float
) -> tuple[list[T], list[T]]:
    """``(train, validation)``: the newest ``validation_fraction`` of the items validate.

    Every validation item is strictly newer than every training item: items sharing the
    cut-off time all go to validation, so the slice can be slightly larger than the fraction.
    Both lists keep the items' original order.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    items = list(items)
    n_val = round(len(items) * validation_fraction)
    if n_val == 0:
        return items, []
    times = [time_of(item) for item in items]
    cutoff = sorted(times)[len(items) - n_val]
    train = [item for item, t in zip(items, times, strict=True) if t < cutoff]
    validation = [item for item, t in zip(items, times, strict=True) if t >= cutoff]
    return train, validation


def split_train_validation(
    items: Iterable[T],
    *,
    mode: SplitMode,
    validation_fraction: float,
    key: Callable[[T], str],
    time_of: Callable[[T], datetime],
    salt: str = "",
) -> tuple[list[T], list[T]]:
    """``(train, validation)`` by ``mode``: ``hash`` of ``key(item)`` or ``time`` (newest)."""
    if mode == "hash":
        return split_by_hash(items, key, validation_fraction, salt)
    if mode == "time":
        return split_by_time(items, time_of, validation_fraction)
    raise ValueError(f"split must be 'hash' or 'time', got {mode!r}")
