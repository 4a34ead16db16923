"""Reranker throughput against sentence-transformers, on one machine, in one invocation.

Both sides get the packaged all-MiniLM-L6-v2 with a fresh one-logit head, the shipped feedback
(``training_data/``), the same max length (256 tokens) and the same effective batch of
(query, source) pairs:

1. **training**: our ``main.py fit`` of the cross-encoder job (``configs/reranker.yaml`` with
   the ``configs/reranker_cross_encoder.yaml`` overlay; 8 queries a batch, up to 16 judged
   sources each, as configured) against sentence-transformers'
   ``CrossEncoderTrainer`` with ``BinaryCrossEntropyLoss`` over the pairs of the same training
   lists, its batch size set to the mean number of pairs in our batches;
2. **inference**: our ``main.py predict`` (whole lists) against ``CrossEncoder.predict`` on the
   pairs of the same records.

Rates are (query, source) pairs a second, measured after ``--warmup`` batches on each side
(ours: from the end of the last warm-up batch to the end of the last batch, data loading and
tokenisation included; theirs: the same over trainer steps, and one timed ``predict`` call after
an untimed one). **Both sides run at the same precision**: float32, and also bf16 where the CPU
runs it natively (AVX512_BF16 or AMX: ``lightning_modules.precision``); ``--precisions`` picks
others. Each ratio compares one precision on both sides. Both sides train with the attention
dropout of our config. The machine's CPU capability is printed with every figure, and so is how
close each side comes to the machine's limit: model FLOP/s achieved (from the backbone's
parameter count and the real tokens of the pairs processed) over the FLOP/s of a large matmul
timed in the same run, at the same precision.

Needs the benchmark extra (``pip install -e ".[benchmark]"``: ``datasets`` and ``accelerate``,
which ``CrossEncoderTrainer`` requires). A CPU run takes several minutes::

    python benchmarks/throughput.py
    python benchmarks/throughput.py --precisions 32-true --output-json throughput.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from benchmarks.gpu_check import run_phase  # noqa: E402
from datamodules.reranker import RerankerDataModule, RerankListDataset  # noqa: E402
from lightning_modules.backbones import embedded_minilm_path  # noqa: E402
from lightning_modules.hardware import (  # noqa: E402
    cpu_capability,
    cpu_has_native_bf16,
    describe_cpu,
)

# the cross-encoder job: the default job with its overlay stacked on it
CONFIGS = (
    REPO_ROOT / "configs" / "reranker.yaml",
    REPO_ROOT / "configs" / "reranker_cross_encoder.yaml",
)
REWRITER_CONFIGS = (REPO_ROOT / "configs" / "query_rewriting_offline.yaml",)


def job_config(task: str) -> dict[str, Any]:
    """The job as ``main.py`` resolves it (pieces and overlays applied); resolved once per
    task (a whole CLI parse each time otherwise), a fresh copy for every caller."""
    return copy.deepcopy(_resolved_job(task))


@functools.cache
def _resolved_job(task: str) -> dict[str, Any]:
    import main

    return main.resolved_config(*(CONFIGS if task == "reranker" else REWRITER_CONFIGS))


TRAIN_FILES = [
    str(REPO_ROOT / "training_data" / "msmarco_sample_feedback.json"),
    str(REPO_ROOT / "training_data" / "trec_session2013_feedback.json"),
]


def machine() -> dict[str, Any]:
    versions = {}
    for package in (
        "torch",
        "transformers",
        "lightning",
        "sentence-transformers",
        "datasets",
        "accelerate",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    capability = cpu_capability()
    return {
        "cpu": capability["cpu_model"],
        "cores": capability["logical_cpus"],
        "torch_threads": capability["threads"],
        "cpu_capability": describe_cpu(capability),
        "cpu_kernels": capability["kernels"],
        "cpu_flags": capability["flags"],
        "native_bf16": cpu_has_native_bf16(capability),
        "python": platform.python_version(),
        **versions,
    }


# -- the pairs both sides read --------------------------------------------------------------


def reranker_data(args: argparse.Namespace, predict: bool = False) -> RerankerDataModule:
    """Our data module as ``main.py`` builds it from the config (train lists, predict lists)."""
    init_args = job_config("reranker")["data"]["init_args"]
    data = RerankerDataModule(
        **{
            **init_args,
            "train_files": TRAIN_FILES,
            "predict_files": TRAIN_FILES if predict else None,
            "batch_size": args.batch_size,
        }
    )
    data.input_encoder = lambda queries, documents: {}  # (setup asks for one; unused here)
    data.setup("predict" if predict else "fit")
    return data


def training_pairs(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(query, document, grade) of every training list, sampled as our data module does."""
    data = reranker_data(args)
    lists = RerankListDataset(
        data.train_records,
        data.document_template,
        data.max_docs_per_query,
        sample=True,
        max_chars=data.max_text_chars,
        seed=args.seed,
    )
    pairs = []
    for index in range(len(lists)):
        item = lists[(index, 0)]
        pairs += [(item.query, d, g) for d, g in zip(item.documents, item.grades, strict=True)]
    return pairs


