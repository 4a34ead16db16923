"""What the display position did to a pick, handled in training: the reranker's position model.

Users pick among what they were shown, mostly near the top, so a pick says "relevant *and*
examined", and examination depends on where the app showed the source. Trained on raw picks
(:class:`NaivePositions`), a reranker learns the app's display order along with relevance. Two
corrections from the unbiased learning-to-rank literature, each a component injected into the
reranker (``position_bias:`` in its config) and used in training only:

* :class:`AdditivePositionBias`: a learned score per display rank added to the model's score
  while training and dropped at inference (PAL, Guo et al., RecSys 2019, "PAL: a position-bias
  aware learning framework for CTR prediction"; the additive "two-tower" form of Yan et al.,
  WSDM 2022, "Scale Calibration of Deep Ranking Models"). Under a softmax over the list an
  additive term ``b_k`` multiplies the rank's pick probability by ``exp(b_k)``: ``exp(b_k -
  b_1)`` is the examination of rank ``k`` relative to the first, which it logs.
* :class:`InversePropensityWeighting`: each pick weighted by the inverse of the probability that
  its rank is examined (Joachims et al., WSDM 2017; the listwise form of Ai et al., SIGIR 2018),
  through :func:`~lightning_modules.losses.propensity_weighted_softmax_cross_entropy`.
  Propensities are given, as a list by rank or as the position-based model's ``(1 / k) ** eta``.

* :class:`SkipAbove`: an unpicked source counts as a negative only if it was shown above the
  lowest pick (Joachims, KDD 2002, "Optimizing Search Engines using Clickthrough Data": the
  user scanned past it); those shown below were likely never examined and are left out of the
  list. Needs no propensities.

Ranks are the ``display_rank`` of a batch (0 = shown first). Ranks past the last one a model
knows share its last value. In-batch negatives (the bi-encoder) were never shown for the query
whose list they join: they get no position term and no weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_modules.losses import (
    RankingLoss,
    SoftmaxCrossEntropyLoss,
    propensity_weighted_softmax_cross_entropy,
)


class NaivePositions(nn.Module):
    """The picks as they are: no position model (the default)."""

    name = "naive"

    def training_scores(self, scores: Tensor, display_rank: Tensor, mask: Tensor) -> Tensor:
        """``[B, L']`` training scores; the first ``L`` columns are the shown lists."""
        return scores

    def training_loss(
        self, loss: RankingLoss, scores: Tensor, labels: Tensor, mask: Tensor, display_rank: Tensor
    ) -> Tensor:
        return loss(scores, labels, mask)

    def check_loss(self, loss: RankingLoss) -> None:
        """Raise where this position model cannot work with ``loss``."""

    def examination(self) -> list[float] | None:
        """Examination by rank relative to rank 1, where the model has one."""
        return None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups of this model's own parameters (their own learning rate)."""
        return []

    def describe(self) -> str:
        return "naive: the picks taken as they are"


def _clamped_ranks(display_rank: Tensor, n_ranks: int) -> Tensor:
    return display_rank.clamp(min=0, max=n_ranks - 1)


class AdditivePositionBias(NaivePositions):
    """Args:
    n_ranks: ranks with their own term (10: the app shows ~10); later ranks share the last.
    learning_rate: the terms' own AdamW learning rate (the backbone's ~2e-5 would hardly move
        them in a few hundred steps). Rank 1's term is fixed at 0 (examination relative to it).
    """

    name = "additive"

    def __init__(self, n_ranks: int = 10, learning_rate: float = 0.05) -> None:
        super().__init__()
        if n_ranks < 1:
            raise ValueError(f"n_ranks must be at least 1, got {n_ranks}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.n_ranks = n_ranks
        self.learning_rate = learning_rate
        self.later_ranks = nn.Parameter(torch.zeros(n_ranks - 1))

    def terms(self) -> Tensor:
        """``[n_ranks]``: 0 for rank 1, then the learned terms."""
        return torch.cat([self.later_ranks.new_zeros(1), self.later_ranks])

    def training_scores(self, scores: Tensor, display_rank: Tensor, mask: Tensor) -> Tensor:
        shown = display_rank.shape[1]
        bias = self.terms().to(scores.dtype)[_clamped_ranks(display_rank, self.n_ranks)]
        bias = torch.where(mask, bias, bias.new_zeros(()))
        return torch.cat([scores[:, :shown] + bias, scores[:, shown:]], dim=1)

    def examination(self) -> list[float]:
        return self.terms().detach().float().exp().cpu().tolist()

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.later_ranks], "lr": self.learning_rate, "weight_decay": 0.0}]

    def describe(self) -> str:
        return f"additive position term per rank (PAL), {self.n_ranks} ranks, training only"

    def extra_repr(self) -> str:
        return f"n_ranks={self.n_ranks}, learning_rate={self.learning_rate}"


