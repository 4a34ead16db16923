"""CPU latency and quality of the app's reranker backends, beside sentence-transformers: one run.

The app reranks about 10 sources a request. For one export folder this script loads, side by
side in one process:

* ``torch``: our loader (:class:`lightning_modules.inference.ExportedReranker`) on the float32
  Hugging Face weights: **the baseline** every other row is compared with;
* ``onnx``: the same loader on ``onnx/model.onnx`` (float32, onnxruntime);
* ``onnx-int8``: the same loader on the dynamically quantised ``onnx/model_quint8_avx2.onnx``;
* ``st``: sentence-transformers loading the same folder with its default backend (the peer);
* ``st-onnx``: sentence-transformers with ``backend="onnx"`` on the same ONNX file (needs
  optimum's ONNX Runtime support, which does not install beside transformers 5: without it the
  row says so and has no figures).

For each it measures

* **latency** of one request, 10 sources (a TREC DL query and its first 10 BM25 passages,
  ranked as the app calls it: ``rank`` for our loader; ``encode`` or ``predict`` then a sort for
  sentence-transformers): p50 and p95 over ``--repeats`` requests after ``--warmup`` untimed
  ones. The variants take turns block by block (``--rounds`` blocks, the order rotating), so a
  machine busy for a while slows them alike;
* **throughput**: (query, passage) pairs a second, in calls of ``--batch-size`` pairs of one
  query;
* **quality**: NDCG@10 on TREC DL 2019 and 2020 (test only: nothing is tuned on it) with
  ``benchmarks/trec_dl.py``'s evaluation, its difference to the baseline, and whether it stays
  within 0.005 of it on both years;

and reports the speed-up of each p50 over the baseline's, and the fastest variant within the
quality bound (the target: at least 2x the baseline). The CPU (model, torch's kernel level,
the AVX2 / AVX-512 / VNNI / bf16 / AMX flags) and the thread count are printed with the figures
and written to the JSON: timings only compare within a run on one machine. Run it on an
otherwise idle CPU: with fewer free cores than ``--threads``, torch's OpenMP threads wait on
each other and its latency multiplies far more than onnxruntime's, which flatters the ONNX rows.

Without ``--export`` the untouched packaged all-MiniLM-L6-v2 bi-encoder is exported through the
project's own path (``BiEncoderReranker().export(..., onnx=True)``) to a temporary folder. An
``--export`` without ONNX files is copied to a temporary folder and given them; the folder given
is never written to. Needs the ``onnx`` extra (``pip install -e ".[onnx]"``)::

    python benchmarks/latency.py --output benchmarks/results/latency_cpu.json
    python benchmarks/latency.py --export logs/reranker/version_0/export --threads 4
    python benchmarks/latency.py --max-queries 5 --repeats 20   # a quick look, not the figures
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from benchmarks import trec_dl  # noqa: E402
from datamodules.feedback import Source, render_document  # noqa: E402
from lightning_modules.export import EXPORT_METADATA_FILE  # noqa: E402
from lightning_modules.hardware import cpu_capability, describe_cpu  # noqa: E402
from lightning_modules.inference import ONNX_PROVIDER, ExportedReranker, read_metadata  # noqa: E402

VARIANTS = {
    "torch": "our loader, torch float32 (baseline)",
    "onnx": "our loader, ONNX float32 (onnxruntime)",
    "onnx-int8": "our loader, ONNX int8 (dynamic, portable avx2 config)",
    "st": "sentence-transformers, default backend",
    "st-onnx": 'sentence-transformers, backend="onnx"',
}
BASELINE = "torch"
QUALITY_BOUND = 0.005
SPEEDUP_TARGET = 2.0
SOURCES_PER_REQUEST = 10
QUALITY_BATCH_SIZE = 64
SETTLE_S = 0.25  # pause before a variant's block of timed calls (see take_turns)
VERSIONED = (
    "torch",
    "transformers",
    "sentence-transformers",
    "onnxruntime",
    "onnx",
    "optimum",
    "optimum-onnx",
    "numpy",
)

log = logging.getLogger("latency")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The folder under test
# ---------------------------------------------------------------------------------------------


def default_export(workdir: Path) -> Path:
    """The untouched packaged MiniLM bi-encoder, through the project's own export path."""
    from lightning_modules.reranker import BiEncoderReranker

    target = workdir / "minilm_export"
    say(f"exporting the untouched packaged all-MiniLM-L6-v2 bi-encoder to {target}")
    BiEncoderReranker().eval().export(target, onnx=True)
    return target