def prediction_pairs(args: argparse.Namespace, first: int, last: int) -> list[list[str]]:
    """The (query, document) pairs of records ``first`` to ``last`` of our predict order."""
    data = reranker_data(args, predict=True)
    lists = RerankListDataset(
        data.predict_records,
        data.document_template,
        None,
        sample=False,
        max_chars=data.max_text_chars,
    )
    items = [lists[i] for i in range(first, min(last, len(lists)))]
    return [[item.query, document] for item in items for document in item.documents]


# -- our side -------------------------------------------------------------------------------


def ours(
    command: str,
    precision: str,
    args: argparse.Namespace,
    output: Path,
    task: str = "reranker",
    lever: str | None = None,
) -> dict:
    """Our side, through ``main.py`` as a user runs it, timed by a PairThroughput callback;
    ``lever``: a boolean model option turned on (``torch_compile``, ``gradient_checkpointing``)."""
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(output), "name": f"ours_{task}_{command}"},
        }
    ]
    common = [
        command,
        *(
            a
            for f in (CONFIGS if task == "reranker" else REWRITER_CONFIGS)
            for a in ("--config", str(f))
        ),
        f"--trainer.logger={json.dumps(loggers)}",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.accelerator=cpu",
        f"--trainer.precision={precision}",
        f"--data.init_args.num_workers={args.num_workers}",
        f"--seed_everything={args.seed}",
        f"--model.init_args.model_name_or_path={args.backbone}",
    ]
    if task == "reranker":
        common += [
            f"--data.init_args.batch_size={args.batch_size}",
            f"--model.init_args.max_length={args.max_length}",
        ]
    if command == "fit":
        batches = args.train_batches
        common += [
            f"--trainer.max_steps={args.warmup + batches}",
            "--trainer.max_epochs=-1",
            "--trainer.limit_val_batches=0",
        ]
    else:
        batches = args.predict_batches
        common += [
            f"--data.init_args.predict_files={json.dumps(TRAIN_FILES)}",
            f"--trainer.limit_predict_batches={args.warmup + batches}",
        ]
    os.environ["WANDB_MODE"] = "disabled"
    if lever:
        common.append(f"--model.init_args.{lever}=true")
    label = precision + (f", {lever}" if lever else "")
    row = run_phase(f"ours {task} {command} ({label})", common, warmup=args.warmup)
    if row["batches_timed"] < batches:  # too little data for the batches asked for
        raise RuntimeError(f"{row['phase']}: only {row['batches_timed']} of {batches} batches")
    return row


# -- their side: Hugging Face trainers -------------------------------------------------------


def precision_name(bf16: bool) -> str:
    return "bf16" if bf16 else "float32"


def attention_dropout_kwargs() -> dict[str, float]:
    """Our config's attention dropout, for their model too (both sides train the same net)."""
    value = job_config("reranker")["model"]["init_args"].get("attention_dropout")
    return {} if value is None else {"attention_probs_dropout_prob": value}


# -- how close to the machine's limit --------------------------------------------------------


