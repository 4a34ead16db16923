"""Display policies: the order in which the simulated app shows each list's sources.

Each policy maps a list of labelled lists to, per list, the indices of its sources in display
order (first shown first). Ties keep the file's order, so every policy is deterministic.

* :class:`FileOrder`: the order of the file (e.g. WikiQA's, the Wikipedia summary's order);
* :class:`RandomOrder`: a seeded shuffle per list (a randomised experiment: no position bias
  survives averaging over impressions);
* :class:`BM25Order`: BM25 (``bm25s``) of the query over each source's title and snippet, with
  one index over every source of the lists given (the app's first-stage retrieval);
* :class:`Alternating`: impression ``j`` of a list shown by policy ``j mod n`` of several (the
  app's order changing over time, as each promotion changes it: what intervention harvesting,
  :mod:`datamodules.propensity`, reads position bias from);
* :class:`ModelOrder`: a reranker's scores (anything with ``score(query, documents)`` and a
  ``document_template``, e.g. :class:`lightning_modules.inference.ExportedReranker` on the
  untouched backbone: the app before any fine-tuning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from datamodules.feedback import render_document
from simulation.labelled import LabelledList


class DisplayPolicy(Protocol):
    name: str

    def order(self, lists: Sequence[LabelledList]) -> list[list[int]]: ...


def order_by_scores(scores: Sequence[float]) -> list[int]:
    """Indices by descending score; ties in the original order."""
    return [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]


def in_display_order(lists: Sequence[LabelledList], policy: DisplayPolicy) -> list[LabelledList]:
    """The lists with their sources (and grades) rearranged in the order ``policy`` shows them:
    what an app would pass its reranker, and what a display prior
    (:mod:`lightning_modules.display_prior`) reads the display rank from."""
    return [
        LabelledList(
            item.query,
            item.query_id,
            tuple(item.sources[i] for i in order),
            tuple(item.grades[i] for i in order),
        )
        for item, order in zip(lists, policy.order(lists), strict=True)
    ]


@dataclass(frozen=True)
class FileOrder:
    name: str = "file"

    def order(self, lists: Sequence[LabelledList]) -> list[list[int]]:
        return [list(range(len(item.sources))) for item in lists]


@dataclass(frozen=True)
class RandomOrder:
    seed: int = 0
    name: str = "random"

    def order(self, lists: Sequence[LabelledList]) -> list[list[int]]:
        return [
            [int(i) for i in np.random.default_rng([self.seed, n]).permutation(len(item.sources))]
            for n, item in enumerate(lists)
        ]


@dataclass(frozen=True)
class BM25Order:
    """BM25 over ``title + snippet`` (English stop words removed; no stemming)."""

    name: str = "bm25"

    def scores(self, lists: Sequence[LabelledList]) -> list[np.ndarray]:
        import bm25s

        texts = [f"{s.title} {s.snippet}" for item in lists for s in item.sources]
        retriever = bm25s.BM25()
        retriever.index(
            bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False
        )
        queries = bm25s.tokenize(
            [item.query for item in lists], stopwords="en", return_ids=False, show_progress=False
        )
        out, start = [], 0
        for item, query in zip(lists, queries, strict=True):
            end = start + len(item.sources)
            if query:
                out.append(np.asarray(retriever.get_scores(query))[start:end])
            else:  # a query of stop words only: nothing to rank by, the file's order
                out.append(np.zeros(end - start))
            start = end
        return out

    def order(self, lists: Sequence[LabelledList]) -> list[list[int]]:
        return [order_by_scores(s) for s in self.scores(lists)]


class ModelOrder:
    """The order of a reranker's scores for each list."""

    def __init__(self, reranker: Any, name: str = "model", batch_size: int = 32) -> None:
        self.reranker = reranker
        self.name = name
        self.batch_size = batch_size

    def order(self, lists: Sequence[LabelledList]) -> list[list[int]]:
        template = self.reranker.document_template
        orders = []
        for item in lists:
            documents = [render_document(template, s) for s in item.sources]
            scores = self.reranker.score(item.query, documents, batch_size=self.batch_size)
            orders.append(order_by_scores(scores))
        return orders


class Alternating:
    """Several policies taking turns by impression number."""

    def __init__(self, policies: Sequence[DisplayPolicy]) -> None:
        if not policies:
            raise ValueError("Alternating needs at least one policy")
        self.policies = list(policies)
        self.name = "+".join(p.name for p in self.policies)

    def order(self, lists: Sequence[LabelledList]) -> list[list[int]]:
        return self.policies[0].order(lists)


DISPLAYS = ("file", "bm25", "random", "backbone")


def add_display_argument(parser, help: str) -> None:
    """The benchmarks' ``--display`` option (names of :data:`DISPLAYS`; BM25 by default), for
    :func:`display_policy`."""
    parser.add_argument("--display", nargs="+", choices=DISPLAYS, default=["bm25"], help=help)


def display_policy(names: Sequence[str], work_dir: str | Path, seed: int = 0) -> DisplayPolicy:
    """The policy the benchmarks' ``--display`` names: one of :data:`DISPLAYS`, or several
    taking turns by impression (:class:`Alternating`). ``backbone`` exports the untouched model
    under ``work_dir`` to score with."""
    policies: list[DisplayPolicy] = []
    for name in names:
        if name == "file":
            policies.append(FileOrder())
        elif name == "random":
            policies.append(RandomOrder(seed=seed))
        elif name == "bm25":
            policies.append(BM25Order())
        elif name == "backbone":
            from simulation.evaluation import untouched_backbone

            model = untouched_backbone(Path(work_dir) / "backbone")
            policies.append(ModelOrder(model, name="backbone"))
        else:
            raise ValueError(f"unknown display {name!r}: one of {', '.join(DISPLAYS)}")
    if not policies:
        raise ValueError("no display policy named")
    return policies[0] if len(policies) == 1 else Alternating(policies)
