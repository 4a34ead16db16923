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

import numpy as np

SplitMode = Literal["hash", "time"]
_WHITESPACE = re.compile(r"\s+")
T = TypeVar("T")


def normalise_query(query: str) -> str:
    """Case-, width- and whitespace-insensitive form of a query (NFKC, casefold, one space)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", query).casefold()).strip()


def query_bucket(query: str, salt: str = "") -> float:
    """A stable number in [0, 1) for the query: the first 8 bytes of a SHA-256 hash."""
    return normalised_query_bucket(normalise_query(query), salt)


def normalised_query_bucket(normalised: str, salt: str = "") -> float:
    """:func:`query_bucket` of a query already passed through :func:`normalise_query`."""
    digest = hashlib.sha256(f"{salt}\x1f{normalised}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fraction(validation_fraction: float) -> None:
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")


def hash_validation_mask(buckets: Sequence[float] | np.ndarray, validation_fraction: float):
    """Which items validate, given their :func:`query_bucket`: those below the fraction."""
    _check_fraction(validation_fraction)
    return np.asarray(buckets, dtype=np.float64) < validation_fraction


def time_validation_mask(times: Sequence[float] | np.ndarray, validation_fraction: float):
    """Which items validate, given their times (POSIX seconds): the newest
    ``validation_fraction`` of them.

    Every validation item is strictly newer than every training item: items sharing the
    cut-off time all go to validation, so the slice can be slightly larger than the fraction.
    """
    _check_fraction(validation_fraction)
    times = np.asarray(times, dtype=np.float64)
    n_val = round(len(times) * validation_fraction)
    if n_val == 0:
        return np.zeros(len(times), dtype=bool)
    cutoff = np.sort(times)[len(times) - n_val]
    return times >= cutoff


def is_validation_query(query: str, validation_fraction: float, salt: str = "") -> bool:
    return bool(hash_validation_mask([query_bucket(query, salt)], validation_fraction)[0])


def _partition(items: list[T], validation: np.ndarray) -> tuple[list[T], list[T]]:
    train = [item for item, is_val in zip(items, validation, strict=True) if not is_val]
    return train, [item for item, is_val in zip(items, validation, strict=True) if is_val]


def split_by_hash(
    items: Iterable[T], key: Callable[[T], str], validation_fraction: float, salt: str = ""
) -> tuple[list[T], list[T]]:
    """``(train, validation)``: each item's side is decided by the hash of ``key(item)``."""
    items = list(items)
    buckets = [query_bucket(key(item), salt) for item in items]
    return _partition(items, hash_validation_mask(buckets, validation_fraction))


def drop_held_out(items: Sequence[T], held_out: Iterable[str], key: Callable[[T], str]) -> list[T]:
    """``items`` without those whose normalised ``key`` is among the ``held_out`` texts."""
    held = {normalise_query(text) for text in held_out}
    return [item for item in items if normalise_query(key(item)) not in held]


def split_by_time(
    items: Iterable[T], time_of: Callable[[T], datetime], validation_fraction: float
) -> tuple[list[T], list[T]]:
    """``(train, validation)``: the newest ``validation_fraction`` of the items validate (see
    :func:`time_validation_mask`). Both lists keep the items' original order."""
    items = list(items)
    times = [time_of(item).timestamp() for item in items] if validation_fraction else []
    if not times:
        _check_fraction(validation_fraction)
        return items, []
    return _partition(items, time_validation_mask(times, validation_fraction))


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
