"""Validation metrics against pytrec_eval (trec_eval's own implementation) on hand-made runs."""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval
import torch

from lightning_modules.metrics import RankingMetrics, rank_scores

# Three queries of different lengths, graded labels, negative and positive scores.
LISTS = [
    (
        [0.3, -1.2, 2.0, 0.1, -0.5, 1.1, 0.0, -2.0, 0.7, 0.2, -0.1, 0.05],
        [0, 2, 0, 1, 0, 0, 3, 0, 0, 1, 0, 0],
    ),
    ([-3.0, -1.0, -2.0, -0.5], [1, 0, 0, 0]),
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4], [0, 0, 0, 0, 0, 2, 1]),
]


def padded_batch(lists):
    width = max(len(s) for s, _ in lists)
    scores = torch.full((len(lists), width), 99.0)  # padding with a score that would win
    labels = torch.full((len(lists), width), 3.0)  # ... and a label that would count
    mask = torch.zeros(len(lists), width, dtype=torch.bool)
    for row, (s, g) in enumerate(lists):
        scores[row, : len(s)] = torch.tensor(s)
        labels[row, : len(g)] = torch.tensor(g, dtype=torch.float)
        mask[row, : len(s)] = True
    return scores, labels, mask


def trec_eval(lists, measures, relevance_level=1, depth=None):
    qrels, run = {}, {}
    for q, (scores, grades) in enumerate(lists):
        qrels[f"q{q}"] = {f"d{i}": int(g) for i, g in enumerate(grades)}
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[:depth]
        run[f"q{q}"] = {f"d{i}": float(scores[i]) for i in ranked}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=relevance_level)
    per_query = evaluator.evaluate(run)
    return per_query


def test_metrics_equal_pytrec_eval():
    metrics = RankingMetrics(ndcg_at=(1, 3, 5, 10), mrr_at=(10,), recall_at=(3,))
    scores, labels, mask = padded_batch(LISTS)
    # Two updates (as two validation batches) with distinct query indexes.
    metrics.update_lists(scores[:2], labels[:2], mask[:2], torch.tensor([0, 1]))
    metrics.update_lists(scores[2:], labels[2:], mask[2:], torch.tensor([2]))
    ours = {k: float(v) for k, v in metrics.compute().items()}

    ndcg = trec_eval(LISTS, {"ndcg_cut_1", "ndcg_cut_3", "ndcg_cut_5", "ndcg_cut_10"})
    for k in (1, 3, 5, 10):
        expected = np.mean([q[f"ndcg_cut_{k}"] for q in ndcg.values()])
        assert ours[f"ndcg@{k}"] == pytest.approx(expected, abs=1e-6)
    mrr = trec_eval(LISTS, {"recip_rank"}, depth=10)
    assert ours["mrr@10"] == pytest.approx(
        np.mean([q["recip_rank"] for q in mrr.values()]), abs=1e-6
    )
    recall = trec_eval(LISTS, {"recall_3"})
    assert ours["recall@3"] == pytest.approx(
        np.mean([q["recall_3"] for q in recall.values()]), abs=1e-6
    )
    # The hand-made case is not degenerate: the metrics differ from each other and from 0/1.
    assert 0 < ours["ndcg@10"] < 1 and ours["mrr@10"] != ours["ndcg@10"]


def test_queries_without_relevant_sources_are_skipped():
    lists = [*LISTS, ([0.1, 0.2, 0.3], [0, 0, 0])]
    scores, labels, mask = padded_batch(lists)
    with_empty = RankingMetrics()
    with_empty.update_lists(scores, labels, mask, torch.arange(4))
    without = RankingMetrics()
    without.update_lists(scores[:3], labels[:3], mask[:3], torch.arange(3))
    for name, value in with_empty.compute().items():
        assert float(value) == pytest.approx(float(without.compute()[name]))


def test_rank_scores_break_ties_by_position_and_ignore_padding():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 50.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    ranks = rank_scores(scores, mask)
    assert ranks[0, :4].tolist() == [3.0, 5.0, 4.0, 2.0]  # width - rank; tie: earlier first
    assert ranks[0, 4] < ranks[0, :4].min()


