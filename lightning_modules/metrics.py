"""The evaluation core: one set of metric functions per task, used by validation and test, by
the promotion gate (which runs Lightning's validation loop) and by the benchmarks.

Ranking: pure functions over listwise ``[B, L]`` arrays with a padding mask give per-query
values (torchmetrics' retrieval functions underneath, as ``trec_eval`` computes them); the
:class:`RankingMetrics` torchmetrics ``Metric`` gathers them across batches and processes and
averages them, and keeps them per query for the gate's paired bootstrap.

Rewriting: per-sentence SacreBLEU sufficient statistics (13a tokenisation, cased, read from
torchmetrics' public metric state), so that the corpus BLEU of any resample is a sum and
sacrebleu's formula (Papineni et al., ACL 2002; Post, WMT 2018); :class:`RewriteMetrics`
reports BLEU, chrF and exact match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_normalized_dcg,
    retrieval_recall,
    retrieval_reciprocal_rank,
)
from torchmetrics.text import CHRFScore, SacreBLEUScore
from torchmetrics.utilities import dim_zero_cat

from datamodules.split import normalise_query


def _is_empty(state: list[torch.Tensor] | torch.Tensor) -> bool:
    """A ``cat`` state before any update: a list, or a tensor once synced across processes."""
    return len(state) == 0 if isinstance(state, list) else state.numel() == 0


def baseline_name(monitor: str) -> str:
    """The baseline logged beside a metric: the display order for a reranker
    (``val/ndcg@10`` -> ``val/display/ndcg@10``), copying the question for a rewriter
    (``val/bleu`` -> ``val/copy/bleu``)."""
    stage, _, metric = monitor.partition("/")
    return {"bleu": f"{stage}/copy/{metric}"}.get(metric, f"{stage}/display/{metric}")


# -- ranking ------------------------------------------------------------------------------------


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


def ranking_metric_names(
    ndcg_at: Sequence[int] = (1, 3, 5, 10),
    mrr_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (3,),
) -> list[str]:
    return (
        [f"ndcg@{k}" for k in ndcg_at]
        + [f"mrr@{k}" for k in mrr_at]
        + [f"recall@{k}" for k in recall_at]
    )


def ranking_metrics_per_query(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    ndcg_at: Sequence[int] = (1, 3, 5, 10),
    mrr_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (3,),
    average_precision: bool = False,
) -> dict[str, torch.Tensor]:
    """NDCG@k (graded gain = label, log2 discount; Järvelin & Kekäläinen, TOIS 2002), MRR@k and
    Recall@k (relevant = label > 0) of every list of ``scores[B, L]``, as ``[B]`` arrays; with
    ``average_precision``, also ``map`` (average precision over the whole list, as trec_eval's
    ``map``).

    Padding (``mask`` false) is never ranked. A list without a relevant source gets NaN: the
    metrics are undefined for it, and ``trec_eval`` skips such queries. Ties in scores are
    broken by position in the list.
    """
    ranks = rank_scores(scores, mask).cpu()
    labels, mask = labels.float().cpu(), mask.cpu()
    names = ranking_metric_names(ndcg_at, mrr_at, recall_at) + (["map"] * average_precision)
    out = torch.full((len(names), scores.shape[0]), float("nan"), dtype=torch.float64)
    for row in range(scores.shape[0]):
        preds, target = ranks[row][mask[row]], labels[row][mask[row]]
        relevant = target > 0
        if not relevant.any():
            continue
        values = [retrieval_normalized_dcg(preds, target, top_k=k) for k in ndcg_at]
        values += [retrieval_reciprocal_rank(preds, relevant, top_k=k) for k in mrr_at]
        values += [retrieval_recall(preds, relevant, top_k=k) for k in recall_at]
        if average_precision:
            values.append(retrieval_average_precision(preds, relevant))
        out[:, row] = torch.stack([v.double() for v in values])
    return dict(zip(names, out, strict=True))


# the position metrics (:func:`position_metrics_per_query`) that describe agreement with the
# display order rather than how good a ranking is: no display baseline or lift for them
AGREEMENT_METRICS = ("top3_overlap", "kendall_tau")


class RankingMetrics(Metric):
    """Per-query ranking metrics over an evaluation, gathered across batches and processes.

    ``compute()`` is the mean over the queries that have a relevant source (0 if none has);
    ``per_query()`` gives each query's values, by query index, for paired comparisons. With
    ``propensities`` (examination by display rank), :func:`position_metrics_per_query` is
    computed for the same queries too (``ips_dcg@10`` and the agreement with the display);
    ``update_lists`` then needs the lists' ``display_rank``.
    """

    full_state_update = False

    def __init__(
        self,
        ndcg_at: tuple[int, ...] = (1, 3, 5, 10),
        mrr_at: tuple[int, ...] = (10,),
        recall_at: tuple[int, ...] = (3,),
        propensities: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ks = {"ndcg_at": ndcg_at, "mrr_at": mrr_at, "recall_at": recall_at}
        self.names = ranking_metric_names(ndcg_at, mrr_at, recall_at)
        self.n_ranking = len(self.names)
        self.propensities = None
        if propensities is not None:
            self.propensities = torch.tensor(list(propensities), dtype=torch.float64)
            self.names += ["ips_dcg@10", *AGREEMENT_METRICS]
        self.add_state("query_index", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")  # [N, metrics]

    def update_lists(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        query_index: torch.Tensor,
        display_rank: torch.Tensor | None = None,
    ) -> None:
        """Add a batch of lists; ``query_index[B]`` must identify each query uniquely."""
        self.update(scores, labels, mask, query_index, display_rank)

    def update(self, scores, labels, mask, query_index, display_rank=None) -> None:
        per_query = ranking_metrics_per_query(scores, labels, mask, **self.ks)
        if self.propensities is not None:
            if display_rank is None:
                raise ValueError("RankingMetrics with propensities needs the display_rank")
            per_query |= position_metrics_per_query(
                scores, labels, mask, display_rank, self.propensities
            )
        values = torch.stack([per_query[name] for name in self.names], dim=1)
        self.query_index.append(query_index.detach().long().to(self.device))
        self.values.append(values.float().to(self.device))  # (float32: MPS has no float64)

    def per_query(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Query indices (sorted) and, for each metric, the values of the queries that have a
        relevant source (the others are dropped). Kendall's tau is NaN for a one-source list."""
        if _is_empty(self.query_index):
            return torch.zeros(0, dtype=torch.long), {n: torch.zeros(0) for n in self.names}
        index, values = dim_zero_cat(self.query_index), dim_zero_cat(self.values)
        order = torch.argsort(index, stable=True)
        index, values = index[order], values[order]
        kept = ~torch.isnan(values[:, : self.n_ranking]).any(1)
        return index[kept], {n: values[kept, i] for i, n in enumerate(self.names)}

    def compute(self) -> dict[str, torch.Tensor]:
        _, values = self.per_query()
        out = {}
        for name, v in values.items():
            v = v[~torch.isnan(v)]
            out[name] = (v.mean() if len(v) else torch.tensor(0.0, dtype=torch.float64)).float()
        return out


