"""Ranking metrics over listwise ``[B, L]`` scores, built on torchmetrics' retrieval metrics."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall


class _BinaryTarget(Metric):
    """Feeds ``target > 0`` to a retrieval metric that needs binary relevance (MRR, recall)."""

    full_state_update = False

    def __init__(self, metric: Metric) -> None:
        super().__init__()
        self.metric = metric

    def update(self, preds: torch.Tensor, target: torch.Tensor, indexes: torch.Tensor) -> None:
        self.metric.update(preds, target > 0, indexes=indexes)

    def compute(self) -> torch.Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        self.metric.reset()
        super().reset()


class RankingMetrics(MetricCollection):
    """NDCG@k (graded gain = label, log2 discount, as trec_eval), MRR@k and Recall@k.

    Queries with no relevant source are skipped (NDCG, MRR and recall are undefined for them),
    which is what ``trec_eval`` does for queries absent from the qrels. Ties in scores are broken
    by position in the list.
    """

    def __init__(
        self,
        ndcg_at: tuple[int, ...] = (1, 3, 5, 10),
        mrr_at: tuple[int, ...] = (10,),
        recall_at: tuple[int, ...] = (3,),
        prefix: str | None = None,
    ) -> None:
        metrics: dict[str, Metric] = {}
        for k in ndcg_at:
            metrics[f"ndcg@{k}"] = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")
        for k in mrr_at:
            metrics[f"mrr@{k}"] = _BinaryTarget(RetrievalMRR(top_k=k, empty_target_action="skip"))
        for k in recall_at:
            metrics[f"recall@{k}"] = _BinaryTarget(
                RetrievalRecall(top_k=k, empty_target_action="skip")
            )
        super().__init__(metrics, prefix=prefix, compute_groups=False)

    def update_lists(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        query_index: torch.Tensor,
    ) -> None:
        """Add a batch of lists; ``query_index[B]`` must identify each query uniquely."""
        indexes = query_index.view(-1, 1).expand_as(mask)
        preds = rank_scores(scores, mask)
        self.update(preds[mask], labels[mask].float(), indexes=indexes[mask])


def rank_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace scores by ``L - rank`` (1-based rank, ties broken by list position).

    Two reasons: torchmetrics' MRR and recall count an item only when its prediction is > 0
    (logits and display-order scores are often negative), and ranks make tie-breaking explicit
    and deterministic instead of averaged.
    """
    width = scores.shape[-1]
    masked = scores.detach().float().masked_fill(~mask, float("-inf"))
    order = torch.argsort(masked, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(width, device=scores.device).expand_as(order))
    return (width - ranks).float()
