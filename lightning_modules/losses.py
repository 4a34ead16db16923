"""Ranking losses for fine-tuning rerankers on padded batches of candidate lists.

Every loss takes the same three tensors:

* ``scores``: float ``[B, L]``, the model's score for each candidate of each list;
* ``labels``: float ``[B, L]``, relevance grades ``>= 0`` (binary 0/1 or graded, e.g. 3/2/1/0);
* ``mask``: bool ``[B, L]``, ``True`` for a real candidate, ``False`` for padding.

Padding may sit anywhere in a row and may hold any value, even ``inf`` or ``nan``: the first
thing each loss does is replace padded scores and labels by zeros with :func:`torch.where`, and
every later reduction masks padded slots out again. Padding therefore changes neither the value
nor the gradients of real items, and its own gradient is exactly zero.

Every loss returns a 0-dim tensor. The listwise and pairwise losses average over the lists that
*qualify* (have at least one pair of real items with different labels, plus whatever the loss
itself needs); when no list qualifies they return a zero that is still attached to ``scores``,
so ``backward()`` works and yields zero gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LAMBDA_WEIGHTINGS",
    "LambdaLoss",
    "ListMLELoss",
    "ListNetLoss",
    "PointwiseBCELoss",
    "RankNetLoss",
    "RankingLoss",
    "SoftmaxCrossEntropyLoss",
    "listwise_distillation",
    "propensity_weighted_softmax_cross_entropy",
]

LAMBDA_WEIGHTINGS: tuple[str, ...] = ("ndcg_loss1", "ndcg_loss2", "lambdarank", "ndcg_loss2pp")
"""Weighting schemes accepted by :class:`LambdaLoss`."""


def _sanitize(scores: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes and return ``(scores, labels, mask)`` with padded slots set to zero.

    Replacing padding with :func:`torch.where` (rather than multiplying by the mask) keeps
    ``inf``/``nan`` padding out of every later computation and gives padded slots a gradient
    of exactly zero.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, L], got {tuple(scores.shape)}")
    if labels.shape != scores.shape or mask.shape != scores.shape:
        raise ValueError(
            "scores, labels and mask must have the same shape, got "
            f"{tuple(scores.shape)}, {tuple(labels.shape)} and {tuple(mask.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating point tensor, got {scores.dtype}")
    mask = mask.to(dtype=torch.bool, device=scores.device)
    zero = scores.new_zeros(())
    scores = torch.where(mask, scores, zero)
    labels = torch.where(mask, labels.to(device=scores.device, dtype=scores.dtype), zero)
    return scores, labels, mask


def _has_contrast(labels: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` bool: the real items of the list do not all carry the same label."""
    if labels.shape[-1] == 0:
        return torch.zeros(labels.shape[:-1], dtype=torch.bool, device=labels.device)
    inf = torch.tensor(float("inf"), dtype=labels.dtype, device=labels.device)
    highest = torch.where(mask, labels, -inf).amax(dim=-1)
    lowest = torch.where(mask, labels, inf).amin(dim=-1)
    return highest > lowest


def _masked_log_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """``log_softmax`` over the real items of each row; padded slots come back as 0.

    Rows without any real item are filled with zeros instead of ``-inf`` so that neither the
    forward nor the backward pass meets ``-inf - (-inf)``.
    """
    any_real = mask.any(dim=-1, keepdim=True)
    fill = torch.where(
        any_real,
        torch.tensor(float("-inf"), dtype=x.dtype, device=x.device),
        x.new_zeros(()),
    )
    log_probs = torch.log_softmax(torch.where(mask, x, fill), dim=-1)
    return torch.where(mask, log_probs, x.new_zeros(()))


def _mean_over_lists(per_list: Tensor, qualifies: Tensor) -> Tensor:
    """Mean of ``per_list`` over the qualifying lists; a zero with a graph when none qualify.

    Written without a data-dependent branch, so it never synchronises with the device. When no
    list qualifies the numerator is a sum of zeros selected by :func:`torch.where`: the result is
    ``0.0``, attached to the graph, and its gradient is zero everywhere.
    """
    total = torch.where(qualifies, per_list, per_list.new_zeros(())).sum()
    return total / qualifies.sum().clamp(min=1).to(per_list.dtype)