def position_metrics_per_query(
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    display_rank: torch.Tensor,
    propensities: torch.Tensor,
    k: int = 10,
    overlap_at: int = 3,
) -> dict[str, torch.Tensor]:
    """What pick-based metrics cannot tell apart, per list (``[B]`` float64 arrays):

    * ``ips_dcg@k``: the picks' DCG@k under the model's ranking, each pick weighted by the inverse
      propensity of the rank it was shown at (``propensities[r]``, r 0-based; later ranks share
      the last). The inverse-propensity-scoring estimate of Joachims et al. (WSDM 2017,
      "Unbiased Learning-to-Rank with Biased Feedback"): under a position-based user, its
      expectation is the DCG of the sources users find relevant, whatever order they were shown
      in; the raw picks' DCG rewards ranking like the display. NaN for a list without picks.
    * ``top{overlap_at}_overlap``: share of the model's top ``overlap_at`` that the display also
      showed in its top ``overlap_at``;
    * ``kendall_tau``: Kendall's tau-a between the model's scores and the display order (1: the
      display order exactly). NaN for a list of one.
    """
    labels, mask = labels.float().cpu(), mask.cpu()
    width = scores.shape[-1]
    model_score = rank_scores(scores, mask).cpu()  # width - 0-based rank
    model_rank = (width - model_score).long()
    display_rank = display_rank.cpu()
    propensities = propensities.double().cpu()
    picked = (labels > 0) & mask
    weight = 1.0 / propensities[display_rank.clamp(0, len(propensities) - 1)]
    gain = torch.where(
        picked & (model_rank < k), weight / torch.log2(model_rank.double() + 2.0), 0.0
    )
    ips = torch.where(picked.any(-1), gain.sum(-1), torch.tensor(float("nan"), dtype=torch.float64))
    n = mask.sum(-1)
    cut = torch.minimum(n, torch.tensor(overlap_at))
    in_model_top = (model_rank < cut[:, None]) & mask
    display_position = (width - rank_scores(-display_rank.double(), mask).cpu()).long()
    display_top = (display_position < cut[:, None]) & mask
    overlap = (in_model_top & display_top).sum(-1).double() / cut.clamp(min=1).double()
    pairs = mask[:, :, None] & mask[:, None, :]
    upper = torch.ones_like(pairs[0]).triu(1)[None] & pairs
    model_sign = torch.sign(model_score[:, :, None] - model_score[:, None, :])
    display_sign = torch.sign(display_rank[:, None, :] - display_rank[:, :, None]).double()
    agreement = torch.where(upper, model_sign.double() * display_sign, 0.0).sum((1, 2))
    n_pairs = upper.sum((1, 2)).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    tau = torch.where(n_pairs > 0, agreement / n_pairs.clamp(min=1), nan)
    return {
        f"ips_dcg@{k}": ips,
        f"top{overlap_at}_overlap": torch.where(n > 0, overlap, nan),
        "kendall_tau": tau,
    }


