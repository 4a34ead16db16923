"""Tests of benchmarks/trec_dl.py on tiny hand-made data: no shared data, no model loaded."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "trec_dl.py"
_spec = importlib.util.spec_from_file_location("trec_dl_under_test", SCRIPT)
assert _spec is not None and _spec.loader is not None
trec_dl = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = trec_dl  # dataclasses look their module up while being created
_spec.loader.exec_module(trec_dl)


# ---------------------------------------------------------------------------------------------
# Reference formulas in plain Python (trec_eval's definitions)
# ---------------------------------------------------------------------------------------------


def dcg(rels: list[int], k: int = 10) -> float:
    """Linear gain ``rel``, discount ``log2(rank + 1)`` with ranks starting at 1."""
    return sum(rel / math.log2(rank + 1) for rank, rel in enumerate(rels[:k], start=1))


def ndcg_at_10(judged: dict[str, int], ranking: list[str]) -> float:
    ideal = dcg(sorted(judged.values(), reverse=True))
    return dcg([judged.get(d, 0) for d in ranking]) / ideal if ideal > 0 else 0.0


def mrr_at_10(judged: dict[str, int], ranking: list[str], level: int = 2) -> float:
    for rank, docid in enumerate(ranking[:10], start=1):
        if judged.get(docid, 0) >= level:
            return 1.0 / rank
    return 0.0


def recall_at_10(judged: dict[str, int], ranking: list[str], level: int = 2) -> float:
    relevant = {d for d, rel in judged.items() if rel >= level}
    if not relevant:
        return 0.0
    return len(relevant & set(ranking[:10])) / len(relevant)


# ---------------------------------------------------------------------------------------------
# Tiny hand-made set
# ---------------------------------------------------------------------------------------------

QRELS = {
    # "e" is relevant but never retrieved: it still counts in the ideal DCG and in recall.
    "q1": {"a": 3, "b": 0, "c": 2, "d": 1, "e": 2},
    # "y" (relevance 2) is ranked 11th: outside every @10 metric.
    "q2": {"x": 1, "y": 2, "z": 3},
    # Judged but missing from the run: scores 0 and still counts in the means.
    "q3": {"u": 2},
}
RANKINGS = {
    "q1": ["b", "d", "a", "f", "c"],
    "q2": ["n1", "x", "z", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "y"],
    "q4": ["a", "b"],  # not judged: ignored
}


def test_reference_formulas_by_hand() -> None:
    # q1: ranked gains [0, 1, 3, 0, 2]; ideal [3, 2, 2, 1, 0].
    got = 1 / math.log2(3) + 3 / math.log2(4) + 2 / math.log2(6)
    ideal = 3 + 2 / math.log2(3) + 2 / math.log2(4) + 1 / math.log2(5)
    assert ndcg_at_10(QRELS["q1"], RANKINGS["q1"]) == pytest.approx(got / ideal)
    assert ndcg_at_10(QRELS["q1"], RANKINGS["q1"]) == pytest.approx(0.510254, abs=1e-6)
    assert mrr_at_10(QRELS["q1"], RANKINGS["q1"]) == pytest.approx(1 / 3)
    assert recall_at_10(QRELS["q1"], RANKINGS["q1"]) == pytest.approx(2 / 3)
    # q2: ranked gains [0, 1, 3, 0 x 7] (+ 2 at rank 11, cut off); ideal [3, 2, 1].
    got = 1 / math.log2(3) + 3 / math.log2(4)
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_10(QRELS["q2"], RANKINGS["q2"]) == pytest.approx(got / ideal)
    assert ndcg_at_10(QRELS["q2"], RANKINGS["q2"]) == pytest.approx(0.447500, abs=1e-6)
    assert mrr_at_10(QRELS["q2"], RANKINGS["q2"]) == pytest.approx(1 / 3)
    assert recall_at_10(QRELS["q2"], RANKINGS["q2"]) == pytest.approx(1 / 2)


def test_evaluate_rankings_matches_hand_computed_values() -> None:
    evaluation = trec_dl.evaluate_rankings(QRELS, RANKINGS)

    assert set(evaluation.per_query) == {"q1", "q2", "q3"}
    assert evaluation.n_queries == 3
    for qid in ("q1", "q2"):
        metrics = evaluation.per_query[qid]
        assert metrics["ndcg@10"] == pytest.approx(ndcg_at_10(QRELS[qid], RANKINGS[qid]))
        assert metrics["mrr@10"] == pytest.approx(mrr_at_10(QRELS[qid], RANKINGS[qid]))
        assert metrics["recall@10"] == pytest.approx(recall_at_10(QRELS[qid], RANKINGS[qid]))
    assert evaluation.per_query["q3"] == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0}

    expected_means = {
        "ndcg@10": (0.510254 + 0.447500 + 0) / 3,
        "mrr@10": (1 / 3 + 1 / 3 + 0) / 3,
        "recall@10": (2 / 3 + 1 / 2 + 0) / 3,
    }
    for metric, value in expected_means.items():
        assert evaluation.mean[metric] == pytest.approx(value, abs=1e-6)


def test_mrr_uses_relevance_two_and_stops_at_ten() -> None:
    qrels = {"q": {"weak": 1, "late": 3}}
    ranking = ["weak"] + [f"n{i}" for i in range(9)] + ["late"]
    metrics = trec_dl.evaluate_rankings(qrels, {"q": ranking}).per_query["q"]
    assert metrics["mrr@10"] == 0.0  # relevance 1 is not relevant; rank 11 is beyond the cut
    assert metrics["recall@10"] == 0.0
    assert metrics["ndcg@10"] == pytest.approx(ndcg_at_10(qrels["q"], ranking))
    assert metrics["ndcg@10"] > 0  # graded NDCG does count relevance 1


def test_evaluate_rankings_rejects_repeated_documents() -> None:
    with pytest.raises(ValueError, match="twice"):
        trec_dl.evaluate_rankings({"q": {"a": 1}}, {"q": ["a", "a"]})


# ---------------------------------------------------------------------------------------------
# Tie-breaking
# ---------------------------------------------------------------------------------------------


def make_query(qid: str, docids: list[str], bm25_scores: list[float] | None = None):
    scores = bm25_scores or [float(len(docids) - i) for i in range(len(docids))]
    hits = tuple(
        trec_dl.Hit(docid=d, content=f"passage {d}", bm25_rank=i + 1, bm25_score=s)
        for i, (d, s) in enumerate(zip(docids, scores, strict=True))
    )
    return trec_dl.Query(qid=qid, text=f"query {qid}", hits=hits)


def test_rank_hits_breaks_ties_by_bm25_rank() -> None:
    query = make_query("q", ["z", "a", "m", "b"])
    ranked = trec_dl.rank_hits(query.hits, [0.5, 0.5, 0.9, 0.5])
    assert [d for d, _ in ranked] == ["m", "z", "a", "b"]
    # All tied: BM25's order, whatever the document ids.
    assert [d for d, _ in trec_dl.rank_hits(query.hits, [1.0] * 4)] == ["z", "a", "m", "b"]


def test_rank_hits_rejects_nan_and_misaligned_scores() -> None:
    query = make_query("q", ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        trec_dl.rank_hits(query.hits, [1.0, float("nan")])
    with pytest.raises(ValueError):
        trec_dl.rank_hits(query.hits, [1.0])


def test_ties_are_evaluated_in_bm25_order_not_by_docid() -> None:
    # BM25 puts "a" (not relevant) before "z" (relevant) with the same score. The evaluation must
    # keep that order (MRR 1/2), not re-sort tied scores by document id.
    year = trec_dl.YearData(
        name="dl19",
        queries=[make_query("q", ["a", "z"], bm25_scores=[7.0, 7.0])],
        qrels={"q": {"a": 0, "z": 2}},
    )
    rankings, evaluation = trec_dl.score_year(trec_dl.BM25Scorer(), year)
    assert rankings == {"q": ["a", "z"]}
    assert evaluation.per_query["q"]["mrr@10"] == pytest.approx(0.5)
    assert evaluation.per_query["q"]["ndcg@10"] == pytest.approx(
        ndcg_at_10({"a": 0, "z": 2}, ["a", "z"])
    )


# ---------------------------------------------------------------------------------------------
# Scorers with stand-in models (no model is loaded)
# ---------------------------------------------------------------------------------------------


class FakeEncoder:
    """Embeds a text as fixed vectors; records what it was asked to encode."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_bi_encoder_encodes_each_passage_once_and_uses_similarity() -> None:
    q1 = trec_dl.Query(
        qid="1",
        text="query one",
        hits=(
            trec_dl.Hit("d1", "short", 1, 9.0),
            trec_dl.Hit("d2", "long", 2, 8.0),
        ),
    )
    q2 = trec_dl.Query(qid="2", text="query two", hits=(trec_dl.Hit("d2", "long", 1, 5.0),))
    vectors = {
        "query one": [1.0, 0.0],
        "query two": [0.0, 1.0],
        "short": [1.0, 0.0],
        "long": [3.0, 4.0],  # norm 5: dot and cosine rank differently for "query one"
    }
    encoder = FakeEncoder(vectors)
    cosine = trec_dl.BiEncoderScorer(encoder, template="{title}\n{snippet}", similarity="cosine")
    scores = cosine.score([q1, q2])
    assert scores["1"] == pytest.approx([1.0, 0.6])
    assert scores["2"] == pytest.approx([0.8])
    passage_calls = [c for c in encoder.calls if "long" in c or "short" in c]
    assert sorted(t for c in passage_calls for t in c) == ["long", "short"]  # "long" once

    # A second year reuses the cache: only queries are encoded again.
    encoder.calls.clear()
    cosine.score([q2])
    assert encoder.calls == [["query two"]]

    dot = trec_dl.BiEncoderScorer(FakeEncoder(vectors), template="{snippet}", similarity="dot")
    assert dot.score([q1])["1"] == pytest.approx([1.0, 3.0])


