"""Replay a feedback log through the continuous-learning loop and watch what gets deployed.

The log is ordered by time (``timestamp``; records without one keep the order they were
appended to the log, which for an app's log is the order they arrived) and cut into K chunks.
After chunk k arrives:

1. **re-fine-tune**: ``main.py fit`` on everything seen so far (chunks 1..k), starting from the
   last promoted model (``init_from``), or from the base model before any promotion, with the
   time split: the newest share of what was seen validates;
2. **gate**: ``main.py promote`` compares that candidate with the deployed model on the same
   validation slice and deploys it only if it is better;
3. **face the future**: the deployed model, the untouched base model and the app's display
   order are scored (``main.py validate``) on chunk k+1, which nothing has seen yet.

It prints NDCG@10 / MRR@10 per step, writes them as JSON and plots NDCG@10 over time. All runs,
exports and the deployment live under ``--work-dir``; the input files are only read.

Usage::

    python benchmarks/replay.py                        # the shipped TREC Session 2013 click log
    python benchmarks/replay.py --feedback my_logs/ --chunks 6 --max-epochs 2
    python benchmarks/replay.py --config my.yaml --set model.init_args.learning_rate=1e-5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO_ROOT))

import main  # noqa: E402
from datamodules.feedback import ParseReport, parse_timestamp  # noqa: E402
from datamodules.feedback_files import discover_feedback_files, iter_raw_records  # noqa: E402

DEFAULT_FEEDBACK = [str(REPO_ROOT / "training_data" / "trec_session2013_feedback.json")]
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "reranker.yaml")
TOP_KEY = "reranker_data"


def ordered_records(files: Sequence[str]) -> tuple[list[dict], str]:
    """Every raw record of the log, oldest first, and how the order was decided."""
    records: list[dict] = []
    report = ParseReport()
    for path in discover_feedback_files(files):
        records += [raw for _, raw in iter_raw_records(path, TOP_KEY, report, "error")]
    stamps = [r.get("timestamp") if isinstance(r, dict) else None for r in records]
    if records and all(stamps):
        times = [parse_timestamp(t, file="replay", index=i) for i, t in enumerate(stamps)]
        order = sorted(range(len(records)), key=lambda i: times[i])  # stable: ties keep log order
        return [records[i] for i in order], "timestamp"
    return records, "log order (records without timestamps)"


def write_chunks(records: list[dict], n_chunks: int, folder: Path) -> list[Path]:
    """K JSON Lines files of consecutive records. Records without a timestamp get one from
    their position (one minute apart) so that the time split can order them; the copies are
    the replay's own, the user's files are not touched."""
    if n_chunks < 2 or len(records) < n_chunks:
        raise ValueError(
            f"need at least 2 chunks and one record per chunk ({len(records)} records)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    size, extra = divmod(len(records), n_chunks)
    paths, start = [], 0
    for k in range(n_chunks):
        end = start + size + (1 if k < extra else 0)
        path = folder / f"chunk{k + 1:02d}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(start, end):
                record = dict(records[i])
                if not record.get("timestamp"):
                    record["timestamp"] = _order_time(i)
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths.append(path)
        start = end
    return paths


def _order_time(position: int) -> str:
    """A stand-in time that only encodes the order: one minute per record from 2000-01-01."""
    moment = datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=position)
    return moment.isoformat()


def run_cli(args: list[str]) -> Any:
    return main.main([str(a) for a in args])


def common_args(args: argparse.Namespace, work_dir: Path, name: str) -> list[str]:
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(work_dir / "logs"), "name": name},
        }
    ]
    if args.wandb:
        loggers.append(
            {
                "class_path": "lightning_modules.loggers.FeedbackWandbLogger",
                "init_args": {"save_dir": str(work_dir / "logs"), "group": "replay"},
            }
        )
    out = [
        "--config",
        args.config,
        f"--trainer.logger={json.dumps(loggers)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    if args.precision:
        out.append(f"--trainer.precision={args.precision}")
    for setting in args.set:
        key, _, value = setting.partition("=")
        out.append(f"--{key}={value}")
    return out


def evaluate(
    args: argparse.Namespace, work_dir: Path, chunk: Path, name: str, init_from: Path | None
) -> dict[str, float]:
    """NDCG@10 / MRR@10 of a model and of the display order on one unseen chunk."""
    cli_args = [
        "validate",
        *common_args(args, work_dir, name),
        "--data.init_args.train_files=[]",
        f"--data.init_args.val_files={json.dumps([str(chunk)])}",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
    ]
    if init_from is not None:
        cli_args.append(f"--model.init_args.init_from={init_from}")
    metrics = run_cli(cli_args).trainer.callback_metrics
    return {
        key: float(metrics[f"val/{key}"])
        for key in ("ndcg@10", "mrr@10", "display/ndcg@10", "display/mrr@10")
    }


def replay(args: argparse.Namespace) -> dict[str, Any]:
    work_dir = Path(args.work_dir)
    if work_dir.exists():
        if not args.overwrite:
            raise FileExistsError(f"{work_dir} exists; pass --overwrite to start the replay afresh")
        shutil.rmtree(work_dir)
    records, order = ordered_records(args.feedback)
    chunks = write_chunks(records, args.chunks, work_dir / "chunks")
    deployment = work_dir / "deployment"
    steps = []
    started = time.perf_counter()
    for k in range(len(chunks) - 1):
        t0 = time.perf_counter()
        seen = [str(c) for c in chunks[: k + 1]]
        data = [
            f"--data.init_args.train_files={json.dumps(seen)}",
            "--data.init_args.split=time",
            f"--data.init_args.validation_fraction={args.validation_fraction}",
        ]
        deployed = deployment if deployment.exists() else None
        fit_args = ["fit", *common_args(args, work_dir, f"step{k + 1}"), *data]
        fit_args.append(f"--trainer.max_epochs={args.max_epochs}")
        if deployed is not None:
            fit_args.append(f"--model.init_args.init_from={deployment}")
        fit = run_cli(fit_args)
        candidate = Path(fit.trainer.log_dir) / "export"
        report_dir = work_dir / "reports" / f"step{k + 1}"
        run_cli(
            [
                "promote",
                *common_args(args, work_dir, f"gate{k + 1}"),
                *data,
                "--candidate",
                candidate,
                "--deployment",
                deployment,
                "--report_dir",
                report_dir,
                "--margin",
                args.margin,
            ]
        )
        gate = json.loads((report_dir / "promotion_report.json").read_text())
        future = chunks[k + 1]
        deployed_now = deployment if deployment.exists() else None
        promoted_scores = evaluate(args, work_dir, future, f"eval{k + 1}_deployed", deployed_now)
        base_scores = evaluate(args, work_dir, future, f"eval{k + 1}_base", None)
        step = {
            "step": k + 1,
            "seen_records": sum(len(c.read_text().splitlines()) for c in chunks[: k + 1]),
            "evaluated_on": future.name,
            "promoted": gate["promoted"],
            "gate_reason": gate["reason"],
            "deployed_is_base": deployed_now is None,
            "deployed": {
                "ndcg@10": promoted_scores["ndcg@10"],
                "mrr@10": promoted_scores["mrr@10"],
            },
            "base": {"ndcg@10": base_scores["ndcg@10"], "mrr@10": base_scores["mrr@10"]},
            "display": {
                "ndcg@10": base_scores["display/ndcg@10"],
                "mrr@10": base_scores["display/mrr@10"],
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        steps.append(step)
        print(
            f"step {k + 1}: {'promoted' if step['promoted'] else 'kept deployed'}; on "
            f"{future.name}: NDCG@10 deployed {step['deployed']['ndcg@10']:.4f}, base "
            f"{step['base']['ndcg@10']:.4f}, display {step['display']['ndcg@10']:.4f} "
            f"({step['seconds']:.0f} s)",
            flush=True,
        )
    return {
        "feedback": [str(f) for f in args.feedback],
        "order": order,
        "records": len(records),
        "chunks": args.chunks,
        "config": args.config,
        "overrides": args.set,
        "max_epochs": args.max_epochs,
        "margin": args.margin,
        "steps": steps,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    x = [s["step"] + 1 for s in steps]  # the chunk each point was measured on
    fig, axis = plt.subplots(figsize=(7, 4))
    for key, label, style in (
        ("deployed", "deployed (promoted by the gate)", "o-"),
        ("base", "untouched base model", "s--"),
        ("display", "display order", "^:"),
    ):
        axis.plot(x, [s[key]["ndcg@10"] for s in steps], style, label=label)
    for s, xi in zip(steps, x, strict=True):
        if s["promoted"]:
            axis.annotate(
                "promoted",
                (xi, s["deployed"]["ndcg@10"]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
            )
    axis.set_xticks(x)
    axis.set_xlabel("chunk (unseen when scored; models trained on all earlier chunks)")
    axis.set_ylabel("NDCG@10")
    axis.set_title(f"Replay of {result['records']} records in {result['chunks']} chunks")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--feedback", nargs="+", default=DEFAULT_FEEDBACK, help="the log: files, folders, globs"
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the reranker job's config")
    parser.add_argument(
        "--chunks", type=int, default=4, help="K: how many pieces the log arrives in"
    )
    parser.add_argument("--max-epochs", type=int, default=2, help="epochs of each re-fine-tuning")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="newest share of the seen feedback the gate judges on",
    )
    parser.add_argument(
        "--margin", type=float, default=0.0, help="least NDCG@10 gain that promotes"
    )
    parser.add_argument(
        "--precision", default=None, help="trainer precision (the config's by default)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config override, e.g. model.init_args.learning_rate=1e-5",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log every run to W&B (group 'replay')"
    )
    parser.add_argument("--work-dir", default="logs/replay", help="runs, exports, the deployment")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier --work-dir")
    parser.add_argument("--output-json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--plot", type=Path, default=None, help="write the NDCG@10 plot here (PNG)")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = replay(args)
    print(json.dumps(result["steps"], indent=2))
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