@pytest.mark.parametrize(
    ("hypotheses", "references"),
    [
        (["the cat sat"], ["the cat sat on the mat"]),  # no 4-gram at all in the hypothesis
        (["a b c d e", "x y"], ["a b x d e", "x z"]),  # orders without a match: smoothed
        (["Paris is big", "when did it end"], ["paris is big", "When did the war end?"]),
        ([""], ["something"]),
    ],
)
def test_bleu_from_statistics_is_sacrebleus_corpus_bleu(hypotheses, references):
    import sacrebleu

    from lightning_modules.metrics import BleuStatistics, RewriteMetrics

    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert BleuStatistics.from_texts(hypotheses, references).corpus_bleu() == pytest.approx(
        expected, abs=1e-6
    )
    metrics = RewriteMetrics()
    metrics.update(hypotheses, references)
    assert float(metrics.compute()["bleu"]) == pytest.approx(expected, abs=1e-4)


def test_position_metrics_match_hand_computed_values_and_scipy_kendall() -> None:
    from scipy.stats import kendalltau

    from lightning_modules.metrics import position_metrics_per_query

    # list 0: shown in order 0..4, picks at display ranks 1 and 4 (0-based 0 and 3);
    # the model ranks source 3 first and source 0 third. list 1: no picks; padded.
    scores = torch.tensor([[0.5, 0.9, 0.1, 2.0, -1.0], [0.3, 0.2, 0.1, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    display = torch.tensor([[0, 1, 2, 3, 4], [2, 0, 1, 0, 0]])
    propensities = torch.tensor([1.0, 0.5, 1 / 3, 0.25, 0.2])
    got = position_metrics_per_query(scores, labels, mask, display, propensities)
    # model order: 3, 1, 0, 2, 4 -> source 3 at model rank 1 (shown at rank 4: weight 4),
    # source 0 at model rank 3 (shown first: weight 1)
    expected_ips = 4.0 / np.log2(2) + 1.0 / np.log2(4)
    assert got["ips_dcg@10"][0].item() == pytest.approx(expected_ips)
    assert np.isnan(got["ips_dcg@10"][1].item())
    assert got["top3_overlap"][0].item() == pytest.approx(2 / 3)  # {3,1,0} vs {0,1,2}
    assert got["top3_overlap"][1].item() == 1.0  # 3 sources: both top 3s are the whole list
    for row in range(2):
        n = int(mask[row].sum())
        tau = kendalltau(scores[row, :n].numpy(), -display[row, :n].numpy()).statistic
        assert got["kendall_tau"][row].item() == pytest.approx(tau)


def test_average_precision_equals_pytrec_eval_map():
    from lightning_modules.metrics import ranking_metrics_per_query

    scores, labels, mask = padded_batch(LISTS)
    ours = ranking_metrics_per_query(scores, labels, mask, average_precision=True)["map"]
    expected = trec_eval(LISTS, {"map"})
    for q in range(len(LISTS)):
        assert ours[q].item() == pytest.approx(expected[f"q{q}"]["map"], abs=1e-6)


def test_ranking_metrics_with_propensities_keep_one_source_lists_and_the_position_values():
    from lightning_modules.metrics import position_metrics_per_query

    # row 0: a real list; row 1: one source, picked (tau undefined, NDCG defined); row 2: no pick
    scores = torch.tensor([[0.2, 0.9, 0.1], [1.0, 0.0, 0.0], [0.3, 0.2, 0.1]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, True]])
    display = torch.tensor([[0, 1, 2], [0, 0, 0], [2, 1, 0]])
    propensities = [1.0, 0.5, 0.25]
    metrics = RankingMetrics(propensities=propensities)
    metrics.update_lists(scores, labels, mask, torch.arange(3), display)
    index, values = metrics.per_query()
    assert index.tolist() == [0, 1]  # the list without a pick is dropped, the one-source kept
    expected = position_metrics_per_query(scores, labels, mask, display, torch.tensor(propensities))
    for name in ("ips_dcg@10", "top3_overlap"):
        torch.testing.assert_close(values[name].double(), expected[name][:2], rtol=1e-6, atol=0)
    assert torch.isnan(values["kendall_tau"][1])
    mean = metrics.compute()
    assert mean["kendall_tau"].item() == pytest.approx(expected["kendall_tau"][0].item())
    assert mean["ndcg@10"].item() == pytest.approx(values["ndcg@10"].mean().item())
    with pytest.raises(ValueError, match="display_rank"):
        RankingMetrics(propensities=propensities).update_lists(
            scores, labels, mask, torch.arange(3)
        )