class FakeCrossEncoder:
    def __init__(self) -> None:
        self.pairs: list[list[str]] = []

    def predict(self, pairs, **kwargs):
        self.pairs.extend(pairs)
        return np.array([float(len(doc)) for _, doc in pairs])


def test_cross_encoder_scores_each_pair_once() -> None:
    query = trec_dl.Query(
        qid="1",
        text="q",
        hits=(trec_dl.Hit("d1", "abc", 1, 2.0), trec_dl.Hit("d2", "abcdef", 2, 1.0)),
    )
    model = FakeCrossEncoder()
    scorer = trec_dl.CrossEncoderScorer(model, template="{title}\n{snippet}")
    assert scorer.score([query, query])["1"] == [3.0, 6.0]
    assert model.pairs == [["q", "abc"], ["q", "abcdef"]]


# ---------------------------------------------------------------------------------------------
# Loading (tiny files in tmp_path) and command-line specs
# ---------------------------------------------------------------------------------------------


def write_tiny_year(folder: Path, year: str = "dl19") -> None:
    files = trec_dl.DATA_FILES[year]
    entries = [
        {
            "query": f"query {qid}",
            "hits": [
                {"content": f"text {d}", "qid": int(qid), "docid": d, "rank": r, "score": s}
                for r, (d, s) in enumerate([("10", 3.0), ("11", 2.0), ("12", 1.0)], start=1)
            ],
        }
        for qid in ("1", "2", "3")
    ]
    (folder / files["retrieve"]).write_text(json.dumps(entries))
    (folder / files["trec_run"]).write_text(
        "".join(
            f"{qid} Q0 {d} {r} {s} rank\n"
            for qid in ("1", "2", "3")
            for r, (d, s) in enumerate([("10", 3.0), ("11", 2.0), ("12", 1.0)], start=1)
        )
    )
    (folder / files["qrels"]).write_text("1 0 11 2\n1 0 10 0\n2 0 12 3\n")


