"""Train the offline query rewriter on CANARD train, score it on CANARD dev (TEST ONLY).

Question-in-context rewriting (Elgohary et al., EMNLP 2019): rewrite a conversational question
("when did they disband?") into a self-contained one ("when did Frank Zappa and the Mothers of
Invention disband?") given the conversation so far.

1. **Train** (skipped with ``--export``): CANARD *train* (``canard_train/canard_pairs.jsonl``,
   split "train" only) is converted to pairs with ``datamodules.converters.canard`` (history =
   the dialog's earlier turns in their rewritten form) and ``main.py fit`` runs the given config
   (default ``configs/query_rewriting_offline.yaml``) within a CPU budget (``--budget-minutes``,
   Lightning's ``max_time``). Checkpoints are chosen on a held-out slice of *train*
   (``--validation-fraction``, by question hash), never on dev.
2. **Test**: the exported model rewrites every question of CANARD dev (``canard/dev.json``,
   3,430 questions) through :class:`ExportedQueryRewriter` (the same path the app uses) and
   corpus SacreBLEU (13a tokenisation, cased; :mod:`lightning_modules.metrics`, tested equal to
   sacrebleu's) is computed against the official
   rewrites, next to the **copy baseline** (the question unchanged: 34.76 BLEU) on the same file.

CANARD dev's ``History`` is ``[title, section, q1, a1, q2, a2, ...]``; training pairs carry
questions only (CANARD train's history field is not in the snapshot). The history given to the
model is therefore, decided before any dev figure was seen, ``title_questions``: the article
title as the oldest turn (the conversation's topic, which the first rewrites of train dialogs
name) followed by the earlier questions. ``--dev-history`` also reports ``questions`` (no title)
and ``full`` (with section and answers) as secondary rows, and ``title_rewrites``: the title
followed by the model's **own** rewrites of the earlier questions, decoded turn by turn
(:func:`rewrite_dialogs`): what an app that rewrites queries carries forward, and the form of
CANARD train's history (earlier turns rewritten), never reading a reference rewrite.

``--compare-histories`` scores the fit's held-out *train* dialogs with the reference rewrites of
the earlier turns (the fit's own validation), the model's own rewrites and the raw questions as
history: how much a history protocol costs, measured without dev.

``--train-history questions`` trains on the earlier questions as the user asked them (the form
dev gives) instead of their rewrites. ``--cast`` also scores TREC CAsT 2019-2022 raw utterances
against their manual rewrites (test only; no target), next to copying: how the model transfers.

Usage::

    python benchmarks/canard.py --output-json benchmarks/results/canard_offline.json  # 40 min
    python benchmarks/canard.py --export logs/canard/version_0/export     # evaluate only
    python benchmarks/canard.py --export DIR --max-dev 200                # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO_ROOT))


SHARED = REPO_ROOT.parent / "shared" / "data"
DEFAULT_TRAIN = SHARED / "canard_train" / "canard_pairs.jsonl"
DEFAULT_DEV = SHARED / "canard" / "dev.json"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "query_rewriting_offline.yaml"
DEFAULT_CAST = SHARED / "trec_cast" / "cast_rewrites.jsonl"
COPY_BASELINE_BLEU = 34.76  # the copy baseline on CANARD dev, stated in the issue
DEV_HISTORIES = ("title_questions", "questions", "full", "title_rewrites")
# histories that need the model's own rewrites of the earlier turns (decoded turn by turn)
OWN_REWRITE_HISTORIES = ("title_rewrites",)
# the held-out CANARD *train* dialogs given each history (--compare-histories)
VALIDATION_HISTORIES = ("gold_rewrites", "own_rewrites", "questions")


def log(message: str) -> None:
    print(f"[canard] {message}", file=sys.stderr, flush=True)


def load_dev(path: Path, max_dev: int | None = None) -> list[dict[str, Any]]:
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    for i, row in enumerate(rows):
        for key in ("History", "Question", "Rewrite"):
            if key not in row:
                raise ValueError(f"{path}: record {i}: field '{key}': missing")
    return rows[:max_dev] if max_dev else rows


def dev_history(row: dict[str, Any], mode: str) -> list[str]:
    """The conversation given to the model, oldest first (see the module docstring)."""
    history = [h for h in row["History"] if h.strip()]
    full = row["History"]
    if mode == "full":
        return history
    questions = [q for q in full[2::2] if q.strip()]
    if mode == "questions":
        return questions
    if mode == "title_questions":
        return [full[0], *questions] if full and full[0].strip() else questions
    if mode == "title_rewrites":  # the title; the model's own rewrites follow (rewrite_dialogs)
        return [full[0]] if full and full[0].strip() else []
    raise ValueError(f"unknown dev history mode {mode!r}; choose from {DEV_HISTORIES}")


def rewrite_dialogs(
    rewriter, dialogs: Sequence[tuple[list[str], list[str]]], batch_size: int
) -> list[list[str]]:
    """Rewrite every dialog turn by turn, each turn's history being the dialog's ``prefix``
    followed by the model's **own** rewrites of its earlier questions: what an app that
    rewrites queries carries forward, and the form CANARD train's history has (earlier turns
    rewritten), without ever reading a reference rewrite. ``dialogs``: ``(prefix, questions)``.
    Turn t of all dialogs is one batch of rewrites (the app's loader, one inference path).
    """
    own: list[list[str]] = [[] for _ in dialogs]
    for turn in range(max((len(q) for _, q in dialogs), default=0)):
        active = [d for d, (_, questions) in enumerate(dialogs) if turn < len(questions)]
        questions = [dialogs[d][1][turn] for d in active]
        histories = [[*dialogs[d][0], *own[d]] for d in active]
        for d, rewrites in zip(
            active, rewriter.rewrite(questions, histories, batch_size=batch_size), strict=True
        ):
            own[d].append(rewrites[0])
    return own


def dev_dialogs(dev: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Row indices of each dev dialog, in turn order (dialogs in order of first appearance)."""
    dialogs: dict[str, list[int]] = {}
    for i, row in enumerate(dev):
        dialogs.setdefault(str(row.get("QuAC_dialog_id", i)), []).append(i)
    return [
        sorted(rows, key=lambda i: int(dev[i].get("Question_no", 0))) for rows in dialogs.values()
    ]


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU, chrF (0-100) and exact match (0-1) through the evaluation core validation
    and the gate use (tested equal to sacrebleu's)."""
    from lightning_modules.metrics import RewriteMetrics

    metrics = RewriteMetrics()
    metrics.update(hypotheses, references)
    values = {name: float(value) for name, value in metrics.compute().items()}
    return {
        "bleu": round(values["bleu"], 2),
        "chrf": round(values["chrf"], 2),
        "exact_match": round(values["exact_match"], 4),
    }


def train(args: argparse.Namespace, workdir: Path) -> Path:
    """Convert CANARD train, run ``main.py fit`` within the budget; the run's export folder."""
    from datamodules.converters import ConversionReport
    from datamodules.converters.canard import convert_canard, read_canard

    report = ConversionReport()
    pairs = convert_canard(read_canard(args.train), history=args.train_history, report=report)
    pairs_file = workdir / "canard_train_pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    log(f"{len(pairs)} CANARD train pairs -> {pairs_file}")

    import main

    budget = f"00:{args.budget_minutes // 60:02d}:{args.budget_minutes % 60:02d}:00"
    fit_args = [
        "fit",
        "--config", str(args.config),
        "--data.init_args.train_files", json.dumps([str(pairs_file)]),
        "--data.init_args.validation_fraction", str(args.validation_fraction),
        "--data.init_args.max_val_pairs", str(args.max_val_pairs),
        "--data.init_args.batch_size", str(args.batch_size),
        "--data.init_args.eval_batch_size", str(args.batch_size),
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.max_time", budget,
        "--trainer.val_check_interval", str(args.val_check_interval),
        # (the whole list: `--trainer.logger.init_args.*` would only reach its last logger)
        "--trainer.logger", json.dumps([
            {"class_path": "lightning.pytorch.loggers.CSVLogger",
             "init_args": {"save_dir": str(args.log_dir), "name": "canard"}},
            {"class_path": "lightning_modules.loggers.FeedbackWandbLogger",
             "init_args": {"save_dir": str(args.log_dir), "name": "canard"}},
        ]),
    ]  # fmt: skip
    fit_args += args.fit_arg
    started = time.time()
    cli = main.main(fit_args)
    args.train_seconds = round(time.time() - started)
    args.train_steps = int(cli.trainer.global_step)
    export = Path(cli.trainer.log_dir) / "export"
    log(f"trained {args.train_steps} steps in {args.train_seconds} s; export: {export}")
    return export


def evaluate(export: Path, dev: list[dict[str, Any]], modes: Sequence[str], batch_size: int):
    from lightning_modules.rewriter_inference import ExportedQueryRewriter

    rewriter = ExportedQueryRewriter(export)
    questions = [row["Question"] for row in dev]
    references = [row["Rewrite"] for row in dev]
    results: dict[str, Any] = {"copy": corpus_scores(questions, references)}
    samples: dict[str, list[dict[str, str]]] = {}
    for mode in modes:
        started = time.time()
        histories = [dev_history(row, mode) for row in dev]
        if mode in OWN_REWRITE_HISTORIES:
            dialogs = dev_dialogs(dev)
            own = rewrite_dialogs(
                rewriter,
                [(histories[rows[0]], [questions[i] for i in rows]) for rows in dialogs],
                batch_size,
            )
            rewrites = [""] * len(dev)
            for rows, texts in zip(dialogs, own, strict=True):
                for i, text in zip(rows, texts, strict=True):
                    rewrites[i] = text
        else:
            rewrites = [r[0] for r in rewriter.rewrite(questions, histories, batch_size=batch_size)]
        results[mode] = corpus_scores(rewrites, references)
        results[mode]["seconds"] = round(time.time() - started)
        samples[mode] = [
            {"question": q, "rewrite": h, "reference": r}
            for q, h, r in list(zip(questions, rewrites, references, strict=True))[:20]
        ]
        log(f"{mode}: {results[mode]} (copy: {results['copy']})")
    return results, samples


def held_out_train_dialogs(
    rows: Sequence[dict[str, Any]], validation_fraction: float
) -> list[list[dict[str, Any]]]:
    """CANARD *train* dialogs the fit held out for validation (the data module's own session
    split: :func:`datamodules.query_rewriting.split_key` of the dialog), turns in order."""
    from datamodules.query_rewriting import split_key
    from datamodules.rewrite_feedback import RewritePair
    from datamodules.split import is_validation_query

    dialogs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("split") != "train" or not row.get("dialog_id"):
            continue
        key = split_key(RewritePair(row["question"], None, session_id=str(row["dialog_id"])))
        if is_validation_query(key, validation_fraction):
            dialogs.setdefault(row["dialog_id"], []).append(row)
    return [sorted(turns, key=lambda r: int(r["turn"])) for turns in dialogs.values()]


def compare_histories(export: Path, dialogs, batch_size: int) -> dict[str, Any]:
    """BLEU on the held-out *train* dialogs with each history (:data:`VALIDATION_HISTORIES`):
    the reference rewrites of the earlier turns (what the fit's validation gives), the model's
    own rewrites of them, and the raw earlier questions. Chooses a dev protocol on train data."""
    from datamodules.converters.canard import clean_text
    from lightning_modules.rewriter_inference import ExportedQueryRewriter

    rewriter = ExportedQueryRewriter(export)
    questions = [clean_text(r["question"]) for d in dialogs for r in d]
    references = [clean_text(r["rewrite"]) for d in dialogs for r in d]
    out: dict[str, Any] = {"dialogs": len(dialogs), "turns": len(questions)}
    for mode in VALIDATION_HISTORIES:
        started = time.time()
        if mode == "own_rewrites":
            own = rewrite_dialogs(
                rewriter,
                [([], [clean_text(r["question"]) for r in d]) for d in dialogs],
                batch_size,
            )
            rewrites = [text for texts in own for text in texts]
        else:
            key = "prev_rewrites" if mode == "gold_rewrites" else "prev_questions"
            histories = [
                [clean_text(t) for t in r[key] if clean_text(t)] for d in dialogs for r in d
            ]
            rewrites = [x[0] for x in rewriter.rewrite(questions, histories, batch_size=batch_size)]
        out[mode] = {**corpus_scores(rewrites, references), "seconds": round(time.time() - started)}
        log(f"held-out train dialogs, history {mode}: {out[mode]}")
    out["copy"] = corpus_scores(questions, references)
    return out


def evaluate_cast(export: Path, path: Path, batch_size: int) -> dict[str, Any]:
    """TREC CAsT 2019-2022 (TEST ONLY) raw utterance -> manual rewrite: corpus BLEU of the
    export's rewrites next to copying the utterance, overall and per year. History as on
    CANARD dev's primary row: the topic title (where the year gives one) and the earlier raw
    utterances. No target: how the CANARD-trained model transfers."""
    from lightning_modules.rewriter_inference import ExportedQueryRewriter

    rows = [
        json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line
    ]
    for i, row in enumerate(rows):
        for key in ("raw", "rewrite", "history_raw", "year"):
            if key not in row:
                raise ValueError(f"{path}: record {i}: field '{key}': missing")
    histories = [
        [t for t in [row.get("title") or "", *row["history_raw"]] if t.strip()] for row in rows
    ]
    started = time.time()
    rewriter = ExportedQueryRewriter(export)
    raw = [row["raw"] for row in rows]
    rewrites = [r[0] for r in rewriter.rewrite(raw, histories, batch_size=batch_size)]
    references = [row["rewrite"] for row in rows]
    out: dict[str, Any] = {
        "utterances": len(rows),
        "copy": corpus_scores(raw, references),
        "model": corpus_scores(rewrites, references),
        "seconds": round(time.time() - started),
        "by_year": {},
    }
    for year in sorted({row["year"] for row in rows}):
        idx = [i for i, row in enumerate(rows) if row["year"] == year]
        out["by_year"][str(year)] = {
            "utterances": len(idx),
            "copy": corpus_scores([raw[i] for i in idx], [references[i] for i in idx]),
            "model": corpus_scores([rewrites[i] for i in idx], [references[i] for i in idx]),
        }
    log(f"TREC CAsT: model {out['model']} copy {out['copy']}")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=Path, default=DEFAULT_TRAIN, help="canard_pairs.jsonl")
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV, help="CANARD dev.json (test)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--export", type=Path, help="evaluate this export; no training")
    parser.add_argument("--budget-minutes", type=int, default=40, help="training time limit")
    parser.add_argument(
        "--train-history", choices=("rewrites", "questions"), default="rewrites",
        help="training pairs' history: the earlier turns rewritten (default) or as asked",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--validation-fraction", type=float, default=0.02)
    parser.add_argument("--max-val-pairs", type=int, default=200)
    parser.add_argument("--val-check-interval", type=int, default=500, help="training steps")
    parser.add_argument("--log-dir", type=Path, default=Path("logs"))
    parser.add_argument(
        "--fit-arg", action="append", default=[], help="extra main.py fit argument (repeatable)"
    )
    parser.add_argument(
        "--dev-history", action="append", choices=DEV_HISTORIES, default=None,
        help=f"history given on dev (repeatable; default: all, {DEV_HISTORIES[0]} is primary)",
    )  # fmt: skip
    parser.add_argument("--max-dev", type=int, default=None, help="first N dev rows (smoke)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument(
        "--cast", type=Path, nargs="?", const=DEFAULT_CAST, default=None,
        help="also score TREC CAsT raw -> manual rewrites (test only; default file if no path)",
    )  # fmt: skip
    parser.add_argument(
        "--compare-histories", action="store_true",
        help="also score the held-out CANARD train dialogs with each history (gold rewrites, "
        "own rewrites, raw questions): how to choose the dev protocol without dev",
    )  # fmt: skip
    parser.add_argument("--output-json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.train_seconds = args.train_steps = None
    modes = args.dev_history or list(DEV_HISTORIES)
    dev = load_dev(args.dev, args.max_dev)
    with tempfile.TemporaryDirectory() as workdir:
        export = args.export or train(args, Path(workdir))
        histories = None
        if args.compare_histories:
            from datamodules.converters.canard import read_canard

            dialogs = held_out_train_dialogs(read_canard(args.train), args.validation_fraction)
            histories = compare_histories(export, dialogs, args.eval_batch_size)
        cast = evaluate_cast(export, args.cast, args.eval_batch_size) if args.cast else None
        results, samples = evaluate(export, dev, modes, args.eval_batch_size)
    summary = {
        "benchmark": "CANARD dev (test only), corpus SacreBLEU 13a cased",
        "dev_questions": len(dev),
        "primary": modes[0],
        "export": str(export),
        "config": str(args.config) if not args.export else None,
        "budget_minutes": None if args.export else args.budget_minutes,
        "train_history": None if args.export else args.train_history,
        "train_seconds": args.train_seconds,
        "train_steps": args.train_steps,
        "results": results,
        "samples": samples,
        "held_out_train_histories": histories,
        "trec_cast": cast,
    }
    print("| system | dev history | BLEU | chrF | exact match |\n|---|---|---:|---:|---:|")
    print(
        f"| copy the question | - | {results['copy']['bleu']} | {results['copy']['chrf']} | "
        f"{results['copy']['exact_match']} |"
    )
    for mode in modes:
        r = results[mode]
        print(f"| {export} | {mode} | {r['bleu']} | {r['chrf']} | {r['exact_match']} |")
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
