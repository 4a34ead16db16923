"""Comparing two systems query by query: the paired bootstrap (Efron & Tibshirani 1993; Koehn
2004 for BLEU; Sakai 2006 for IR metrics) over what the evaluation core measured."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lightning_modules.metrics import BleuStatistics


@dataclass
class SystemResult:
    """What one system scored on the held-out queries, query by query (same order for all)."""

    name: str
    per_query: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [N]
    bleu: BleuStatistics | None = None

    def statistic(self, metric: str) -> Callable[[np.ndarray], float]:
        if metric == "bleu":
            assert self.bleu is not None
            return self.bleu.corpus_bleu
        values = self.per_query[metric]
        # NaN: a query the metric does not apply to (e.g. a rewrite with no selected sources
        # to find), left out of the mean
        return lambda indices: _mean_of_defined(values[indices])

    def value(self, metric: str, n: int) -> float:
        return self.statistic(metric)(np.arange(n))


def _mean_of_defined(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


@dataclass
class MetricComparison:
    metric: str
    deployed: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # share of resamples in which the candidate is not better


def paired_bootstrap(
    n_items: int,
    deployed: Callable[[np.ndarray], float],
    candidate: Callable[[np.ndarray], float],
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """95% percentile interval of ``candidate - deployed`` over resamples of the items (with
    replacement, the same resample for both systems), and the one-sided p-value
    ``P(delta <= 0)``."""
    if n_items == 0:
        raise ValueError("no held-out queries to compare the models on")
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_resamples)
    for r in range(n_resamples):
        indices = rng.integers(0, n_items, n_items)
        deltas[r] = candidate(indices) - deployed(indices)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high), float((deltas <= 0).mean())


def compare_systems(
    deployed: SystemResult,
    candidate: SystemResult,
    metrics: Sequence[str],
    n_items: int,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[MetricComparison]:
    comparisons = []
    for metric in metrics:
        d, c = deployed.value(metric, n_items), candidate.value(metric, n_items)
        low, high, p = paired_bootstrap(
            n_items, deployed.statistic(metric), candidate.statistic(metric), n_resamples, seed
        )
        comparisons.append(MetricComparison(metric, d, c, c - d, low, high, p))
    return comparisons