def test_load_year_keeps_judged_queries(tmp_path: Path) -> None:
    write_tiny_year(tmp_path)
    data = trec_dl.load_year(tmp_path, "dl19")
    assert [q.qid for q in data.queries] == ["1", "2"]
    assert data.qrels == {"1": {"11": 2, "10": 0}, "2": {"12": 3}}
    assert [h.docid for h in data.queries[0].hits] == ["10", "11", "12"]
    assert any("no qrels" in p for p in data.problems)

    bm25 = trec_dl.evaluate_rankings(
        data.qrels, {q.qid: [h.docid for h in q.hits] for q in data.queries}
    )
    assert bm25.per_query["1"]["mrr@10"] == pytest.approx(0.5)
    assert bm25.per_query["2"]["mrr@10"] == pytest.approx(1 / 3)

    smoke = trec_dl.load_year(tmp_path, "dl19", max_queries=1)
    assert [q.qid for q in smoke.queries] == ["1"] and list(smoke.qrels) == ["1"]


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(trec_dl.DataError, match="not found"):
        trec_dl.resolve_data_dir(tmp_path / "nowhere")
    write_tiny_year(tmp_path, "dl19")
    with pytest.raises(trec_dl.DataError, match="qrels.dl20-passage.txt"):
        trec_dl.resolve_data_dir(tmp_path)