class RankingLoss(nn.Module):
    """Base class of the ranking losses: ``forward(scores, labels, mask) -> 0-dim tensor``.

    ``scores`` are float ``[B, L]`` model scores, ``labels`` float ``[B, L]`` relevance grades
    ``>= 0`` and ``mask`` bool ``[B, L]`` (``True`` = real item, ``False`` = padding). Padding may
    hold any score or label; it has no effect on the value or on the gradients of real items.
    """

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError


class PointwiseBCELoss(RankingLoss):
    """Pointwise binary cross-entropy with logits, target ``label > 0``.

    The pointwise baseline of Burges et al. (2005), "Learning to Rank using Gradient Descent"
    (ICML), and what the original sentence-transformers ``CrossEncoder`` training scripts did:
    each real item is an independent binary classification. The loss is the mean over all real
    items of the batch (not a mean of per-list means), so one-item lists count too.

    Args:
        pos_weight: weight of the positive term, as in
            :class:`torch.nn.BCEWithLogitsLoss`; ``None`` means 1.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        scores, labels, mask = _sanitize(scores, labels, mask)
        targets = (labels > 0).to(scores.dtype)
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = torch.tensor(self.pos_weight, dtype=scores.dtype, device=scores.device)
        per_item = F.binary_cross_entropy_with_logits(
            scores, targets, pos_weight=pos_weight, reduction="none"
        )
        total = torch.where(mask, per_item, per_item.new_zeros(())).sum()
        return total / mask.sum().clamp(min=1).to(scores.dtype)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"


class RankNetLoss(RankingLoss):
    """RankNet pairwise logistic loss.

    Burges et al. (2005), "Learning to Rank using Gradient Descent" (ICML). For every pair
    ``(i, j)`` of real items of the same list with ``label_i > label_j`` the loss is
    ``log(1 + exp(-sigma * (s_i - s_j)))``. It is averaged over the pairs of each list, then
    over the lists that have at least one such pair.

    Args:
        sigma: slope of the logistic function.
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        scores, labels, mask = _sanitize(scores, labels, mask)
        # [B, i, j]
        diffs = scores[:, :, None] - scores[:, None, :]
        pairs = (labels[:, :, None] > labels[:, None, :]) & mask[:, :, None] & mask[:, None, :]
        pair_losses = F.softplus(-self.sigma * diffs)
        summed = torch.where(pairs, pair_losses, pair_losses.new_zeros(())).sum(dim=(1, 2))
        n_pairs = pairs.sum(dim=(1, 2))
        per_list = summed / n_pairs.clamp(min=1).to(scores.dtype)
        return _mean_over_lists(per_list, n_pairs > 0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class _TemperatureScaledLoss(RankingLoss):
    """A listwise loss over ``softmax(scores / temperature)``."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class ListNetLoss(_TemperatureScaledLoss):
    """ListNet loss with top-one probabilities.

    Cao et al. (2007), "Learning to Rank: From Pairwise Approach to Listwise Approach" (ICML).
    Per list, the cross-entropy ``-sum_i softmax(labels)_i * log_softmax(scores / T)_i`` over
    its real items. Lists whose real labels are all equal (no contrast, e.g. all negatives, or a
    single item) are excluded; the loss is the mean over the remaining lists.

    Args:
        temperature: ``T``, divides the scores (not the labels) before the softmax.
    """

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        scores, labels, mask = _sanitize(scores, labels, mask)
        log_pred = _masked_log_softmax(scores / self.temperature, mask)
        target = torch.where(mask, _masked_log_softmax(labels, mask).exp(), labels.new_zeros(()))
        per_list = -(target * log_pred).sum(dim=-1)
        return _mean_over_lists(per_list, _has_contrast(labels, mask))


class SoftmaxCrossEntropyLoss(_TemperatureScaledLoss):
    """Softmax cross-entropy listwise loss.

    Bruch et al. (2019), "An Analysis of the Softmax Cross Entropy Loss for Learning-to-Rank
    with Binary Relevance" (ICTIR). Per list,
    ``-sum_i (y_i / sum_j y_j) * log_softmax(scores / T)_i`` over its real items. Lists without
    a positive label or without contrast are excluded; the loss is the mean over the rest.

    Args:
        temperature: ``T``, divides the scores before the softmax.
    """

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        scores, labels, mask = _sanitize(scores, labels, mask)
        log_pred = _masked_log_softmax(scores / self.temperature, mask)
        label_sum = labels.sum(dim=-1, keepdim=True)
        safe_sum = torch.where(label_sum > 0, label_sum, torch.ones_like(label_sum))
        per_list = -((labels / safe_sum) * log_pred).sum(dim=-1)
        qualifies = (label_sum.squeeze(-1) > 0) & _has_contrast(labels, mask)
        return _mean_over_lists(per_list, qualifies)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class ListMLELoss(RankingLoss):
    """ListMLE: negative Plackett-Luce log-likelihood of the ideal permutation.

    Xia et al. (2008), "Listwise Approach to Learning to Rank: Theory and Algorithm" (ICML).
    Per list, with ``pi`` the permutation that sorts its real items by label, descending,
    ``sum_k [logsumexp(s_pi(k), ..., s_pi(n)) - s_pi(k)]``. Ties among equal labels are broken
    uniformly at random with torch's global RNG (shuffle, then a stable sort, as allRank does):
    a deterministic tie-break would leak the order in which the items were displayed. Lists
    without contrast are excluded; the loss is the mean over the remaining lists.
    """

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        scores, labels, mask = _sanitize(scores, labels, mask)
        # Sort key: padded slots get +inf so that, sorted descending, they come FIRST. The
        # suffix log-sum-exp of a real position then covers real items only, and padding can
        # keep its (finite) zero score without ever being summed in.
        key = torch.where(
            mask, labels, torch.tensor(float("inf"), dtype=labels.dtype, device=labels.device)
        )
        shuffle = torch.rand(key.shape, device=key.device).argsort(dim=-1)
        order = key.gather(1, shuffle).sort(dim=-1, descending=True, stable=True).indices
        index = shuffle.gather(1, order)
        sorted_scores = scores.gather(1, index)
        sorted_mask = mask.gather(1, index)
        suffix_lse = torch.logcumsumexp(sorted_scores.flip(-1), dim=-1).flip(-1)
        per_item = torch.where(sorted_mask, suffix_lse - sorted_scores, sorted_scores.new_zeros(()))
        return _mean_over_lists(per_item.sum(dim=-1), _has_contrast(labels, mask))


class LambdaLoss(RankingLoss):
    """LambdaLoss framework for ranking metric (NDCG) optimisation.

    Wang et al. (2018), "The LambdaLoss Framework for Ranking Metric Optimization" (CIKM), as
    implemented in allRank (``lambdaLoss``) and in sentence-transformers' cross-encoder
    ``LambdaLoss``. Per list, with gains ``G_i = (2^y_i - 1) / IDCG@k``, ranks ``r_i`` from the
    current scores (descending) and discounts ``D_i = log2(1 + r_i)``::

        loss = -sum_{(i, j)} w_ij * log2(max(sigmoid(sigma * (s_i - s_j)), eps))

    with the weights ``w_ij`` of the scheme:

    * ``"ndcg_loss1"``: ``G_i / D_i``, over ALL ordered pairs of real items, ``i = j``
      included (as allRank and sentence-transformers do; the diagonal only adds a constant);
    * ``"ndcg_loss2"``: ``delta_ij * |G_i - G_j|`` with
      ``delta_ij = |1 / log2(1 + |r_i - r_j|) - 1 / log2(2 + |r_i - r_j|)|``;
    * ``"lambdarank"``: ``|1 / D_i - 1 / D_j| * |G_i - G_j|``;
    * ``"ndcg_loss2pp"``: ``mu * ndcg_loss2 + lambdarank`` (the paper's best).

    For every scheme but ``ndcg_loss1`` the pairs are those with ``y_i > y_j``. The weights are
    constants (no gradient flows through the ranks). With ``k`` set, IDCG is truncated at ``k``
    and a pair counts only if at least one of its two items is in the model's current top ``k``
    (sentence-transformers' rule; allRank requires both). Ties in scores are ranked by position
    in the list (stable); they change only the weights, never the pairwise term. The clamp at
    ``eps`` matches allRank's clamp of the sigmoid; allRank's second clamp, of the weighted
    probability, is not applied, so the loss is linear in the weights. Each list's loss is a sum
    over its pairs (already normalised by its ideal DCG through ``G``); lists without contrast are
    excluded and the loss is the mean over the remaining lists.

    Args:
        weighting: one of :data:`LAMBDA_WEIGHTINGS`.
        k: truncation of NDCG@k, ``None`` for the whole list.
        sigma: slope of the sigmoid.
        mu: weight of the ``ndcg_loss2`` part in ``ndcg_loss2pp``.
        eps: lower clamp of the sigmoid, to keep ``log`` finite.
    """

    def __init__(
        self,
        weighting: str = "ndcg_loss2pp",
        k: int | None = None,
        sigma: float = 1.0,
        mu: float = 10.0,
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        if weighting not in LAMBDA_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {LAMBDA_WEIGHTINGS}, got {weighting!r}")
        if k is not None and k < 1:
            raise ValueError(f"k must be a positive integer or None, got {k}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.weighting = weighting
        self.k = k
        self.sigma = sigma
        self.mu = mu
        self.eps = eps

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        scores, labels, mask = _sanitize(scores, labels, mask)
        _, length = scores.shape
        dtype, device = scores.dtype, scores.device
        real_pairs = mask[:, :, None] & mask[:, None, :]  # [B, i, j]

        with torch.no_grad():
            # 1-based rank of each real item under the current scores, ties broken by position.
            s_i, s_j = scores[:, :, None], scores[:, None, :]
            position = torch.arange(length, device=device)
            earlier = (position[None, :] < position[:, None])[None]  # [1, i, j]: j before i
            ahead = ((s_j > s_i) | ((s_j == s_i) & earlier)) & real_pairs
            ranks = 1 + ahead.sum(dim=-1).to(dtype)
            discounts = torch.log2(1.0 + ranks)

            # Ideal DCG@k over the real items only.
            gains = torch.where(mask, torch.pow(2.0, labels) - 1.0, labels.new_zeros(()))
            ideal_gains = gains.sort(dim=-1, descending=True).values  # padding gains are 0
            ideal_discounts = torch.log2(torch.arange(2, length + 2, device=device, dtype=dtype))
            cutoff = length if self.k is None else min(self.k, length)
            ideal_dcg = (ideal_gains / ideal_discounts)[:, :cutoff].sum(dim=-1)
            ideal_dcg = torch.where(ideal_dcg > 0, ideal_dcg, torch.ones_like(ideal_dcg))
            norm_gains = gains / ideal_dcg[:, None]

            weights = self._weights(norm_gains, discounts, ranks)
            if self.weighting == "ndcg_loss1":
                selected = real_pairs
            else:
                selected = real_pairs & (labels[:, :, None] > labels[:, None, :])
            if self.k is not None:
                in_top_k = ranks <= self.k
                selected = selected & (in_top_k[:, :, None] | in_top_k[:, None, :])

        diffs = scores[:, :, None] - scores[:, None, :]
        log_probs = F.logsigmoid(self.sigma * diffs).clamp(min=math.log(self.eps))
        pair_losses = -weights * log_probs / math.log(2.0)
        per_list = torch.where(selected, pair_losses, pair_losses.new_zeros(())).sum(dim=(1, 2))
        return _mean_over_lists(per_list, _has_contrast(labels, mask))

    def _weights(self, gains: Tensor, discounts: Tensor, ranks: Tensor) -> Tensor:
        """``[B, i, j]`` pair weights of the scheme (``gains`` already divided by IDCG)."""
        if self.weighting == "ndcg_loss1":
            return (gains / discounts)[:, :, None].expand(-1, -1, gains.shape[1])
        gain_gaps = (gains[:, :, None] - gains[:, None, :]).abs()
        lambdarank = (1.0 / discounts[:, :, None] - 1.0 / discounts[:, None, :]).abs() * gain_gaps
        if self.weighting == "lambdarank":
            return lambdarank
        rank_gaps = (ranks[:, :, None] - ranks[:, None, :]).abs()
        safe_gaps = rank_gaps.clamp(min=1.0)
        deltas = (1.0 / torch.log2(1.0 + safe_gaps) - 1.0 / torch.log2(2.0 + safe_gaps)).abs()
        ndcg_loss2 = torch.where(rank_gaps > 0, deltas, deltas.new_zeros(())) * gain_gaps
        if self.weighting == "ndcg_loss2":
            return ndcg_loss2
        return self.mu * ndcg_loss2 + lambdarank

    def extra_repr(self) -> str:
        return (
            f"weighting={self.weighting!r}, k={self.k}, sigma={self.sigma}, mu={self.mu}, "
            f"eps={self.eps}"
        )


def listwise_distillation(scores: Tensor, teacher_scores: Tensor, mask: Tensor) -> Tensor:
    """KL(softmax(teacher) || softmax(scores)) over the real items of each list, averaged.

    Listwise knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural
    Network"; as a ranking regulariser e.g. Reddi et al. 2021, "RankDistil"). Lists with fewer
    than two real items carry no ranking and are excluded; the teacher gets no gradient.
    """
    scores, teacher_scores, mask = _sanitize(scores, teacher_scores.detach(), mask)
    log_student = _masked_log_softmax(scores, mask)
    log_teacher = _masked_log_softmax(teacher_scores, mask)
    zero = scores.new_zeros(())
    per_item = torch.where(mask, log_teacher.exp() * (log_teacher - log_student), zero)
    return _mean_over_lists(per_item.sum(dim=-1), mask.sum(dim=-1) > 1)


def propensity_weighted_softmax_cross_entropy(
    scores: Tensor, labels: Tensor, weights: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Softmax cross-entropy with each pick weighted by its inverse propensity, self-normalised.

    The inverse-propensity-weighted listwise softmax loss of Ai et al. (2018), "Unbiased
    Learning to Rank with Unbiased Propensity Estimation" (SIGIR; ULTRA's ``softmax_loss`` with
    propensity weights), after Joachims et al. (2017), "Unbiased Learning-to-Rank with Biased
    Feedback" (WSDM): a pick at a rank users examine with probability ``p`` counts ``1 / p``
    times. Over the lists that have a positive label and contrast,

        loss = sum_l sum_i w_li * y_li * -log_softmax(s_l / T)_i  /  sum_l sum_i w_li * y_li

    The division by the total weight (self-normalised IPS, Swaminathan & Joachims 2015, NeurIPS,
    "The Self-Normalized Estimator for Counterfactual Learning") keeps the loss on the scale of
    the unweighted one whatever the propensities; with every weight 1 and one positive a list it
    equals :class:`SoftmaxCrossEntropyLoss`. ``weights`` is float ``[B, L]`` (``>= 0``; padding
    ignored). Returns a 0-dim tensor, a zero attached to ``scores`` when no list qualifies.
    """
    scores, labels, mask = _sanitize(scores, labels, mask)
    if weights.shape != scores.shape:
        raise ValueError(
            f"weights must have the shape of scores {tuple(scores.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    zero = scores.new_zeros(())
    weights = torch.where(mask, weights.to(device=scores.device, dtype=scores.dtype), zero)
    log_pred = _masked_log_softmax(scores / temperature, mask)
    qualifies = (labels.sum(dim=-1) > 0) & _has_contrast(labels, mask)
    weighted = torch.where(qualifies[:, None], weights * labels, zero)
    total = weighted.sum()
    return -(weighted * log_pred).sum() / torch.where(total > 0, total, torch.ones_like(total))
