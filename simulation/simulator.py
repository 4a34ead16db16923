"""Impressions of labelled lists, shown by a display policy and picked by a simulated user,
written as the app's ``reranker_training_data.json`` records.

Each record is what the app would log: the ``shown`` first sources in display order
(``all_sources``), the user's picks (``positive_sources``, top to bottom) and the other shown
sources (``negative_sources``: the app counts every shown, unpicked source as a negative), and a
``timestamp`` (one second apart, in impression order, so the time split works). Beside them, a
``simulation`` object the training parser ignores keeps what the app could not know: every shown
source's true grade, the display policy, the user model and the impression's number.
:func:`with_true_labels` turns such records into the oracle's: the same impressions, labelled
with their true grades (a ``relevance`` object, which the parser prefers to the picks).

Deterministic: impression ``j`` of list ``n`` draws from ``numpy.random.default_rng([seed, n,
j])``, so a record does not depend on how many others were simulated.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from simulation.display import DisplayPolicy
from simulation.labelled import LabelledList
from simulation.users import PositionBasedUser

SIMULATION_KEY = "simulation"
START_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


def impression_plan(n_lists: int, n_impressions: int | None, seed: int) -> list[tuple[int, int]]:
    """``(list index, impression number)`` pairs: every list once in a seeded order, then again
    in the same order, until ``n_impressions`` (``None``: one impression per list)."""
    if n_lists == 0:
        return []
    total = n_lists if n_impressions is None else n_impressions
    if total < 0:
        raise ValueError(f"n_impressions must be >= 0, got {n_impressions}")
    order = np.random.default_rng([seed, 2**31]).permutation(n_lists)
    return [(int(order[i % n_lists]), i // n_lists) for i in range(total)]


def simulate(
    lists: Sequence[LabelledList],
    display: DisplayPolicy,
    user: PositionBasedUser,
    *,
    n_impressions: int | None = None,
    shown: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """App-format records of ``n_impressions`` simulated impressions (see the module)."""
    if shown < 1:
        raise ValueError(f"shown must be at least 1, got {shown}")
    plan = impression_plan(len(lists), n_impressions, seed)
    policies = getattr(display, "policies", [display])  # Alternating: one per impression number
    orders = [policy.order(lists) for policy in policies] if plan else []
    user_description = {"model": "position-based", **asdict(user)}
    records = []
    for i, (n, impression) in enumerate(plan):
        item = lists[n]
        displayed = orders[impression % len(orders)][n][:shown]
        grades = [item.grades[p] for p in displayed]
        picks = user.picks(grades, np.random.default_rng([seed, n, impression]))
        sources = [item.sources[p] for p in displayed]
        picked_urls: list[str] = []
        for rank in picks:  # a url shown twice is picked once
            if sources[rank].url not in picked_urls:
                picked_urls.append(sources[rank].url)
        urls = list(dict.fromkeys(s.url for s in sources))
        true_relevance: dict[str, float] = {}
        for source, grade in zip(sources, grades, strict=True):
            true_relevance[source.url] = max(grade, true_relevance.get(source.url, 0.0))
        records.append(
            {
                "query": item.query,
                "query_id": item.query_id,
                "all_sources": [
                    {"title": s.title, "url": s.url, "snippet": s.snippet} for s in sources
                ],
                "positive_sources": picked_urls,
                "negative_sources": [u for u in urls if u not in picked_urls],
                "timestamp": (START_TIME + timedelta(seconds=i)).isoformat(),
                SIMULATION_KEY: {
                    "true_relevance": true_relevance,
                    "picked_ranks": [rank + 1 for rank in picks],
                    "display": display.name,
                    "user": user_description,
                    "impression": impression,
                    "seed": seed,
                },
            }
        )
    return records


def with_true_labels(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The oracle's records: the same impressions, every shown source labelled with its true
    grade (``relevance``)."""
    out = []
    for record in records:
        if SIMULATION_KEY not in record:
            raise ValueError(f"record {record.get('query_id')!r} was not simulated: no true grades")
        oracle = copy.deepcopy(record)
        oracle["relevance"] = dict(record[SIMULATION_KEY]["true_relevance"])
        out.append(oracle)
    return out


def write_feedback(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write records as a ``reranker_training_data.json`` file; refuses to overwrite."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: simulated feedback never replaces a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        json.dump({"reranker_data": list(records)}, f, ensure_ascii=False)
    return path