def test_parse_model_spec(tmp_path: Path) -> None:
    assert trec_dl.parse_model_spec("bm25") == trec_dl.SystemSpec("bm25", "bm25")
    assert trec_dl.parse_model_spec("mini=base") == trec_dl.SystemSpec("mini", "base")
    folder = tmp_path / "ft_model"
    assert trec_dl.parse_model_spec(str(folder)) == trec_dl.SystemSpec("ft_model", "export", folder)
    assert trec_dl.parse_model_spec(f"ft={folder}") == trec_dl.SystemSpec("ft", "export", folder)


def test_read_export_config(tmp_path: Path) -> None:
    config = {
        "architecture": "bi-encoder",
        "document_template": "{title}\n{snippet}",
        "max_length": 128,
        "similarity": "dot",
    }
    (tmp_path / trec_dl.EXPORT_CONFIG_NAME).write_text(json.dumps(config))
    assert trec_dl.read_export_config(tmp_path) == config
    (tmp_path / trec_dl.EXPORT_CONFIG_NAME).write_text(json.dumps({**config, "similarity": "l2"}))
    with pytest.raises(trec_dl.DataError, match="similarity"):
        trec_dl.read_export_config(tmp_path)


@pytest.mark.parametrize("kind", ["bi", "cross"])
def test_an_export_is_scored_through_the_apps_loader_as_sentence_transformers_scores_it(
    tmp_path: Path, tiny_backbone, kind
) -> None:
    """The benchmark's export path is ExportedReranker; it agrees with sentence-transformers
    loading the same folder (the reference path of the latency benchmark's rows)."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from lightning_modules.reranker import BiEncoderReranker, CrossEncoderReranker

    module = (BiEncoderReranker if kind == "bi" else CrossEncoderReranker)(
        model_name_or_path=str(tiny_backbone), max_length=32
    )
    folder = module.export(tmp_path / "export")
    scorer, info = trec_dl.load_scorer(trec_dl.SystemSpec("x", "export", folder), batch_size=4)
    assert isinstance(scorer, trec_dl.ExportScorer) and info["kind"] == "export"
    queries = [make_query("1", ["a", "b", "c"]), make_query("2", ["d", "e"])]
    ours = scorer.score(queries)
    template = info["document_template"]
    if kind == "bi":
        model = SentenceTransformer(str(folder), device="cpu")
        reference = trec_dl.BiEncoderScorer(model, template=template, similarity="cosine")
    else:
        model = CrossEncoder(str(folder), device="cpu", max_length=32)
        reference = trec_dl.CrossEncoderScorer(model, template=template)
    theirs = reference.score(queries)
    for qid in ("1", "2"):
        np.testing.assert_allclose(ours[qid], theirs[qid], rtol=1e-5, atol=1e-6)
