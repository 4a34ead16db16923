"""The retrieval judge: does a rewrite find what the user chose?

A rewriter exists to produce queries that find relevant sources, which BLEU against one mined
target cannot tell. The judge answers it from the app's own log: BM25 (``bm25s``; Robertson &
Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009) over the title and
snippet of every source any candidate query of the log retrieved, one index for the whole log,
and for a query and a record the **coverage@k**: the share of the record's selected sources
among the query's top k. For several queries (the app runs several variations) the **union
coverage@k** counts a selected source found by any of them (the set-level view of CONQRR,
Wu et al., EMNLP 2022, which rewards a rewrite by what a retriever finds with it).

Ties in BM25 scores are broken by the order the sources first appear in the log, so a
judgement never depends on the index's internals. A query of stop words only retrieves
nothing (coverage 0); a record without selected sources has no coverage (NaN), and averages
skip it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from datamodules.rewrite_feedback import RewritingRecord

DEFAULT_K = 10


def document_text(title: str, snippet: str) -> str:
    return f"{title} {snippet}".strip()


class RetrievalJudge:
    """BM25 over the log's sources; coverage of each record's selected sources.

    Args:
        records: the log (all of it: training and validation records share one index, as they
            share one search engine in the app).
        k: the cut-off of :meth:`coverage` and :meth:`union_coverage` (10).
    """

    def __init__(self, records: Iterable[RewritingRecord], k: int = DEFAULT_K) -> None:
        import bm25s

        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.urls: list[str] = []
        texts: list[str] = []
        position: dict[str, int] = {}
        for record in records:
            for source in record.documents:
                if source.url not in position:
                    position[source.url] = len(self.urls)
                    self.urls.append(source.url)
                    texts.append(document_text(source.title, source.snippet))
        if not any(texts):
            raise ValueError(
                "the log records no source with a title or snippet: nothing to retrieve from"
            )
        self._retriever = bm25s.BM25()
        self._retriever.index(
            bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False
        )
        self._tokenize = lambda queries: bm25s.tokenize(
            list(queries), stopwords="en", return_ids=False, show_progress=False
        )

    def __len__(self) -> int:
        return len(self.urls)

    def retrieve(self, queries: Sequence[str], k: int | None = None) -> list[list[str]]:
        """The top ``k`` urls of each query, best first (ties: first seen in the log first)."""
        k = min(k or self.k, len(self.urls))
        out = []
        for tokens in self._tokenize(queries):
            if not tokens:
                out.append([])
                continue
            scores = np.asarray(self._retriever.get_scores(tokens), dtype=np.float64)
            top = np.argsort(-scores, kind="stable")[:k]
            out.append([self.urls[i] for i in top if scores[i] > 0])
        return out

    def coverage(self, query: str, record: RewritingRecord, k: int | None = None) -> float:
        """Share of ``record``'s selected sources in ``query``'s top ``k``; NaN without any."""
        return self.union_coverage([query], record, k)

    def union_coverage(
        self, queries: Sequence[str], record: RewritingRecord, k: int | None = None
    ) -> float:
        """Share of ``record``'s selected sources in the union of the queries' top ``k``."""
        return self.union_coverages([queries], record, k)[0]

    def union_coverages(
        self, query_sets: Sequence[Sequence[str]], record: RewritingRecord, k: int | None = None
    ) -> list[float]:
        """:meth:`union_coverage` of each query set for one record, retrieving each distinct
        query once (validation judges the best rewrite, the unions of the first n variations
        and the baselines, which share most of their queries)."""
        selected = set(record.selected_sources)
        if not selected:
            return [float("nan")] * len(query_sets)
        distinct = list(dict.fromkeys(q for queries in query_sets for q in queries))
        top = dict(zip(distinct, self.retrieve(distinct, k), strict=True))
        return [
            len(selected & {url for q in queries for url in top[q]}) / len(selected)
            for queries in query_sets
        ]

    def coverages(
        self,
        queries: Sequence[Sequence[str]],
        records: Sequence[RewritingRecord],
        k: int | None = None,
    ) -> np.ndarray:
        """Union coverage of each record by its own queries (``queries[i]`` for
        ``records[i]``), as a ``[N]`` array."""
        if len(queries) != len(records):
            raise ValueError(f"{len(queries)} query lists for {len(records)} records")
        return np.array(
            [self.union_coverage(q, r, k) for q, r in zip(queries, records, strict=True)],
            dtype=np.float64,
        )
