"""GPU readiness check: a short bf16 fit and inference of both models on one GPU, with
throughput and peak memory. Prepared to run as is on a machine with a CUDA GPU:

    python benchmarks/gpu_check.py                       # the default configs, 60 steps each
    python benchmarks/gpu_check.py --steps 200 --batch-size 32 --output-json gpu.json
    python benchmarks/gpu_check.py --backbone /models/all-MiniLM-L6-v2 --skip-rewriter

What it runs (each through ``main.py``, as a user would, with CSV logging only):

1. reranker ``fit`` of ``configs/reranker.yaml`` for ``--steps`` optimizer steps on the shipped
   feedback (bf16 autocast, one GPU), then its validation;
2. reranker inference: ``predict`` over the shipped feedback with the fitted weights;
3. rewriter ``fit`` of ``configs/query_rewriting_offline.yaml`` for ``--steps`` steps.

It prints, per phase, wall time, (query, source) pairs or rewrite pairs per second measured
from the first batch after warm-up to the last (CUDA-synchronised), and
``torch.cuda.max_memory_allocated``. Exit status 2 without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402

import main  # noqa: E402

WARMUP_BATCHES = 3


class PairThroughput(L.Callback):
    """Counts the pairs of every training / prediction batch and times them (CUDA-synced),
    leaving the first ``warmup`` batches out of the rate (kernel selection, allocator)."""

    def __init__(self, warmup: int = WARMUP_BATCHES) -> None:
        self.warmup = warmup
        self.reset()

    def reset(self) -> None:
        self.batches = 0
        self.pairs = 0
        self.started: float | None = None
        self.elapsed = 0.0

    @staticmethod
    def _pairs(batch: Any) -> int:
        if hasattr(batch, "mask"):  # reranker: real (query, source) pairs
            return int(batch.mask.sum())
        return len(batch)  # rewriter: question -> rewrite pairs

    def _end(self, batch: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.batches += 1
        if self.batches == self.warmup:
            self.started = time.perf_counter()
        elif self.batches > self.warmup:
            self.pairs += self._pairs(batch)
            self.elapsed = time.perf_counter() - (self.started or time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end(batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self._end(batch)

    @property
    def rate(self) -> float:
        return self.pairs / self.elapsed if self.elapsed > 0 else float("nan")


def run_phase(name: str, args: list[str], warmup: int = WARMUP_BATCHES) -> dict[str, Any]:
    """Runs ``main.py`` with ``args`` and a :class:`PairThroughput` meter; its figures."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    meter_spec = {
        "class_path": "benchmarks.gpu_check.PairThroughput",
        "init_args": {"warmup": warmup},
    }
    cli = main.main([*args, f"--trainer.callbacks+={json.dumps(meter_spec)}"])
    wall = time.perf_counter() - started
    # By name: run as a script, this module is __main__ and the command line instantiated the
    # class of `benchmarks.gpu_check`, a second copy.
    meter = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PairThroughput")
    result = {
        "phase": name,
        "wall_seconds": round(wall, 1),
        "batches_timed": max(meter.batches - meter.warmup, 0),
        "pairs": meter.pairs,
        "pairs_per_second": round(meter.rate, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "metrics": {
            k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items() if "/" in k
        },
    }
    print(json.dumps(result), flush=True)
    return result


def common(output: Path, name: str, precision: str, accelerator: str) -> list[str]:
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(output), "name": name},
        }
    ]
    return [
        f"--trainer.logger={json.dumps(loggers)}",
        f"--trainer.accelerator={accelerator}",
        "--trainer.devices=1",
        f"--trainer.precision={precision}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per fit")
    parser.add_argument("--batch-size", type=int, default=16, help="queries (pairs) per batch")
    parser.add_argument(
        "--precision",
        default="auto",
        help="trainer precision (auto: what the hardware runs natively)",
    )
    parser.add_argument("--backbone", default=None, help="reranker/rewriter backbone folder")
    parser.add_argument(
        "--limit-eval-batches", type=int, default=None, help="cap validation/predict batches"
    )
    parser.add_argument("--max-length", type=int, default=None, help="reranker token budget")
    parser.add_argument("--skip-rewriter", action="store_true")
    parser.add_argument(
        "--accelerator", default="gpu", help="'cpu' only to try the script itself (CI does)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("logs/gpu_check"))
    parser.add_argument("--output-json", type=Path, default=None)
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.output_dir = args.output_dir.resolve()
    args.output_json = args.output_json.resolve() if args.output_json else None
    os.chdir(REPO_ROOT)  # the configs name their data relative to the repository
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print("No CUDA GPU visible: nothing to check.")
        return 2
    on_gpu = args.accelerator == "gpu"
    device = torch.cuda.get_device_properties(0) if on_gpu else None
    header = {
        "gpu": device.name if device else platform.processor() or "cpu",
        "memory_gib": round(device.total_memory / 2**30, 1) if device else None,
        "capability": f"{device.major}.{device.minor}" if device else None,
        "bf16": torch.cuda.is_bf16_supported() if device else None,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(header), flush=True)
    backbone = [f"--model.init_args.model_name_or_path={args.backbone}"] if args.backbone else []
    if args.limit_eval_batches is not None:
        backbone += [
            f"--trainer.limit_val_batches={args.limit_eval_batches}",
            f"--trainer.limit_predict_batches={args.limit_eval_batches}",
        ]
    reranker = [
        "--config",
        str(REPO_ROOT / "configs" / "reranker.yaml"),
        *backbone,
        f"--data.init_args.batch_size={args.batch_size}",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
    ]
    if args.max_length:
        reranker.append(f"--model.init_args.max_length={args.max_length}")
    results = [
        run_phase(
            "reranker fit",
            [
                "fit",
                *reranker,
                *common(args.output_dir, "reranker", args.precision, args.accelerator),
                f"--trainer.max_steps={args.steps}",
                "--trainer.max_epochs=-1",
            ],
        )
    ]
    # (the fit keeps no checkpoint: inference runs on the base weights, at the same cost)
    data = json.dumps(
        [str(p) for p in sorted((REPO_ROOT / "training_data").glob("*feedback.json"))]
    )
    results.append(
        run_phase(
            "reranker predict",
            [
                "predict",
                *reranker,
                *common(args.output_dir, "reranker_predict", args.precision, args.accelerator),
                f"--data.init_args.predict_files={data}",
                f"--data.init_args.eval_batch_size={args.batch_size * 4}",
            ],
        )
    )
    if not args.skip_rewriter:
        results.append(
            run_phase(
                "rewriter fit",
                [
                    "fit",
                    "--config",
                    str(REPO_ROOT / "configs" / "query_rewriting_offline.yaml"),
                    *backbone,
                    *common(args.output_dir, "rewriter", args.precision, args.accelerator),
                    "--trainer.callbacks=[]",
                    "--trainer.enable_checkpointing=false",
                    f"--trainer.max_steps={args.steps}",
                    "--trainer.max_epochs=-1",
                ],
            )
        )
    print(f"\n{header['gpu']} ({header['memory_gib']} GiB), torch {header['torch']}")
    print("| phase | wall s | pairs/s | peak GiB |\n|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['phase']} | {r['wall_seconds']} | {r['pairs_per_second']} | "
            f"{r['peak_memory_gib']} |"
        )
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps({**header, "phases": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run())