def with_onnx_files(folder: Path, workdir: Path) -> Path:
    """``folder`` if it has its ONNX files, else a copy of it given them."""
    metadata = read_metadata(folder)
    files = (metadata.get("onnx") or {}).get("files") or {}
    if files and all((folder / path).is_file() for path in files.values()):
        return folder
    from lightning_modules.onnx_export import write_onnx

    copy = workdir / folder.name
    say(f"{folder} has no ONNX files: writing them into a copy, {copy}")
    shutil.copytree(folder, copy)
    metadata["onnx"] = write_onnx(copy, metadata["architecture"], max_length=metadata["max_length"])
    (copy / EXPORT_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return copy


# ---------------------------------------------------------------------------------------------
# Variants: one app request, one batch of pairs, and a TREC DL scorer each
# ---------------------------------------------------------------------------------------------


def hit_source(hit: trec_dl.Hit) -> dict[str, str]:
    """A TREC DL passage as the app sends a source (trec_dl.hit_text renders it the same way)."""
    return {"title": "", "url": hit.docid, "snippet": hit.content}


@dataclass
class Variant:
    name: str
    description: str
    status: str = "ok"
    reason: str | None = None
    request: Callable[[str, list[dict]], Any] | None = None  # rank one request's sources
    batch: Callable[[str, list[dict]], Any] | None = None  # score one batch of pairs
    scorer: Any = None  # trec_dl's Scorer protocol
    info: dict[str, Any] = field(default_factory=dict)


class LoaderScorer:
    """trec_dl's Scorer over our loader: each query's candidates as the app's sources."""

    def __init__(self, reranker: ExportedReranker) -> None:
        self.reranker = reranker

    def score(self, queries: Sequence[trec_dl.Query]) -> dict[str, list[float]]:
        return {
            q.qid: self.reranker.score_sources(
                q.text, [hit_source(h) for h in q.hits], batch_size=QUALITY_BATCH_SIZE
            ).tolist()
            for q in queries
        }


def loader_variant(name: str, folder: Path, threads: int, batch_size: int) -> Variant:
    reranker = ExportedReranker.load(folder, backend=name, threads=threads)
    info = {"loader": reranker.description}
    if name != "torch":
        info["file"] = reranker.metadata["onnx"]["files"][name]
    return Variant(
        name=name,
        description=VARIANTS[name],
        request=lambda q, sources: reranker.rank(q, sources, batch_size=batch_size),
        batch=lambda q, sources: reranker.score_sources(q, sources, batch_size=batch_size),
        scorer=LoaderScorer(reranker),
        info=info,
    )


def sentence_transformers_variant(
    name: str, folder: Path, metadata: dict[str, Any], threads: int, batch_size: int
) -> Variant:
    """sentence-transformers on the same folder, used as its documentation shows."""
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    kwargs: dict[str, Any] = {"device": "cpu"}
    info: dict[str, Any] = {"backend": "torch"}
    template = metadata["document_template"]
    architecture = metadata["architecture"]
    try:
        if name == "st-onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            info = {"backend": "onnx", "file": metadata["onnx"]["files"]["onnx"]}
            kwargs["backend"] = "onnx"
            kwargs["model_kwargs"] = {
                "file_name": info["file"],
                "provider": ONNX_PROVIDER,  # its default: the first provider listed, not the CPU
                "session_options": options,
            }
        if architecture == "cross-encoder":
            model = CrossEncoder(str(folder), max_length=metadata["max_length"], **kwargs)
        else:
            model = SentenceTransformer(str(folder), **kwargs)
            model.max_seq_length = metadata["max_length"]
    except Exception as error:  # the ONNX backend without optimum: reported, not fatal
        if name != "st-onnx":
            raise
        reason = str(error).strip().splitlines()[0]
        say(f"[{name}] unavailable: {reason}")
        return Variant(name, VARIANTS[name], status="unavailable", reason=reason)

    def render(sources: list[dict]) -> list[str]:
        return [render_document(template, Source(**s)) for s in sources]

    identity = torch.nn.Identity()
    cosine = metadata.get("similarity", "cosine") == "cosine"

    def scores(query: str, sources: list[dict]) -> np.ndarray:
        documents = render(sources)
        if architecture == "cross-encoder":
            return model.predict(
                [(query, d) for d in documents],
                batch_size=batch_size,
                activation_fn=identity,
                show_progress_bar=False,
            )
        q = model.encode([query], show_progress_bar=False)
        d = model.encode(documents, batch_size=batch_size, show_progress_bar=False)
        if cosine:
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            d = d / np.linalg.norm(d, axis=1, keepdims=True)
        return d @ q[0]

    def request(query: str, sources: list[dict]) -> list[int]:
        return np.argsort(-scores(query, sources), kind="stable").tolist()

    if architecture == "cross-encoder":
        scorer = trec_dl.CrossEncoderScorer(model, template=template, batch_size=QUALITY_BATCH_SIZE)
    else:
        scorer = trec_dl.BiEncoderScorer(
            model,
            template=template,
            similarity=metadata.get("similarity", "cosine"),
            batch_size=QUALITY_BATCH_SIZE,
        )
    return Variant(name, VARIANTS[name], request=request, batch=scores, scorer=scorer, info=info)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def take_turns(
    variants: Sequence[Variant],
    calls: Sequence[tuple[str, list[dict]]],
    method: str,
    warmup: int,
    rounds: int,
) -> dict[str, list[float]]:
    """Seconds of each call, per variant. ``warmup`` untimed calls of each first; then the
    calls in ``rounds`` consecutive blocks, every variant timing each block in turn (the order
    rotating from block to block), so that a machine busy for a while slows all alike.

    Before each block a variant pauses (:data:`SETTLE_S`) and makes one untimed call: torch's
    OpenMP threads and onnxruntime's pool spin for a while after their work, and would
    otherwise take the cores from whichever runtime comes next (a 10 ms request then took
    hundreds on 2 cores). An app runs one backend, so each is timed without the other's.
    """
    for variant in variants:
        for i in range(warmup):
            getattr(variant, method)(*calls[i % len(calls)])
    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    blocks = [list(b) for b in np.array_split(np.arange(len(calls)), rounds) if len(b)]
    for r, block in enumerate(blocks):
        k = r % len(variants)
        for variant in [*variants[k:], *variants[:k]]:
            call = getattr(variant, method)
            time.sleep(SETTLE_S)
            call(*calls[block[0]])
            for i in block:
                start = time.perf_counter()
                call(*calls[i])
                seconds[variant.name].append(time.perf_counter() - start)
    return seconds


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency_requests(
    data: dict[str, trec_dl.YearData], repeats: int
) -> list[tuple[str, list[dict]]]:
    """``repeats`` requests: each judged query with its first 10 BM25 passages, in turn."""
    queries = [q for year in trec_dl.YEARS for q in data[year].queries]
    requests = [(q.text, [hit_source(h) for h in q.hits[:SOURCES_PER_REQUEST]]) for q in queries]
    return [requests[i % len(requests)] for i in range(repeats)]


def throughput_calls(
    data: dict[str, trec_dl.YearData], n_queries: int, batch_size: int
) -> list[tuple[str, list[dict]]]:
    """Calls of ``batch_size`` pairs: the first queries' passages, in whole batches."""
    queries = [q for year in trec_dl.YEARS for q in data[year].queries][:n_queries]
    calls = []
    for q in queries:
        n = max(batch_size, len(q.hits) // batch_size * batch_size)
        sources = [hit_source(h) for h in q.hits[:n]]
        calls += [(q.text, sources[i : i + batch_size]) for i in range(0, len(sources), batch_size)]
    return calls


def quality(variant: Variant, data: dict[str, trec_dl.YearData]) -> dict[str, dict[str, float]]:
    out = {}
    for year in trec_dl.YEARS:
        say(f"[{variant.name}] scoring {trec_dl.YEAR_TITLES[year]}")
        _, evaluation = trec_dl.score_year(variant.scorer, data[year])
        out[year] = {
            "n_queries": evaluation.n_queries,
            **{metric: evaluation.mean[metric] for metric in trec_dl.METRICS},
        }
    return out


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Differences to the baseline, the quality bound, speed-ups and the fastest variant."""
    base = next(r for r in results if r["name"] == BASELINE)
    for result in results:
        if result["status"] != "ok":
            continue
        diffs = {
            year: result["quality"][year]["ndcg@10"] - base["quality"][year]["ndcg@10"]
            for year in trec_dl.YEARS
        }
        result["ndcg@10_diff"] = diffs
        result["within_bound"] = all(abs(d) <= QUALITY_BOUND + 1e-12 for d in diffs.values())
        result["speedup_p50"] = base["latency_ms"]["p50"] / result["latency_ms"]["p50"]
    eligible = [r for r in results if r["status"] == "ok" and r["within_bound"]]
    fastest = min(eligible, key=lambda r: r["latency_ms"]["p50"])
    return {
        "baseline": BASELINE,
        "quality_bound": QUALITY_BOUND,
        "speedup_target": SPEEDUP_TARGET,
        "fastest_within_bound": fastest["name"],
        "speedup_p50": fastest["speedup_p50"],
        "meets_target": fastest["speedup_p50"] >= SPEEDUP_TARGET,
    }


def markdown_table(results: list[dict[str, Any]], batch_size: int) -> str:
    header = [
        "variant",
        "p50 ms",
        "p95 ms",
        f"pairs/s (batches of {batch_size})",
        "DL19 NDCG@10",
        "DL20 NDCG@10",
        "Δ DL19",
        "Δ DL20",
        f"within {QUALITY_BOUND}",
        "p50 speed-up",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in results:
        label = f"`{r['name']}`: {r['description']}"
        if r["status"] != "ok":
            lines.append("| " + " | ".join([label] + ["n/a"] * (len(header) - 1)) + " |")
            continue
        diffs = r["ndcg@10_diff"]
        cells = [
            label,
            f"{r['latency_ms']['p50']:.1f}",
            f"{r['latency_ms']['p95']:.1f}",
            f"{r['pairs_per_s']:.0f}",
            f"{r['quality']['dl19']['ndcg@10']:.4f}",
            f"{r['quality']['dl20']['ndcg@10']:.4f}",
            f"{diffs['dl19']:+.4f}",
            f"{diffs['dl20']:+.4f}",
            "yes" if r["within_bound"] else "**no**",
            f"{r['speedup_p50']:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        help="an exported reranker folder (default: export the untouched packaged MiniLM "
        "bi-encoder to a temporary folder)",
    )
    parser.add_argument(
        "--trec-dl-dir",
        type=Path,
        default=trec_dl.DEFAULT_DATA_DIR,
        help=f"TREC DL passage data (default: {trec_dl.DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of torch and onnxruntime alike (default: torch's default)",
    )
    parser.add_argument("--repeats", type=int, default=200, help="timed requests per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per variant first")
    parser.add_argument(
        "--rounds", type=int, default=5, help="blocks the timed calls are split into, per variant"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per throughput call")
    parser.add_argument(
        "--throughput-queries", type=int, default=8, help="queries whose passages are batched"
    )
    parser.add_argument(
        "--max-queries",
        type=int,
        default=None,
        help="only the first N judged queries of each year (a quick run, not the figures)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {', '.join(VARIANTS)} ({BASELINE} is always run)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    for name in ("repeats", "rounds", "batch_size", "throughput_queries"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or (args.max_queries is not None and args.max_queries <= 0):
        parser.error("--warmup must be >= 0 and --max-queries positive")
    if args.threads is not None and args.threads <= 0:
        parser.error("--threads must be positive")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.variants = [BASELINE] + [n for n in VARIANTS if n in names and n != BASELINE]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        data_dir = trec_dl.resolve_data_dir(args.trec_dl_dir)
        data = {y: trec_dl.load_year(data_dir, y, args.max_queries) for y in trec_dl.YEARS}
    except trec_dl.DataError as error:
        say(f"error: {error}")
        return 2
    for year, year_data in data.items():
        for problem in year_data.problems:
            say(f"warning: {trec_dl.YEAR_TITLES[year]}: {problem}")

    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    machine = cpu_capability()  # (after set_num_threads: its threads are both libraries')
    cpu_line = f"CPU: {describe_cpu(machine)} (torch and onnxruntime)"
    say(cpu_line)

    with tempfile.TemporaryDirectory(prefix="latency-") as workdir:
        folder = args.export or default_export(Path(workdir))
        try:
            folder = with_onnx_files(Path(folder), Path(workdir))
        except (FileNotFoundError, ValueError) as error:
            say(f"error: {error}")
            return 2
        metadata = read_metadata(folder)
        quantization = metadata["onnx"]["quantization"]
        say(
            f"int8 file: {quantization['file']}, {quantization['config']} configuration "
            f"({quantization['weights']} weights): chosen for portability, not for this CPU"
        )
        variants = []
        for name in args.variants:
            say(f"[{name}] loading")
            if name.startswith("st"):
                variants.append(
                    sentence_transformers_variant(name, folder, metadata, threads, args.batch_size)
                )
            else:
                variants.append(loader_variant(name, folder, threads, args.batch_size))
        ready = [v for v in variants if v.status == "ok"]

        requests = latency_requests(data, args.repeats)
        say(f"latency: {args.repeats} requests of {SOURCES_PER_REQUEST} sources per variant")
        latency = take_turns(ready, requests, "request", args.warmup, args.rounds)
        calls = throughput_calls(data, args.throughput_queries, args.batch_size)
        n_pairs = sum(len(sources) for _, sources in calls)
        say(f"throughput: {n_pairs} pairs in calls of {args.batch_size} per variant")
        throughput = take_turns(ready, calls, "batch", min(args.warmup, 1), args.rounds)

        results = []
        for variant in variants:
            result: dict[str, Any] = {
                "name": variant.name,
                "description": variant.description,
                "status": variant.status,
                **variant.info,
            }
            if variant.status != "ok":
                result["reason"] = variant.reason
                results.append(result)
                continue
            ms = [1000 * s for s in latency[variant.name]]
            result["latency_ms"] = {
                "p50": percentile(ms, 50),
                "p95": percentile(ms, 95),
                "mean": statistics.fmean(ms),
                "n": len(ms),
            }
            result["pairs_per_s"] = n_pairs / sum(throughput[variant.name])
            result["quality"] = quality(variant, data)
            results.append(result)
        export_description = {"path": str(args.export or "packaged all-MiniLM-L6-v2, untouched")}

    summary = summarise(results)
    complete = args.max_queries is None
    print(cpu_line)
    print()
    print(markdown_table(results, args.batch_size))
    print()
    sizes = ", ".join(f"{trec_dl.YEAR_TITLES[y]}: {len(data[y].qrels)}" for y in trec_dl.YEARS)
    print(
        f"Latency: one request = one query and {SOURCES_PER_REQUEST} sources, p50/p95 of "
        f"{args.repeats} after {args.warmup} warm-up. NDCG@10: TREC DL BM25 top-100 re-ranked "
        f"({sizes} judged queries), test only. Baseline: `{BASELINE}`; bound: |Δ NDCG@10| <= "
        f"{QUALITY_BOUND} on both years."
    )
    best = next(r for r in results if r["name"] == summary["fastest_within_bound"])
    print(
        f"Fastest within the bound: `{best['name']}`, {summary['speedup_p50']:.2f}x the "
        f"baseline's p50 ({'meets' if summary['meets_target'] else 'misses'} the "
        f"{SPEEDUP_TARGET:g}x target). {cpu_line}."
    )
    if not complete:
        print(f"Quick run: only the first {args.max_queries} judged queries of each year.")

    if args.output is not None:
        report = {
            "benchmark": "reranker CPU latency and quality by backend (benchmarks/latency.py)",
            "complete": complete,
            "export": {**export_description, "metadata": metadata},
            "machine": machine,
            "versions": versions(),
            "onnxruntime_provider": ONNX_PROVIDER,
            "settings": {
                "threads": threads,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "settle_s": SETTLE_S,
                "sources_per_request": SOURCES_PER_REQUEST,
                "batch_size": args.batch_size,
                "throughput_pairs": n_pairs,
                "max_queries": args.max_queries,
                "trec_dl_dir": str(data_dir.resolve()),
                "judged_queries": {y: len(data[y].qrels) for y in trec_dl.YEARS},
            },
            "summary": summary,
            "variants": results,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