class InversePropensityWeighting(NaivePositions):
    """Args:
    propensities: examination probability of ranks 1, 2, ... (later ranks share the last);
        or, when not given,
    eta: the position-based model's ``(1 / k) ** eta`` for ranks 1..``n_ranks``.
    n_ranks: ranks ``eta`` gives a propensity to.
    max_weight: weights are clipped here (Joachims et al.'s propensity clipping: a pick at a
        rarely examined rank would otherwise dominate a batch).
    """

    name = "ips"

    def __init__(
        self,
        propensities: Sequence[float] | None = None,
        eta: float | None = 1.0,
        n_ranks: int = 10,
        max_weight: float = 10.0,
    ) -> None:
        super().__init__()
        if propensities is None:
            if eta is None or eta < 0:
                raise ValueError("give propensities, or eta >= 0")
            values = [(1.0 / k) ** eta for k in range(1, n_ranks + 1)]
        else:
            values = [float(p) for p in propensities]
            if not values or not all(0.0 < p <= 1.0 for p in values):
                raise ValueError(f"propensities must be in (0, 1], got {list(propensities)}")
            eta = None
        if max_weight < 1:
            raise ValueError(f"max_weight must be at least 1, got {max_weight}")
        self.eta = eta
        self.max_weight = max_weight
        self.register_buffer("propensities", torch.tensor(values), persistent=False)

    def check_loss(self, loss: RankingLoss) -> None:
        if type(loss) is not SoftmaxCrossEntropyLoss:
            raise ValueError(
                "position_bias InversePropensityWeighting weights the picks of the softmax "
                f"cross-entropy loss; the model's loss is {type(loss).__name__}: use "
                "lightning_modules.losses.SoftmaxCrossEntropyLoss, or the additive position bias"
            )

    def weights(self, display_rank: Tensor) -> Tensor:
        """``[B, L]`` inverse propensities of the shown ranks, clipped at ``max_weight``."""
        propensities = self.propensities.to(display_rank.device)
        chosen = propensities[_clamped_ranks(display_rank, len(propensities))]
        return (1.0 / chosen).clamp(max=self.max_weight)

    def training_loss(
        self, loss: RankingLoss, scores: Tensor, labels: Tensor, mask: Tensor, display_rank: Tensor
    ) -> Tensor:
        weights = scores.new_zeros(scores.shape)
        weights[:, : display_rank.shape[1]] = self.weights(display_rank).to(scores.dtype)
        return propensity_weighted_softmax_cross_entropy(
            scores, labels, weights, mask, temperature=loss.temperature
        )

    def examination(self) -> list[float]:
        return self.propensities.tolist()

    def describe(self) -> str:
        given = f"(1/k)^{self.eta:g}" if self.eta is not None else "given"
        return f"inverse propensity weighting, propensities {given}, clipped at {self.max_weight:g}"

    def extra_repr(self) -> str:
        return f"eta={self.eta}, max_weight={self.max_weight}"


class SkipAbove(NaivePositions):
    """Unpicked sources below the list's lowest pick leave its training list (see the module);
    a list without picks keeps no shown source. In-batch negatives (never shown for the
    query) stay."""

    name = "skip_above"

    def examined(self, labels: Tensor, display_rank: Tensor, mask: Tensor) -> Tensor:
        """``[B, L]``: the shown sources at or above the list's lowest pick."""
        picked = (labels > 0) & mask
        lowest = torch.where(picked, display_rank, display_rank.new_full((), -1)).amax(-1)
        return mask & (display_rank <= lowest[:, None])

    def training_loss(
        self, loss: RankingLoss, scores: Tensor, labels: Tensor, mask: Tensor, display_rank: Tensor
    ) -> Tensor:
        shown = display_rank.shape[1]
        kept = mask.clone()
        kept[:, :shown] = self.examined(labels[:, :shown], display_rank, mask[:, :shown])
        return loss(scores, labels, kept)

    def describe(self) -> str:
        return "skip-above: unpicked sources below the lowest pick left out of training"