def matmul_flops(bf16: bool, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul on this CPU (bf16 under autocast, as our side runs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.no_grad()
    with context:
        a @ b
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        elapsed = time.perf_counter() - started
    return 2 * size**3 * repeats / elapsed


def encoder_shape(backbone: str) -> dict[str, float]:
    """Non-embedding parameters, layers and width of a BERT-like backbone."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(backbone)
    model = AutoModel.from_config(config)
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    total = sum(p.numel() for p in model.parameters())
    return {
        "non_embedding_params": total - embedding,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
    }


def tokens_per_pair(pairs: Sequence[Sequence[str]], backbone: str, max_length: int) -> float:
    """Mean real (unpadded) tokens of the (query, document) pairs, truncated to ``max_length``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    queries, documents = [p[0] for p in pairs], [p[1] for p in pairs]
    encoded = tokenizer(queries, documents, truncation=True, max_length=max_length)
    return sum(len(ids) for ids in encoded["input_ids"]) / max(len(pairs), 1)


def utilisation(row: dict, shape: dict, tokens: float, training: bool, peak: float) -> None:
    """Adds model FLOP/s (6N + 12 layers x width x length per token in training, a third of
    that in inference; Kaplan et al. 2020) and its share of the matmul peak to ``row``."""
    per_token = shape["non_embedding_params"] * 2 + 4 * shape["layers"] * shape["hidden"] * tokens
    per_token *= 3 if training else 1
    achieved = row["pairs_per_second"] * tokens * per_token
    row["model_gflops"] = round(achieved / 1e9, 1)
    row["share_of_matmul_peak"] = round(achieved / peak, 3)


def trainer_settings(args: argparse.Namespace, bf16: bool) -> dict[str, Any]:
    """What both Hugging Face trainers are told beyond model and schedule: CPU, the precision,
    full batches only, and no saving, logging, evaluation or progress bars to time."""
    return {
        "bf16": bf16,
        "use_cpu": True,
        "dataloader_drop_last": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": args.seed,
    }


class StepTimer(TrainerCallback):
    """Times a Hugging Face trainer's steps after ``warmup`` of them (as PairThroughput does
    for ours: from the end of the last warm-up step to the end of the last step)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps, self.started, self.elapsed = 0, 0.0, 0.0

    def on_step_end(self, train_args, state, control, **kwargs):
        self.steps += 1
        if self.steps == self.warmup:
            self.started = time.perf_counter()
        elif self.steps > self.warmup:
            self.elapsed = time.perf_counter() - self.started

    def train(self, trainer, phase: str, pairs_per_step: int) -> dict:
        """Runs ``trainer`` (which has this callback) and returns its figures."""
        started = time.perf_counter()
        trainer.train()
        timed = self.steps - self.warmup
        result = {
            "phase": phase,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "batches_timed": timed,
            "pairs_per_second": round(timed * pairs_per_step / self.elapsed, 1),
        }
        print(json.dumps(result), flush=True)
        return result


def theirs_fit(pairs, batch_size: int, bf16: bool, args: argparse.Namespace, output: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    torch.manual_seed(args.seed)
    model = CrossEncoder(
        args.backbone,
        num_labels=1,
        max_length=args.max_length,
        config_kwargs=attention_dropout_kwargs(),
    )
    dataset = Dataset.from_dict(
        {
            "query": [q for q, _, _ in pairs],
            "document": [d for _, d, _ in pairs],
            "label": [float(g > 0) for _, _, g in pairs],
        }
    )
    timer = StepTimer(args.warmup)
    steps = args.warmup + args.train_batches
    trainer = CrossEncoderTrainer(
        model=model,
        args=CrossEncoderTrainingArguments(
            output_dir=str(output / "theirs_fit"),
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=2e-5,
            weight_decay=0.01,
            warmup_ratio=0.1,
            **trainer_settings(args, bf16),
        ),
        train_dataset=dataset,
        loss=BinaryCrossEntropyLoss(model),
        callbacks=[timer],
    )
    return timer.train(trainer, f"sentence-transformers fit ({precision_name(bf16)})", batch_size)


def theirs_predict(warm: list, timed: list, bf16: bool, args: argparse.Namespace) -> dict:
    from sentence_transformers.cross_encoder import CrossEncoder

    torch.manual_seed(args.seed)
    model_kwargs = {"dtype": torch.bfloat16} if bf16 else {}
    model = CrossEncoder(
        args.backbone,
        num_labels=1,
        max_length=args.max_length,
        model_kwargs=model_kwargs,
        config_kwargs=attention_dropout_kwargs(),
    )
    model.predict(warm, batch_size=args.st_predict_batch_size, show_progress_bar=False)
    started = time.perf_counter()
    model.predict(timed, batch_size=args.st_predict_batch_size, show_progress_bar=False)
    elapsed = time.perf_counter() - started
    result = {
        "phase": f"sentence-transformers predict ({precision_name(bf16)})",
        "wall_seconds": round(elapsed, 1),
        "pairs_timed": len(timed),
        "pairs_per_second": round(len(timed) / elapsed, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def theirs_seq2seq_fit(bf16: bool, args: argparse.Namespace, output: Path) -> dict:
    """``Seq2SeqTrainer`` on our rewriter's model, pairs and batch size, tokenised as our
    collator does (so only the training loops differ)."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from datamodules.query_rewriting import QueryRewritingDataModule
    from lightning_modules.query_rewriter import QueryRewriter

    config = job_config("rewriter")
    torch.manual_seed(args.seed)
    module = QueryRewriter(**{**config["model"]["init_args"], "model_name_or_path": args.backbone})
    data_args = config["data"]["init_args"]
    data = QueryRewritingDataModule(
        **{**data_args, "train_files": [str(REPO_ROOT / f) for f in data_args["train_files"]]}
    )
    data.input_encoder = module.input_encoder()
    data.setup("fit")
    collate = data.train_dataloader().collate_fn
    rows = []
    for index, pair in enumerate(data.train_pairs):
        batch = collate([(index, pair)])
        rows.append(
            {
                "input_ids": batch.input_ids[0].tolist(),
                "attention_mask": batch.attention_mask[0].tolist(),
                "labels": batch.labels[0].tolist(),
            }
        )

    timer = StepTimer(args.warmup)
    batch_size = data_args["batch_size"]
    trainer = Seq2SeqTrainer(
        model=module.model,
        args=Seq2SeqTrainingArguments(
            output_dir=str(output / "theirs_seq2seq"),
            per_device_train_batch_size=batch_size,
            max_steps=args.warmup + args.train_batches,
            learning_rate=config["model"]["init_args"]["learning_rate"],
            weight_decay=0.01,
            **trainer_settings(args, bf16),
        ),
        train_dataset=Dataset.from_list(rows),
        data_collator=DataCollatorForSeq2Seq(module.tokenizer, model=module.model),
        callbacks=[timer],
    )
    return timer.train(trainer, f"Seq2SeqTrainer rewriter fit ({precision_name(bf16)})", batch_size)


# -- the run --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help="model folder for both sides (default: the packaged all-MiniLM-L6-v2)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches on each side")
    parser.add_argument("--train-batches", type=int, default=8, help="timed training batches")
    parser.add_argument(
        "--predict-batches", type=int, default=4, help="timed predict batches (of 64 queries)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="queries per batch (ours)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--st-predict-batch-size", type=int, default=32, help="its default")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=["32-true", "bf16-mixed"],
        help="the precisions both sides run at, each a row pair (default: 32-true, and "
        "bf16-mixed where the CPU has native bf16)",
    )
    parser.add_argument(
        "--levers",
        nargs="*",
        default=[],
        choices=["torch_compile", "gradient_checkpointing"],
        help="also time our reranker fit with these options on (one row each)",
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument(
        "--skip-rewriter", action="store_true", help="leave out the rewriter vs Seq2SeqTrainer"
    )
    parser.add_argument("--output-json", type=Path, default=None)
    return parser.parse_args(argv)


def ratio(ours_row: dict, theirs_row: dict) -> float:
    return round(ours_row["pairs_per_second"] / theirs_row["pairs_per_second"], 2)


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.backbone = str(Path(args.backbone).resolve()) if args.backbone else embedded_minilm_path()
    output_json = args.output_json.resolve() if args.output_json else None
    os.chdir(REPO_ROOT)  # the config names its data relative to the repository
    header = machine()
    print(json.dumps(header), flush=True)
    precisions = args.precisions or ["32-true"] + (["bf16-mixed"] if cpu_has_native_bf16() else [])
    shape = encoder_shape(args.backbone)
    peaks = {p: matmul_flops(p.startswith("bf16")) for p in precisions}
    header["matmul_gflops"] = {p: round(v / 1e9, 1) for p, v in peaks.items()}
    print(json.dumps({"matmul_gflops": header["matmul_gflops"]}), flush=True)
    comparisons = []
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp)
        if not args.skip_training:
            pairs = training_pairs(args)
            tokens = tokens_per_pair(pairs, args.backbone, args.max_length)
            for precision in precisions:
                bf16 = precision.startswith("bf16")
                rows_ours = [ours("fit", precision, args, output)]
                rows_ours += [ours("fit", precision, args, output, lever=x) for x in args.levers]
                pairs_per_batch = rows_ours[0]["pairs"] / rows_ours[0]["batches_timed"]
                batch_size = max(1, round(pairs_per_batch))
                rows_theirs = [theirs_fit(pairs, batch_size, bf16, args, output)]
                for row in rows_ours + rows_theirs:
                    utilisation(row, shape, tokens, True, peaks[precision])
                comparisons.append(
                    {
                        "task": "training",
                        "precision": precision,
                        "tokens_per_pair": round(tokens, 1),
                        "pairs_per_batch": {
                            "ours": round(pairs_per_batch, 1),
                            "theirs": batch_size,
                        },
                        "rows": rows_ours + rows_theirs,
                        "ratio": ratio(rows_ours[0], rows_theirs[0]),
                    }
                )
        if not args.skip_inference:
            queries = reranker_data(args).eval_batch_size  # a predict batch, as configured
            first = args.warmup * queries
            last = (args.warmup + args.predict_batches) * queries
            warm, timed = prediction_pairs(args, 0, first), prediction_pairs(args, first, last)
            tokens = tokens_per_pair(timed, args.backbone, args.max_length)
            for precision in precisions:
                rows_ours = [ours("predict", precision, args, output)]
                if len(timed) != rows_ours[0]["pairs"]:  # both sides must rank the same pairs
                    raise RuntimeError(
                        f"{len(timed)} pairs for them, {rows_ours[0]['pairs']} for us"
                    )
                rows_theirs = [theirs_predict(warm, timed, precision.startswith("bf16"), args)]
                for row in rows_ours + rows_theirs:
                    utilisation(row, shape, tokens, False, peaks[precision])
                comparisons.append(
                    {
                        "task": "inference",
                        "precision": precision,
                        "tokens_per_pair": round(tokens, 1),
                        "pairs_timed": {"ours": rows_ours[0]["pairs"], "theirs": len(timed)},
                        "rows": rows_ours + rows_theirs,
                        "ratio": ratio(rows_ours[0], rows_theirs[0]),
                    }
                )
        if not args.skip_rewriter:
            for precision in precisions:
                rows_ours = [ours("fit", precision, args, output, task="rewriter")]
                rows_theirs = [theirs_seq2seq_fit(precision.startswith("bf16"), args, output)]
                comparisons.append(
                    {
                        "task": "rewriter training",
                        "precision": precision,
                        "rows": rows_ours + rows_theirs,
                        "ratio": ratio(rows_ours[0], rows_theirs[0]),
                    }
                )
    print(f"\n{header['cpu_capability']} ({header['cores']} logical CPUs)")
    print(f"matmul peak, GFLOP/s: {header['matmul_gflops']}")
    print(
        ", ".join(
            f"{k} {header[k]}"
            for k in ("torch", "transformers", "lightning", "sentence-transformers")
        )
    )
    print("| task | precision | side | pairs/s | model GFLOP/s | share of matmul peak |")
    print("|---|---|---|---:|---:|---:|")
    for comparison in comparisons:
        for row in comparison["rows"]:
            print(
                f"| {comparison['task']} | {comparison['precision']} | {row['phase']} | "
                f"{row['pairs_per_second']} | {row.get('model_gflops', '–')} | "
                f"{row.get('share_of_matmul_peak', '–')} |"
            )
    for comparison in comparisons:
        ours_row = comparison["rows"][0]
        theirs_row = next(r for r in comparison["rows"] if not r["phase"].startswith("ours"))
        print(
            f"{comparison['task']} ({comparison['precision']}, both sides): ours / theirs = "
            f"{comparison['ratio']}x ({ours_row['phase']} vs {theirs_row['phase']}; target 1.5x; "
            f"{header['cpu_capability']})"
        )
    if output_json:
        output_json.parent.mkdir(parents=True, exist_ok=True)
        output_json.write_text(
            json.dumps({"machine": header, "comparisons": comparisons}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run())