# -- rewriting -----------------------------------------------------------------------------------


def corpus_bleu_from_statistics(
    matches: torch.Tensor, totals: torch.Tensor, hypothesis_length: float, reference_length: float
) -> float:
    """Corpus BLEU (0-100; 4-grams, uniform weights) from summed n-gram ``matches[4]`` and
    ``totals[4]`` and the summed lengths, as ``sacrebleu.corpus_bleu`` computes it by default:
    an order with no match counts as ``1 / (2^k x total)`` for its k-th such order ("exp"
    smoothing, NIST mteval-v13a), and the brevity penalty is ``exp(1 - ref / hyp)``."""
    log_precisions = []
    doubling = 1.0
    for correct, total in zip(matches.tolist(), totals.tolist(), strict=True):
        if total == 0:  # no n-grams of this order at all: BLEU is 0
            return 0.0
        if correct == 0:
            doubling *= 2
            log_precisions.append(math.log(1.0 / (doubling * total)))
        else:
            log_precisions.append(math.log(correct / total))
    if hypothesis_length == 0:
        return 0.0
    brevity = min(0.0, 1.0 - reference_length / hypothesis_length)
    return 100.0 * math.exp(sum(log_precisions) / len(log_precisions) + brevity)


@dataclass
class BleuStatistics:
    """Per-sentence SacreBLEU sufficient statistics (13a, cased): the corpus BLEU of any
    resample of the sentences is a sum of rows and :func:`corpus_bleu_from_statistics`."""

    matches: torch.Tensor  # [N, 4] clipped n-gram matches
    totals: torch.Tensor  # [N, 4] hypothesis n-grams
    hypothesis_length: torch.Tensor  # [N]
    reference_length: torch.Tensor  # [N]

    @classmethod
    def from_texts(cls, hypotheses: Sequence[str], references: Sequence[str]) -> BleuStatistics:
        rows = []
        for hypothesis, reference in zip(hypotheses, references, strict=True):
            sentence = SacreBLEUScore(tokenize="13a")
            sentence.update([hypothesis], [[reference]])
            state = sentence.metric_state
            rows.append(
                (state["numerator"], state["denominator"], state["preds_len"], state["target_len"])
            )
        if not rows:
            zero = torch.zeros(0, 4, dtype=torch.float64)
            return cls(zero, zero, torch.zeros(0), torch.zeros(0))
        return cls(
            torch.stack([r[0].double() for r in rows]),
            torch.stack([r[1].double() for r in rows]),
            torch.stack([torch.as_tensor(r[2]).double() for r in rows]),
            torch.stack([torch.as_tensor(r[3]).double() for r in rows]),
        )

    def corpus_bleu(self, indices: np.ndarray | None = None) -> float:
        """Corpus BLEU (0-100) of the sentences at ``indices`` (with repeats), all by default."""
        pick = slice(None) if indices is None else torch.as_tensor(indices)
        return corpus_bleu_from_statistics(
            self.matches[pick].sum(0),
            self.totals[pick].sum(0),
            float(self.hypothesis_length[pick].sum()),
            float(self.reference_length[pick].sum()),
        )


def exact_matches(hypotheses: Sequence[str], references: Sequence[str]) -> torch.Tensor:
    """1 where a rewrite equals its reference after case, width and whitespace normalisation
    (``normalise_query``), else 0."""
    return torch.tensor(
        [
            float(normalise_query(h) == normalise_query(r))
            for h, r in zip(hypotheses, references, strict=True)
        ],
        dtype=torch.float64,
    )


