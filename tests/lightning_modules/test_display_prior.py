"""The display prior: the mix against a numpy formula, its weight fitted on the debiased metric
(an independent numpy IPS-DCG over the grid), and the same mix in the export the app loads and
in the gate's module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.reranker import ListwiseCollator, RerankList
from lightning_modules.display_prior import check_weights, mix_with_display, standardise
from lightning_modules.reranker import BiEncoderReranker


def numpy_z(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)


def numpy_mix(scores: np.ndarray, display_rank: np.ndarray, weight: float) -> np.ndarray:
    return numpy_z(scores) + weight * numpy_z(-display_rank.astype(float))


def test_standardise_matches_numpy_per_row_with_padding_and_constant_rows() -> None:
    scores = torch.tensor([[3.0, -1.0, 2.0, 9.0], [5.0, 5.0, 0.0, 0.0], [1.0, 2.0, 4.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    got = standardise(scores, mask)
    for row in range(3):
        n = int(mask[row].sum())
        np.testing.assert_allclose(got[row, :n].numpy(), numpy_z(scores[row, :n].double().numpy()))
        assert (got[row, n:] == 0).all()


def test_the_mix_is_the_formula_and_its_weight_moves_the_ranking_to_the_display() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.0]])
    display_rank = torch.tensor([[3, 0, 1, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    for weight in (0.3, 1.0):
        got = mix_with_display(scores, display_rank, mask, weight)[0, :4].numpy()
        want = numpy_mix(scores[0, :4].numpy(), display_rank[0, :4].numpy(), weight)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert mix_with_display(scores, display_rank, mask, 0.0) is scores  # the model alone
    heavy = mix_with_display(scores, display_rank, mask, 1000.0)[0, :4]
    assert torch.argsort(heavy, descending=True).tolist() == [1, 2, 3, 0]  # the display order
    assert heavy.dtype == scores.dtype


@pytest.mark.parametrize("weights", [[], [0.1, 0.5], [0.0, 0.5, 0.2], [0.0, -1.0], [0.0, 0.0]])
def test_a_weight_grid_must_start_at_zero_and_ascend(weights) -> None:
    with pytest.raises(ValueError, match="display_prior_weights"):
        check_weights(weights)


def numpy_ips_dcg(scores, display, picks, propensities, k=10) -> float:
    """Mean over lists with a pick of sum_picks 1/p(display rank) / log2(model rank + 2)."""
    values = []
    for s, d, y in zip(scores, display, picks, strict=True):
        if not y.any():
            continue
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        rank = {doc: r for r, doc in enumerate(order)}
        values.append(
            sum(
                1.0 / propensities[min(d[i], len(propensities) - 1)] / np.log2(rank[i] + 2)
                for i in range(len(s))
                if y[i] > 0 and rank[i] < k
            )
        )
    return float(np.mean(values))


# Three shown lists: the model puts the pick of the first list low, the display high; the
# others are the model's to win. Some weight between 0 and the largest is the best.
TEXTS = [["a b", "c d", "e f", "g h"], ["i j", "k l", "m n", "o p"], ["q r", "s t", "u v", "w x"]]
DISPLAY = [[0, 1, 2, 3], [2, 0, 3, 1], [1, 3, 0, 2]]
PICKS = [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
MODEL = [[0.1, 0.6, 0.4, 0.7], [0.7, 0.4, 0.9, 0.6], [0.8, 0.3, 0.5, 0.2]]
GRID = [0.0, 0.2, 0.5, 1.0, 3.0, 10.0]


def display_lists() -> list[RerankList]:
    return [
        RerankList(i, f"query {i}", TEXTS[i], [float(p) for p in PICKS[i]], DISPLAY[i])
        for i in range(3)
    ]


def test_the_weight_is_chosen_on_the_propensity_weighted_picks(tiny_backbone, monkeypatch):
    module = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone),
        anchor_weight=0.0,
        eval_propensity_eta=1.0,
        display_prior_weights=GRID,
    )
    batch = ListwiseCollator(module.input_encoder())(display_lists())
    fixed = torch.zeros(batch.mask.shape)
    for row, positions in enumerate(batch.positions):  # the model's scores of each document
        assert positions == DISPLAY[row]
        fixed[row, : len(positions)] = torch.tensor(MODEL[row])
    monkeypatch.setattr(module, "score_batch", lambda batch: fixed)
    module.evaluation_step(batch, "val")
    module.evaluation_epoch_end("val")

    propensities = [1.0 / k for k in range(1, 11)]
    expected = []
    for weight in GRID:
        mixed = [
            numpy_mix(np.array(MODEL[i]), np.array(DISPLAY[i]), weight) if weight else MODEL[i]
            for i in range(3)
        ]
        expected.append(numpy_ips_dcg(mixed, DISPLAY, np.array(PICKS), propensities))
    best = GRID[int(np.argmax(expected))]  # numpy's argmax: the first of equal values
    assert 0.0 < best < GRID[-1], "the case must make an intermediate weight best"
    assert float(module.display_prior_weight) == best
    # the model's own validation metrics stay unmixed
    _, values = module.evaluations["val"]["model"]
    raw = numpy_ips_dcg(MODEL, DISPLAY, np.array(PICKS), propensities)
    assert values["ips_dcg@10"].double().mean().item() == pytest.approx(raw, rel=1e-6)
    assert module.export_metadata("{title}")["display_prior"]["weight"] == best


def test_the_export_and_the_gate_rank_with_the_fitted_weight(tiny_backbone, tmp_path) -> None:
    from deployment.gate import module_from_export
    from lightning_modules.inference import ExportedReranker

    module = BiEncoderReranker(
        model_name_or_path=str(tiny_backbone), anchor_weight=0.0, display_prior_weights=GRID
    )
    module.display_prior_weight.fill_(0.5)
    folder = module.export(tmp_path / "export")
    reranker = ExportedReranker.load(folder)
    assert reranker.display_prior_weight == 0.5 and "display rank" in reranker.description
    documents = ["paris city", "berlin wall", "rome", "a capital"]
    raw = reranker._engine.score("capital of france", documents, 32)
    got = reranker.score("capital of france", documents)
    np.testing.assert_allclose(got, numpy_mix(raw, np.arange(4), 0.5), rtol=1e-6)

    gate_module = module_from_export(module, folder)  # ranks with it, fits nothing
    assert gate_module.display_prior_weights is None
    assert float(gate_module.display_prior_weight) == 0.5
    batch = ListwiseCollator(gate_module.input_encoder())(display_lists())
    gate_module.eval()
    with torch.no_grad():
        mixed = gate_module.ranking_scores(batch)
        expected = mix_with_display(
            gate_module.score_batch(batch), batch.display_rank, batch.mask, 0.5
        )
    torch.testing.assert_close(mixed, expected)


def test_a_checkpoint_from_before_the_prior_still_loads(tiny_backbone) -> None:
    module = BiEncoderReranker(model_name_or_path=str(tiny_backbone), anchor_weight=0.0)
    state = module.state_dict()
    del state["display_prior_weight"]
    module.load_state_dict(state)  # strict
    assert float(module.display_prior_weight) == 0.0
    assert "display_prior" not in module.export_metadata("{title}")
