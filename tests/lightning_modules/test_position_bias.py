"""Position models in training: the IPS loss against a numpy oracle, the additive term's
arithmetic and learning, and the reranker using them only while training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.reranker import ListwiseCollator, RerankList
from lightning_modules.losses import (
    ListNetLoss,
    SoftmaxCrossEntropyLoss,
    propensity_weighted_softmax_cross_entropy,
)
from lightning_modules.optim import adamw_with_linear_warmup
from lightning_modules.position_bias import (
    AdditivePositionBias,
    InversePropensityWeighting,
    NaivePositions,
)
from lightning_modules.reranker import BiEncoderReranker


def numpy_ips_softmax(scores, labels, weights, mask, temperature=1.0):
    total, weight_sum = 0.0, 0.0
    for s, y, w, m in zip(scores, labels, weights, mask, strict=True):
        s, y, w = s[m] / temperature, y[m], w[m]
        if y.sum() <= 0 or y.max() == y.min():
            continue
        log_p = s - np.log(np.exp(s - s.max()).sum()) - s.max()
        total += -(w * y * log_p).sum()
        weight_sum += (w * y).sum()
    return total / weight_sum if weight_sum else 0.0


def test_ips_softmax_matches_a_numpy_oracle_with_padding_anywhere() -> None:
    scores = np.array([[2.0, 0.5, -1.0, 9.0], [0.1, 0.3, 0.2, 0.0], [1.0, 1.0, 0.0, 0.0]])
    labels = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    weights = np.array([[1.0, 2.0, 3.0, 7.0], [1.0, 4.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    mask = np.array([[True, True, True, False], [True, True, True, True], [True, True, True, True]])
    expected = numpy_ips_softmax(scores, labels, weights, mask, temperature=0.5)
    padded = torch.tensor(scores)
    padded[0, 3] = float("nan")  # padding may hold anything
    got = propensity_weighted_softmax_cross_entropy(
        padded.requires_grad_(),
        torch.tensor(labels),
        torch.tensor(weights),
        torch.tensor(mask),
        0.5,
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)
    got.backward()
    assert torch.isfinite(padded.grad).all() and padded.grad[0, 3] == 0


def test_ips_softmax_with_unit_weights_is_the_softmax_cross_entropy() -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, 6)
    labels = torch.zeros(4, 6)
    labels[torch.arange(4), torch.tensor([0, 3, 5, 2])] = 1.0  # one pick a list
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    ips = propensity_weighted_softmax_cross_entropy(scores, labels, torch.ones(4, 6), mask, 0.2)
    torch.testing.assert_close(ips, SoftmaxCrossEntropyLoss(temperature=0.2)(scores, labels, mask))


def test_ips_weights_are_inverse_propensities_clipped() -> None:
    ips = InversePropensityWeighting(eta=1.0, n_ranks=10, max_weight=5.0)
    ranks = torch.tensor([[0, 1, 3, 9, 14]])
    torch.testing.assert_close(ips.weights(ranks), torch.tensor([[1.0, 2.0, 4.0, 5.0, 5.0]]))
    given = InversePropensityWeighting(propensities=[1.0, 0.5, 0.25], max_weight=100)
    torch.testing.assert_close(given.weights(torch.tensor([[2, 5]])), torch.tensor([[4.0, 4.0]]))
    with pytest.raises(ValueError, match="propensities"):
        InversePropensityWeighting(propensities=[1.0, 0.0])
    with pytest.raises(ValueError, match="SoftmaxCrossEntropyLoss"):
        ips.check_loss(ListNetLoss())


def test_additive_terms_apply_to_the_shown_columns_only() -> None:
    bias = AdditivePositionBias(n_ranks=3)
    with torch.no_grad():
        bias.later_ranks.copy_(torch.tensor([-1.0, -2.0]))
    scores = torch.zeros(2, 3 + 2)  # 3 shown columns, then 2 in-batch negatives
    ranks = torch.tensor([[0, 1, 5], [2, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = bias.training_scores(scores, ranks, mask)
    expected = torch.tensor([[0.0, -1.0, -2.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(got, expected)  # rank 6 shares rank 3's term; padding none
    assert bias.examination() == pytest.approx([1.0, np.exp(-1.0), np.exp(-2.0)])


def lists(picked_rank: int = 0):
    """Two queries whose picks sit at ``picked_rank`` whatever the text."""
    texts = [["cost of sales page", "red fruit", "fast car"], ["paris city", "berlin", "rome"]]
    out = []
    for i, documents in enumerate(texts):
        grades = [1.0 if r == picked_rank else 0.0 for r in range(3)]
        out.append(
            RerankList(i, ["cost of sales", "capital of france"][i], documents, grades, [0, 1, 2])
        )
    return out


@pytest.mark.parametrize(
    "position_bias", [AdditivePositionBias(n_ranks=3), InversePropensityWeighting()]
)
def test_the_reranker_scores_without_positions_at_inference(tiny_backbone, position_bias) -> None:
    kwargs = {"model_name_or_path": str(tiny_backbone), "anchor_weight": 0.0}
    naive = BiEncoderReranker(**kwargs)
    corrected = BiEncoderReranker(position_bias=position_bias, **kwargs)
    corrected.load_state_dict(naive.state_dict(), strict=False)
    if isinstance(position_bias, AdditivePositionBias):
        with torch.no_grad():
            position_bias.later_ranks.fill_(-3.0)
    batch = ListwiseCollator(naive.input_encoder())(lists())
    naive.eval(), corrected.eval()
    with torch.no_grad():
        torch.testing.assert_close(corrected.score_batch(batch), naive.score_batch(batch))
    assert "position" in corrected.loss_name() or "propensity" in corrected.loss_name()
    assert isinstance(BiEncoderReranker(**kwargs).position_bias, NaivePositions)


def test_additive_terms_learn_that_picks_sit_at_the_top(tiny_backbone) -> None:
    """Every pick at rank 1, whatever the text: the terms of ranks 2 and 3 must fall."""
    torch.manual_seed(0)
    bias = AdditivePositionBias(n_ranks=3, learning_rate=0.05)
    module = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone), anchor_weight=0.0, position_bias=bias
    )
    module.train()
    batch = ListwiseCollator(module.input_encoder())(lists(picked_rank=0))
    own = {id(p) for p in bias.parameters()}
    groups = [{"params": [p for p in module.parameters() if id(p) not in own]}]
    groups += module.extra_parameter_groups()
    optimizer = torch.optim.AdamW(groups, lr=1e-5)
    for _ in range(20):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    examination = bias.examination()
    assert examination[0] == 1.0 and examination[1] < 0.6 and examination[2] < 0.6


def test_the_optimiser_gives_the_position_terms_their_own_learning_rate(tiny_backbone) -> None:
    bias = AdditivePositionBias(learning_rate=0.5)
    module = BiEncoderReranker(model_name_or_path=str(tiny_backbone), position_bias=bias)

    class Trainer:
        estimated_stepping_batches = 10
        gradient_clip_val = None
        precision = "32-true"

    module.trainer = Trainer()  # what adamw_with_linear_warmup reads of a trainer
    optimizer = adamw_with_linear_warmup(module, 1e-5, 0.01, 0.0)["optimizer"]
    (own,) = [g for g in optimizer.param_groups if any(p is bias.later_ranks for p in g["params"])]
    assert own["lr"] == 0.5 and own["weight_decay"] == 0.0 and len(own["params"]) == 1
    others = [p for g in optimizer.param_groups if g is not own for p in g["params"]]
    assert all(p is not bias.later_ranks for p in others)


def test_skip_above_keeps_what_was_shown_above_the_lowest_pick_and_every_foreign_source():
    from lightning_modules.position_bias import SkipAbove

    labels = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    ranks = torch.tensor([[3, 0, 1, 2, 5, 4], [0, 1, 2, 3, 0, 0]])  # shown order per source
    mask = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    skip = SkipAbove()
    expected = torch.tensor(
        [[False, True, True, True, False, False], [False, False, False, False, False, False]]
    )
    assert torch.equal(skip.examined(labels, ranks, mask), expected)
    seen = {}

    def spy(scores, labels, mask):
        seen["mask"] = mask
        return scores.sum() * 0

    full_mask = torch.cat([mask, torch.ones(2, 3, dtype=torch.bool)], dim=1)  # + 3 in-batch
    full_labels = torch.cat([labels, torch.zeros(2, 3)], dim=1)
    skip.training_loss(spy, torch.zeros(2, 9), full_labels, full_mask, ranks)
    assert torch.equal(seen["mask"][:, :6], expected) and seen["mask"][:, 6:].all()