class RewriteMetrics(Metric):
    """Corpus SacreBLEU (13a, cased) and chrF (sacrebleu's default, not chrF++) on sacrebleu's
    0-100 scale, and exact match (the share of rewrites, 0-1) of a set of rewrites;
    ``per_sentence()`` keeps what the gate's paired
    bootstrap resamples (BLEU statistics and exact matches, by pair index)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.chrf = CHRFScore(n_word_order=0)
        for name in ("index", "matches", "totals", "hypothesis_length", "reference_length"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("exact", default=[], dist_reduce_fx="cat")

    def update(
        self,
        predictions: list[str],
        references: list[str],
        indices: Sequence[int] | None = None,
    ) -> None:
        statistics = BleuStatistics.from_texts(predictions, references)
        if indices is None:
            start = sum(len(i) for i in self.index) if isinstance(self.index, list) else 0
            indices = range(start, start + len(predictions))
        self.index.append(torch.as_tensor(list(indices), dtype=torch.long, device=self.device))
        self.matches.append(statistics.matches.float().to(self.device))
        self.totals.append(statistics.totals.float().to(self.device))
        self.hypothesis_length.append(statistics.hypothesis_length.float().to(self.device))
        self.reference_length.append(statistics.reference_length.float().to(self.device))
        self.exact.append(exact_matches(predictions, references).float().to(self.device))
        self.chrf.update(predictions, [[r] for r in references])

    def per_sentence(self) -> tuple[torch.Tensor, BleuStatistics, torch.Tensor]:
        """Pair indices (sorted), their BLEU statistics and their exact matches (0/1)."""
        if _is_empty(self.index):
            empty = BleuStatistics.from_texts([], [])
            return torch.zeros(0, dtype=torch.long), empty, torch.zeros(0)
        index = dim_zero_cat(self.index)
        order = torch.argsort(index, stable=True)

        def cat(state):
            return dim_zero_cat(state)[order].cpu().double()

        statistics = BleuStatistics(
            cat(self.matches),
            cat(self.totals),
            cat(self.hypothesis_length),
            cat(self.reference_length),
        )
        return index[order].cpu(), statistics, cat(self.exact)

    def compute(self) -> dict[str, torch.Tensor]:
        _, statistics, exact = self.per_sentence()
        return {
            "bleu": torch.tensor(statistics.corpus_bleu()),
            "chrf": self.chrf.compute() * 100,
            "exact_match": exact.mean() if len(exact) else torch.tensor(0.0),
        }

    def reset(self) -> None:
        super().reset()
        self.chrf.reset()


# the systems whose queries the retrieval judge scores in validation: the model's best rewrite,
# the question itself (the copy baseline) and the mined target (what the log's best candidate
# found); the rewriter adds the union of its first n variations (the app searches with several)
# for each n it judges (union_system(n))
COVERAGE_SYSTEMS = ("model", "copy", "target")


def union_system(n: int) -> str:
    """The coverage system of the union of a rewriter's first ``n`` variations."""
    return f"union{n}"


class CoverageMetrics(Metric):
    """Per-pair coverage@k (:class:`~lightning_modules.retrieval_judge.RetrievalJudge`) of the
    model's rewrite, of the question itself, of the mined target (:data:`COVERAGE_SYSTEMS`) and
    of whatever other query sets ``systems`` names (unions of variations), gathered across batches
    and processes; ``compute()`` gives each system's mean over the pairs that have selected
    sources, ``per_pair()`` the values by pair index (for paired comparisons)."""

    full_state_update = False

    def __init__(self, systems: Sequence[str] = COVERAGE_SYSTEMS) -> None:
        super().__init__()
        self.systems = tuple(systems)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")  # [N, systems]

    def update(self, values: torch.Tensor, indices: Sequence[int]) -> None:
        """``values[N, len(systems)]`` for the pairs ``indices``."""
        self.index.append(torch.as_tensor(list(indices), dtype=torch.long, device=self.device))
        self.values.append(values.float().to(self.device))

    def per_pair(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if _is_empty(self.index):
            return torch.zeros(0, dtype=torch.long), {s: torch.zeros(0) for s in self.systems}
        index, values = dim_zero_cat(self.index), dim_zero_cat(self.values)
        order = torch.argsort(index, stable=True)
        index, values = index[order].cpu(), values[order].cpu()
        kept = ~torch.isnan(values).any(1)
        return index[kept], {s: values[kept, i] for i, s in enumerate(self.systems)}

    def compute(self) -> dict[str, torch.Tensor]:
        _, values = self.per_pair()
        return {s: v.mean() if len(v) else torch.tensor(float("nan")) for s, v in values.items()}
