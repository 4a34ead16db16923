"""How the data path scales: parse + validate + split + first batch of a large feedback log.

Writes a synthetic log in the app's format (JSON Lines, ``--records`` of them, 10 sources each
with realistic title/snippet lengths, 3 picks, a timestamp), then times, in a fresh child
process so that peak memory is the data path's own:

1. ``RerankerDataModule.setup("fit")``: read, validate, de-duplicate and split every record
   (logs of 64 MiB or more by one process per core, each a byte range of the file);
2. the first training batch (tokenised with the packaged MiniLM tokenizer);
3. ``--epochs`` full passes over the training loader *without* a model, to see whether memory
   grows with the number of epochs.

It prints wall time per phase and the peak resident memory (``ru_maxrss``) after each, and that
of the largest reading process.
Targets (issue): 1 million records under 60 s and 4 GiB. The log is written once per size
under ``--work-dir`` and reused.

    python benchmarks/data_scale.py --records 1000000
    python benchmarks/data_scale.py --records 100000 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WORDS = (
    "cost sales price profit goods company revenue margin tax apple banana fruit river city "
    "capital france paris music band film actor war causes history president vote law court "
    "car engine speed animal food night moon light page site news article information data"
).split()


def write_log(path: Path, records: int, seed: int = 0) -> Path:
    """``records`` app-format records, one JSON object a line (about 3 KB each)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for i in range(records):
            query = " ".join(rng.choices(WORDS, k=rng.randint(3, 8))) + f" {i}"
            sources = [
                {
                    "title": " ".join(rng.choices(WORDS, k=rng.randint(4, 10))),
                    "url": f"https://example.org/{i}/{j}",
                    "snippet": " ".join(rng.choices(WORDS, k=rng.randint(25, 45))),
                }
                for j in range(10)
            ]
            picks = [s["url"] for s in rng.sample(sources, 3)]
            record = {
                "query": query,
                "all_sources": sources,
                "positive_sources": picks,
                "negative_sources": [s["url"] for s in sources if s["url"] not in picks],
                "timestamp": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00",
            }
            handle.write(json.dumps(record) + "\n")
    tmp.replace(path)
    return path


def peak_gib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # KiB on Linux


def load_in_memory(data, log: Path) -> None:
    """The baseline: every record parsed and held as Python objects (``load_reranker_feedback``,
    the path the data module took before :class:`~datamodules.feedback_table.FeedbackTable`)."""
    from datamodules.feedback import record_time
    from datamodules.reranker_records import load_reranker_feedback
    from datamodules.split import split_train_validation

    records, _ = load_reranker_feedback([str(log)], deduplicate=True)
    train, data.val_records = split_train_validation(
        records, mode="hash", validation_fraction=0.2, key=lambda r: r.query, time_of=record_time
    )
    data.train_records = [r for r in train if r.has_contrast]


def measure(log: Path, epochs: int, batch_size: int, path: str = "table") -> dict:
    """Runs in the child process; ``path`` is ``table`` (the data module) or ``in-memory``."""
    from transformers import AutoTokenizer

    from datamodules.reranker import RerankerDataModule
    from lightning_modules.backbones import embedded_minilm_path
    from lightning_modules.encoding import BiEncoderInputs

    figures: dict = {"path": path, "records": sum(1 for _ in open(log, "rb"))}
    figures["cores"] = os.cpu_count()
    figures["baseline_gib"] = round(peak_gib(), 2)  # (rounded as the other peaks are)
    tokenizer = AutoTokenizer.from_pretrained(embedded_minilm_path())
    data = RerankerDataModule(train_files=[str(log)], batch_size=batch_size)
    data.input_encoder = BiEncoderInputs(tokenizer, max_length=256, max_query_length=64)
    started = time.perf_counter()
    if path == "in-memory":
        load_in_memory(data, log)
    else:
        data.setup("fit")
    figures["setup_seconds"] = round(time.perf_counter() - started, 2)
    figures["setup_peak_gib"] = round(peak_gib(), 2)
    # The processes that read large logs in parallel (datamodules.feedback_table): the
    # largest one's peak. Forked from this process, they share its pages until they write.
    figures["index_workers"] = data.index_workers or "one per core"
    figures["index_worker_peak_gib"] = round(peak_gib(resource.RUSAGE_CHILDREN), 2)
    loader = data.train_dataloader()
    first = time.perf_counter()
    next(iter(loader))
    figures["first_batch_seconds"] = round(time.perf_counter() - first, 2)
    figures["to_first_batch_seconds"] = round(time.perf_counter() - started, 2)
    figures["first_batch_peak_gib"] = round(peak_gib(), 2)
    figures["train_lists"] = len(data.train_records)
    figures["val_lists"] = len(data.val_records)
    figures["epochs"] = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for _ in loader:
            pass
        figures["epochs"].append(
            {
                "epoch": epoch,
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_gib": round(peak_gib(), 2),
            }
        )
    return figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=0, help="loader passes after the first batch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work-dir", type=Path, default=Path("logs/data_scale"))
    parser.add_argument("--output-json", type=Path, default=None)
    parser.add_argument(
        "--baseline",
        choices=["in-memory", "none"],
        default="in-memory",
        help="also measure the in-memory load on the same log (about 14 GiB at 1M records)",
    )
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="table", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:  # the measured process
        print(json.dumps(measure(args.child, args.epochs, args.batch_size, args.path)))
        return 0
    log = args.work_dir / f"feedback_{args.records}.jsonl"
    if not log.exists():
        t0 = time.perf_counter()
        write_log(log, args.records)
        size = log.stat().st_size / 2**30
        print(f"wrote {log} ({size:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    paths = ["table"] + ([args.baseline] if args.baseline != "none" else [])
    results = {}
    for path in paths:
        command = [sys.executable, __file__, "--child", str(log), "--path", path]
        command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        figures["log_gib"] = round(log.stat().st_size / 2**30, 2)
        print(json.dumps(figures, indent=2))
        results[path] = figures
    print(f"\n{args.records:,} records ({results['table']['log_gib']} GiB of JSON Lines):")
    print("| path | to first batch | peak memory |\n|---|---:|---:|")
    for path, figures in results.items():
        workers = f" (+ {figures['index_worker_peak_gib']} GiB per reading process)"
        print(
            f"| {path} | {figures['to_first_batch_seconds']} s | "
            f"{figures['first_batch_peak_gib']} GiB{workers if path == 'table' else ''} |"
        )
    if "in-memory" in results:
        table, baseline = results["table"], results["in-memory"]
        speed = baseline["to_first_batch_seconds"] / max(table["to_first_batch_seconds"], 0.01)
        memory = baseline["first_batch_peak_gib"] / table["first_batch_peak_gib"]
        print(f"table vs in-memory: {speed:.1f}x faster, {memory:.1f}x less memory")
        results["speedup"], results["memory_ratio"] = round(speed, 2), round(memory, 2)
    print("targets for 1M records: under 60 s and 4 GiB, flat over epochs")
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run())
