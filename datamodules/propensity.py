"""Examination propensities by display rank, estimated from a feedback log whose orders changed.

Every promotion changes the order the app shows, so the same source of the same query is often
shown at different ranks in different impressions. Intervention harvesting (Agarwal, Zaitsev,
Wang, Li, Najork and Joachims, WSDM 2019, "Estimating Position Bias without Intrusive
Interventions") reads the position bias from those natural swaps: under the position-based model
a source's pick rate at rank k is ``p_k * r``, so for the (query, source) pairs seen at both
ranks k and k' the ratio of their pick rates estimates ``p_k / p_k'`` whatever their relevance.

This estimator takes every pair of ranks with such pairs, the log of its pick-rate ratio (sums
over the pairs, +0.1 smoothing), and solves ``log p_k - log p_k' = log ratio`` by least squares
weighted by the number of pairs, with ``p_1 = 1``; ranks no pair connects to rank 1 are
reported as unknown (``None``). A log whose orders never changed says nothing about position
bias: the estimate is then refused rather than made up.

    python -m datamodules.propensity feedback_logs/ --output propensities.json --plot exam.png

The estimate can be given to ``InversePropensityWeighting(propensities=[...])`` (relative to rank
1; ranks estimated above 1 are clipped to 1) and to the debiased metrics.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.feedback import RerankerRecord

SMOOTHING = 0.1  # added to both pick-rate sums of a rank pair: a pair without picks stays finite


@dataclass
class PropensityEstimate:
    propensities: list[float | None]  # rank 1, 2, ...; relative to rank 1
    pairs: list[list[int]]  # [k][k']: (query, source) pairs seen at both ranks
    n_records: int

    def for_weighting(self) -> list[float]:
        """The estimate as ``InversePropensityWeighting(propensities=...)`` takes it: clipped to
        (0, 1], a rank without an estimate given the one above it."""
        out: list[float] = []
        for p in self.propensities:
            value = out[-1] if p is None else min(1.0, max(p, 1e-3))
            out.append(value)
        return out

    def as_dict(self) -> dict:
        return {
            "method": "intervention harvesting (Agarwal et al., WSDM 2019), weighted least squares",
            "propensities": self.propensities,
            "for_weighting": self.for_weighting(),
            "pairs_by_rank_pair": self.pairs,
            "records": self.n_records,
        }


def estimate_propensities(
    records: Sequence[RerankerRecord], n_ranks: int = 10, min_pairs: int = 1
) -> PropensityEstimate:
    """Examination by rank (1-based ranks 1..``n_ranks``) from the records' display orders and
    picks (``grades > 0``). Raises when no rank pair has ``min_pairs`` harvested pairs."""
    # (query, url) -> rank -> [times shown, times picked]
    seen: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(dict)
    for record in records:
        key_query = record.query.strip().lower()
        for rank, (source, grade) in enumerate(zip(record.sources, record.grades, strict=True)):
            if rank >= n_ranks:
                break
            counts = seen[(key_query, source.url)].setdefault(rank, [0, 0])
            counts[0] += 1
            counts[1] += int(grade > 0)
    # picked_rate[k, k2]: pick rates at rank k summed over the pairs seen at both k and k2
    picked_rate = np.zeros((n_ranks, n_ranks))
    pairs = np.zeros((n_ranks, n_ranks), dtype=int)
    for by_rank in seen.values():
        ranks = sorted(by_rank)
        for i, k in enumerate(ranks):
            for k2 in ranks[i + 1 :]:
                pairs[k, k2] += 1
                pairs[k2, k] += 1
                for a, b in ((k, k2), (k2, k)):
                    shown_a, picked_a = by_rank[a]
                    picked_rate[a, b] += picked_a / shown_a
    rows, targets, weights = [], [], []
    for k in range(n_ranks):
        for k2 in range(k + 1, n_ranks):
            if pairs[k, k2] < min_pairs:
                continue
            ratio = (picked_rate[k, k2] + SMOOTHING) / (picked_rate[k2, k] + SMOOTHING)
            row = np.zeros(n_ranks)
            row[k], row[k2] = 1.0, -1.0
            rows.append(row)
            targets.append(np.log(ratio))
            weights.append(pairs[k, k2])
    if not rows:
        raise ValueError(
            "no source of any query was shown at two different ranks: the log's display orders "
            "never changed, so it says nothing about position bias (give propensities instead)"
        )
    connected = _connected_to_first(pairs >= min_pairs)
    a, b, w = np.array(rows), np.array(targets), np.sqrt(np.array(weights, dtype=float))
    # log p_1 = 0: rank 1's column leaves the system, the other ranks are solved for
    solution, *_ = np.linalg.lstsq((a * w[:, None])[:, 1:], b * w, rcond=None)
    log_p = np.concatenate([[0.0], solution])
    propensities = [float(np.exp(log_p[k])) if connected[k] else None for k in range(n_ranks)]
    return PropensityEstimate(propensities, pairs.tolist(), len(records))


def _connected_to_first(adjacent: np.ndarray) -> np.ndarray:
    reached = np.zeros(len(adjacent), dtype=bool)
    reached[0] = True
    frontier = [0]
    while frontier:
        k = frontier.pop()
        for k2 in np.flatnonzero(adjacent[k]):
            if not reached[k2]:
                reached[k2] = True
                frontier.append(int(k2))
    return reached


def plot(estimate: PropensityEstimate, path: str | Path, reference: Sequence[float] | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = [k + 1 for k, p in enumerate(estimate.propensities) if p is not None]
    values = [p for p in estimate.propensities if p is not None]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ranks, values, "o-", label="estimated from the log")
    if reference is not None:
        ax.plot(range(1, len(reference) + 1), reference, "k--", label="reference")
    ax.set_xlabel("display rank")
    ax.set_ylabel("examination (rank 1 = 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    from datamodules.reranker_records import load_reranker_feedback

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="reranker feedback files, folders or globs")
    parser.add_argument("--ranks", type=int, default=10)
    parser.add_argument("--min-pairs", type=int, default=1)
    parser.add_argument("--output", default=None, help="write the estimate as JSON")
    parser.add_argument("--plot", default=None, help="write a plot of examination by rank")
    args = parser.parse_args(argv)
    records, _ = load_reranker_feedback(args.files)
    estimate = estimate_propensities(records, args.ranks, args.min_pairs)
    report = estimate.as_dict()
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(estimate, args.plot)
    print(json.dumps({"propensities": report["propensities"], "records": len(records)}))
    return report


if __name__ == "__main__":
    main()
