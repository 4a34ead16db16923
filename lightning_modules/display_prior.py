"""The app's own order as a feature: the model's score mixed with the display rank.

The order the app showed can carry what the model lacks (a retriever's lexical match, the
app's freshness or authority signals). The prior mixes the two after both are standardised
within each list, so that one weight means the same whatever the model's score scale::

    mixed = z(model score) + weight * z(-display rank)

(z: minus the list's mean, over its standard deviation; a constant list gives zeros). At
weight 0 the ranking is the model's; as the weight grows it moves towards the display order.
The shape follows score-level fusion of a reranker with its first stage (e.g. the
interpolation of BM25 and dense scores in Lin et al., "Pyserini", SIGIR 2021; Wang et al.,
"BERT-based Dense Retrievers Require Interpolation with BM25", ICTIR 2021).

The weight is fitted on **debiased targets** only: at each validation epoch, the weight of a
grid that maximises the propensity-weighted DCG of the held-out picks (``ips_dcg@10``, Joachims
et al., WSDM 2017; see :func:`lightning_modules.metrics.position_metrics_per_query`). Fitted on
the raw picks, it would learn the position bias itself: users pick near the top, so the raw
picks always reward copying the display order.

The same function ranks in training's validation, in the promotion gate and in the app's
loader (:class:`lightning_modules.inference.ExportedReranker`, which reads the weight from the
export's metadata): one scoring path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# the metric the weight is chosen on (debiased; see the module docstring)
FITTED_ON = "ips_dcg@10"


def standardise(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over each row's real entries (population std); padding and constant
    rows give 0."""
    values = values.double()
    weights = mask.double()
    count = weights.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (values * weights).sum(-1, keepdim=True) / count
    centred = (values - mean) * weights
    std = (centred.square().sum(-1, keepdim=True) / count).sqrt()
    return torch.where(std > 1e-12, centred / std.clamp(min=1e-12), torch.zeros_like(centred))


def mix_with_display(
    scores: torch.Tensor, display_rank: torch.Tensor, mask: torch.Tensor, weight: float
) -> torch.Tensor:
    """``[B, L]`` scores mixed with the display rank (0 = shown first); float32, padding 0.

    At ``weight`` 0 the scores are returned as they are (same ranking, no rounding).
    """
    if weight == 0:
        return scores
    mixed = standardise(scores, mask) + weight * standardise(-display_rank.double(), mask)
    return mixed.masked_fill(~mask, 0.0).to(scores.dtype)


def check_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """The grid, validated: non-empty, finite, non-negative, sorted ascending, starting at 0
    (so that the model alone is always a candidate and wins ties)."""
    weights = tuple(float(w) for w in weights)
    if not weights:
        raise ValueError("display_prior_weights: give at least one weight (0 = the model alone)")
    if any(not (w >= 0 and w < float("inf")) for w in weights):
        raise ValueError(f"display_prior_weights must be finite and >= 0, got {list(weights)}")
    if list(weights) != sorted(set(weights)) or weights[0] != 0:
        raise ValueError(
            f"display_prior_weights must be distinct, ascending and start at 0, got {list(weights)}"
        )
    return weights
