"""Scoring rankings of labelled lists against their true grades, through the project's one
evaluation core (:func:`lightning_modules.metrics.ranking_metrics_per_query`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.feedback import render_document
from lightning_modules.metrics import ranking_metrics_per_query
from simulation.labelled import LabelledList


def true_label_metrics(
    lists: Sequence[LabelledList],
    scores: Sequence[Sequence[float]],
    average_precision: bool = False,
) -> dict[str, np.ndarray]:
    """Per-query NDCG@k / MRR@10 / Recall@3 (and MAP) of ``scores`` (one array per list)
    against the lists' true grades; NaN for a list without a relevant source (skipped in
    means)."""
    width = max((len(item.sources) for item in lists), default=0)
    padded = torch.zeros(len(lists), width, dtype=torch.float64)
    labels = torch.zeros(len(lists), width)
    mask = torch.zeros(len(lists), width, dtype=torch.bool)
    for row, (item, row_scores) in enumerate(zip(lists, scores, strict=True)):
        n = len(item.sources)
        if len(row_scores) != n:
            raise ValueError(f"list {item.query_id}: {len(row_scores)} scores for {n} sources")
        padded[row, :n] = torch.as_tensor(np.asarray(row_scores, dtype=np.float64))
        labels[row, :n] = torch.tensor(item.grades)
        mask[row, :n] = True
    per_query = ranking_metrics_per_query(padded, labels, mask, average_precision=average_precision)
    return {k: v.numpy() for k, v in per_query.items()}


def order_scores(orders: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Scores that reproduce given orders (first = highest)."""
    out = []
    for order in orders:
        scores = np.empty(len(order))
        scores[np.asarray(order, dtype=int)] = -np.arange(len(order), dtype=np.float64)
        out.append(scores)
    return out


def reranker_scores(reranker: Any, lists: Sequence[LabelledList], batch_size: int = 64):
    """A loaded export's scores (:class:`~lightning_modules.inference.ExportedReranker`: the
    app's own inference path) for every list."""
    template = reranker.document_template
    return [
        reranker.score(
            item.query, [render_document(template, s) for s in item.sources], batch_size=batch_size
        )
        for item in lists
    ]


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over the queries where a metric is defined, and how many those were."""
    out = {name: float(np.nanmean(values)) for name, values in per_query.items()}
    first = next(iter(per_query.values()))
    out["n_queries"] = int(np.sum(~np.isnan(first)))
    return out


def untouched_backbone(folder: str | Path):
    """The packaged all-MiniLM-L6-v2 bi-encoder, exported untouched to ``folder`` and loaded by
    the app's loader: the model before any fine-tuning (a display policy, a baseline). A
    folder already there from an earlier run is loaded if it is such an export (never
    replaced); anything else there is refused."""
    from lightning_modules.backbones import EMBEDDED_MINILM_NAMES
    from lightning_modules.inference import ExportedReranker, read_metadata
    from lightning_modules.reranker import BiEncoderReranker

    folder = Path(folder)
    if folder.exists():  # (an export of a fit records its validation; this one has none)
        metadata = read_metadata(folder)
        fitted = (metadata.get("training") or {}).get("validation") or metadata.get("init_from")
        if fitted or metadata.get("base_model") not in EMBEDDED_MINILM_NAMES:
            raise FileExistsError(f"{folder} holds another model, not the untouched backbone")
    else:
        BiEncoderReranker(anchor_weight=0.0).export(folder)
    return ExportedReranker.load(folder)
