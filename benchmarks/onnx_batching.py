"""How the app-side ONNX loader cuts a request into batches: p50/p95 latency of one request for
each call cost the batch planner could assume, against padding the whole request as one batch
(sentence-transformers' way, the baseline), in one run, interleaved.

The planner (:func:`lightning_modules.inference.plan_batches`) sorts a request's texts by token
length and cuts them into batches that minimise the padded tokens computed plus a fixed cost per
onnxruntime call. This script chooses that cost on **training data** (the app-format requests of
``training_data/``: each record's query with the sources it showed), never on a test set, and
prints the CPU it ran on next to every figure::

    python benchmarks/onnx_batching.py --export logs/reranker/version_0/export
    python benchmarks/onnx_batching.py --export EXPORT --backend onnx-int8 --requests 60
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lightning_modules import inference  # noqa: E402
from lightning_modules.hardware import describe_cpu  # noqa: E402

DEFAULT_REQUESTS = REPO_ROOT / "training_data" / "msmarco_sample_feedback.json"
WHOLE = "whole request, one batch (baseline)"


def requests(path: Path, limit: int) -> list[tuple[str, list[dict]]]:
    records = json.loads(path.read_text())["reranker_data"]
    return [(r["query"], r["all_sources"]) for r in records[:limit]]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--export", default=None, help="an export (default: untouched MiniLM)")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "onnx-int8"))
    parser.add_argument("--requests-file", default=str(DEFAULT_REQUESTS))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the requests")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--call-costs", type=float, nargs="+", default=[0, 16, 64, 256])
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    if args.output_json and Path(args.output_json).exists():
        parser.error(f"{args.output_json} exists; choose a new --output-json")
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import latency

    workdir = Path(tempfile.mkdtemp(prefix="onnx_batching_"))
    folder = Path(args.export) if args.export else latency.default_export(workdir)
    folder = latency.with_onnx_files(folder, workdir)
    reranker = inference.ExportedReranker.load(folder, args.backend, threads=args.threads)
    cpu = describe_cpu()
    print(f"CPU: {cpu}; {reranker.description}", flush=True)
    batch = requests(Path(args.requests_file), args.requests)
    planners = {WHOLE: lambda lengths, max_rows: [sorted(range(len(lengths)))]}
    for cost in args.call_costs:
        planners[f"call cost {cost:g} tokens"] = functools.partial(
            inference.plan_batches, call_cost=cost
        )
    timings: dict[str, list[float]] = {name: [] for name in planners}
    scores: dict[str, list] = {name: [] for name in planners}
    original = inference.plan_batches
    try:
        for name, planner in planners.items():  # warm-up, and the scores each planner gives
            inference.plan_batches = planner
            scores[name] = [reranker.score_sources(q, s) for q, s in batch]
        for _ in range(args.rounds):
            for query, sources in batch:
                for name, planner in planners.items():  # interleaved: drift hits all alike
                    inference.plan_batches = planner
                    started = time.perf_counter()
                    reranker.score_sources(query, sources)
                    timings[name].append((time.perf_counter() - started) * 1000)
    finally:
        inference.plan_batches = original
    base = statistics.median(timings[WHOLE])
    rows = []
    for name, values in timings.items():
        deviation = max(
            float(abs(a - b).max()) for a, b in zip(scores[name], scores[WHOLE], strict=True)
        )
        rows.append(
            {
                "planner": name,
                "p50_ms": round(statistics.median(values), 2),
                "p95_ms": round(percentile(values, 95), 2),
                "speedup_p50": round(base / statistics.median(values), 3),
                "max_abs_score_diff_vs_baseline": deviation,
            }
        )
        print(
            f"{name:40s} p50 {rows[-1]['p50_ms']:7.2f} ms  p95 {rows[-1]['p95_ms']:7.2f} ms  "
            f"x{rows[-1]['speedup_p50']:.3f}  max |score diff| {deviation:.1e}  [{cpu}]",
            flush=True,
        )
    result = {
        "cpu": cpu,
        "loader": reranker.description,
        "requests": len(batch),
        "rounds": args.rounds,
        "requests_file": str(args.requests_file),
        "rows": rows,
    }
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
