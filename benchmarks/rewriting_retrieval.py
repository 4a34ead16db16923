"""The rewriter judged as the app uses it: what its queries find on held-out search sessions.

On the shipped TREC Session 2013 rewriting log (``training_data/trec_session2013_rewriting.json``,
app-shaped records: the original query, the sources the user chose, every candidate query the
session ran with what it retrieved), each system's queries are judged by the retrieval judge
(:mod:`lightning_modules.retrieval_judge`: BM25 over every source the log recorded): the share of
the record's selected sources in the top 10 (**coverage@10**), and for several queries the share
in the union of their top 10s.

**Split by session, k-fold** (``--folds``, default 5): the sessions are dealt into folds by a
hash of their id, and each fold's sessions are held out once. A recipe is fitted on the other
folds' records (``main.py fit``; its checkpoint is chosen on a validation slice of those
*training* sessions, by the data module's own session-hash split), exported, and the export
rewrites the held-out records' queries through :class:`ExportedQueryRewriter` (the app's
loader: the one inference path). Every held-out record is judged once, so the comparison uses
the whole log while no session is ever rewritten by a model that saw it.

Systems, per held-out record:

* ``copy``: the original query alone (what the app has without a rewriter);
* ``target``: the mined target (the logged candidate that found the most selected sources: an
  oracle that knows the picks; the ceiling a rewriter learns towards);
* ``rewrite``: the recipe's best rewrite (per variation method: ``novel_terms`` searches a
  wider beam);
* ``union{n}``: the union of its first ``n`` variations (``--n``), for each variation method
  (``--methods``: the next beams, or ``novel_terms``; see
  :class:`~lightning_modules.rewriter_inference.RewriteVariations`);
* ``original+union{n}``: the original query and the ``n`` variations (the app logs the original
  query among the candidates it searched with, so this is what it retrieves from).

Each is compared with ``copy``, and the recipes with each other, by a **paired bootstrap over
sessions** (:func:`deployment.bootstrap.paired_bootstrap`; a session's records are resampled
together, since they share a topic and picks).

Recipes (``--recipes``): ``today`` (``configs/query_rewriting_offline.yaml``: maximum likelihood
on the mined target), ``candidates`` (+ the listwise loss over every logged candidate,
:class:`~lightning_modules.losses.SoftmaxCrossEntropyLoss`), and with ``--init-from EXPORT``
(e.g. the CANARD-trained rewriter of ``benchmarks/canard.py``) the same two starting from that
export: ``canard`` and ``canard+candidates``, and ``init``, that export as it is (no fit on the
log: how it transfers).

Usage::

    python benchmarks/rewriting_retrieval.py --init-from logs/canard/version_0/export \\
        --output-json benchmarks/results/rewriting_retrieval_trec_session.json
    python benchmarks/rewriting_retrieval.py --folds 2 --fold 0 --recipes today   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_LOG = REPO_ROOT / "training_data" / "trec_session2013_rewriting.json"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "query_rewriting_offline.yaml"
TOP_KEY = "query_rewriting_data"
FOLD_SALT = "rewriting_retrieval"
CANDIDATE_LOSS = [
    "--model.init_args.candidate_loss",
    "lightning_modules.losses.SoftmaxCrossEntropyLoss",
]
FINE_TUNE = ["--model.init_args.learning_rate", "5e-5"]
# recipe -> (main.py fit arguments, needs --init-from); None: no fit (the export as it is)
RECIPES: dict[str, tuple[list[str] | None, bool]] = {
    "init": (None, True),
    "today": ([], False),
    "candidates": (CANDIDATE_LOSS, False),
    # a trained rewriter fine-tunes gently (README: lr 5e-5 for the CANARD-trained one)
    "canard": (FINE_TUNE, True),
    "canard+candidates": ([*FINE_TUNE, *CANDIDATE_LOSS], True),
}


def log(message: str) -> None:
    print(f"[rewriting_retrieval] {message}", file=sys.stderr, flush=True)


def session_key(raw: dict[str, Any]) -> str:
    """What keeps a record's session together: its ``session_id``, else its query."""
    session = raw.get("session_id")
    return f"session:{session}" if session else f"query:{raw.get('original_query', '')}"


def session_folds(raws: Sequence[dict[str, Any]], folds: int, salt: str = FOLD_SALT) -> list[int]:
    """The fold of every record: a hash of its session (:func:`session_key`) dealt into
    ``folds`` equal ranges, so a session's records share a fold."""
    from datamodules.split import query_bucket

    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    return [min(int(query_bucket(session_key(r), salt) * folds), folds - 1) for r in raws]


def session_bootstrap(
    sessions: Sequence[str],
    baseline: np.ndarray,
    system: np.ndarray,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """``mean(system) - mean(baseline)`` over the records (NaN: not judged, left out) with its
    95% interval from a paired bootstrap that resamples whole sessions."""
    from deployment.bootstrap import paired_bootstrap

    names = list(dict.fromkeys(sessions))
    members = {name: [] for name in names}
    for row, name in enumerate(sessions):
        members[name].append(row)
    groups = [np.asarray(members[name]) for name in names]
    defined = ~(np.isnan(baseline) | np.isnan(system))

    def statistic(values: np.ndarray) -> Callable[[np.ndarray], float]:
        def mean(indices: np.ndarray) -> float:
            rows = np.concatenate([groups[i] for i in indices])
            rows = rows[defined[rows]]
            return float(values[rows].mean()) if len(rows) else float("nan")

        return mean

    low, high, p = paired_bootstrap(
        len(groups), statistic(baseline), statistic(system), n_resamples, seed
    )
    return {
        "baseline": round(float(baseline[defined].mean()), 4),
        "system": round(float(system[defined].mean()), 4),
        "delta": round(float((system - baseline)[defined].mean()), 4),
        "ci95": [round(low, 4), round(high, 4)],
        "p_not_better": round(p, 4),
        "records": int(defined.sum()),
        "sessions": len({sessions[i] for i in np.flatnonzero(defined)}),
    }


def fit_recipe(args: argparse.Namespace, recipe: str, train_file: Path, workdir: Path):
    """``main.py fit`` of ``recipe`` on ``train_file``; its export folder and fit seconds."""
    import main

    extra, needs_init = RECIPES[recipe]
    fit_args = [
        "fit",
        "--config", str(args.config),
        "--data.init_args.train_files", json.dumps([str(train_file)]),
        "--trainer.logger", json.dumps([
            {"class_path": "lightning.pytorch.loggers.CSVLogger",
             "init_args": {"save_dir": str(workdir), "name": recipe.replace("+", "_")}},
        ]),
        "--seed_everything", str(args.seed),
        *extra,
    ]  # fmt: skip
    if needs_init:
        fit_args += ["--model.init_args.init_from", str(args.init_from)]
    fit_args += args.fit_arg
    started = time.time()
    cli = main.main(fit_args)
    return Path(cli.trainer.log_dir) / "export", round(time.time() - started, 1)


def judge_fold(
    judge,
    records: Sequence[Any],
    rewriter,
    methods: Sequence[str],
    sizes: Sequence[int],
    batch_size: int,
) -> dict[str, list[float]]:
    """Per-record coverage@k of every system on one fold's held-out records."""
    from dataclasses import replace

    questions = [r.original_query for r in records]
    values: dict[str, list[float]] = {}
    configured = rewriter.variations
    for method in methods:
        rewriter.variations = replace(configured, method=method)
        rewrites = rewriter.rewrite(questions, n=max(sizes), batch_size=batch_size)
        pairs = list(zip(rewrites, records, strict=True))
        # (per method: novel_terms searches a wider beam, whose best may differ)
        names = [f"{method}/rewrite"]
        names += [f"{method}/{prefix}union{n}" for n in sizes for prefix in ("", "original+")]
        for v, r in pairs:  # one retrieval per distinct query of the record
            query_sets = [v[:1]]
            query_sets += [q for n in sizes for q in (v[:n], [r.original_query, *v[:n]])]
            for name, value in zip(names, judge.union_coverages(query_sets, r), strict=True):
                values.setdefault(name, []).append(value)
    rewriter.variations = configured
    return values


def baselines(judge, records: Sequence[Any]) -> dict[str, list[float]]:
    from datamodules.rewrite_feedback import mine_target

    targets = [mine_target(r) for r in records]
    return {
        "copy": [judge.coverage(r.original_query, r) for r in records],
        "target": [
            judge.coverage(t.query if t else r.original_query, r)
            for t, r in zip(targets, records, strict=True)
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from datamodules.rewrite_feedback import parse_rewriting_record
    from lightning_modules.hardware import describe_cpu
    from lightning_modules.retrieval_judge import RetrievalJudge
    from lightning_modules.rewriter_inference import ExportedQueryRewriter

    raws = json.loads(Path(args.log).read_text(encoding="utf-8"))[TOP_KEY]
    records = [parse_rewriting_record(raw, str(args.log), i) for i, raw in enumerate(raws)]
    sessions = [session_key(raw) for raw in raws]
    fold_of = session_folds(raws, args.folds)
    judge = RetrievalJudge(records)  # one index for the whole log, as validation builds it
    folds = args.fold if args.fold is not None else list(range(args.folds))
    held_out = [i for i in range(len(records)) if fold_of[i] in folds]
    log(
        f"{len(records)} records, {len(set(sessions))} sessions, {args.folds} folds by session; "
        f"judging {len(held_out)} held-out records of folds {folds}"
    )
    per_record: dict[str, dict[str, np.ndarray]] = {}
    base = baselines(judge, [records[i] for i in held_out])
    result: dict[str, Any] = {
        "benchmark": "rewriter coverage@10 on held-out TREC Session 2013 sessions",
        "log": str(args.log),
        "config": str(args.config),
        "init_from": str(args.init_from) if args.init_from else None,
        "folds": args.folds,
        "folds_run": folds,
        "records": len(held_out),
        "sessions": len({sessions[i] for i in held_out}),
        "judge_documents": len(judge),
        "machine": describe_cpu(),
        "methods": list(args.methods),
        "union_sizes": list(args.n),
        "fit_seconds": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.work_dir or tmp)
        for recipe in args.recipes:
            if RECIPES[recipe][1] and not args.init_from:
                raise SystemExit(f"recipe {recipe!r} needs --init-from EXPORT")
            values: dict[str, list[float]] = {}
            order: list[int] = []
            result["fit_seconds"][recipe] = []
            for fold in folds:
                fold_dir = workdir / f"fold{fold}"
                fold_dir.mkdir(parents=True, exist_ok=True)
                train_file = fold_dir / "train.json"
                if not train_file.exists():
                    train = [raw for raw, f in zip(raws, fold_of, strict=True) if f != fold]
                    train_file.write_text(json.dumps({TOP_KEY: train}, ensure_ascii=False))
                if RECIPES[recipe][0] is None:  # the export as it is: nothing to fit
                    export = args.init_from
                else:
                    log(f"{recipe}: fold {fold}: fitting")
                    export, seconds = fit_recipe(args, recipe, train_file, fold_dir)
                    result["fit_seconds"][recipe].append(seconds)
                test = [i for i in held_out if fold_of[i] == fold]
                rewriter = ExportedQueryRewriter(export)
                found = judge_fold(
                    judge, [records[i] for i in test], rewriter, args.methods, args.n,
                    args.batch_size,
                )  # fmt: skip
                for name, column in found.items():
                    values.setdefault(name, []).extend(column)
                order += test
            position = {i: p for p, i in enumerate(order)}
            per_record[recipe] = {
                name: np.asarray([column[position[i]] for i in held_out], dtype=np.float64)
                for name, column in values.items()
            }
    copy = np.asarray(base["copy"], dtype=np.float64)
    held_sessions = [sessions[i] for i in held_out]

    def vs(baseline: np.ndarray, system: np.ndarray) -> dict[str, Any]:
        return session_bootstrap(held_sessions, baseline, system, args.resamples, args.seed)

    result["baselines"] = {"target vs copy": vs(copy, np.asarray(base["target"], dtype=float))}
    result["recipes"] = {
        recipe: {name: vs(copy, column) for name, column in columns.items()}
        for recipe, columns in per_record.items()
    }
    # each recipe against the first (today's), and the candidate loss against the same recipe
    # without it
    pairs = [(r, args.recipes[0]) for r in per_record if r != args.recipes[0]]
    pairs += [
        (r, base_recipe)
        for r in per_record
        for base_recipe in [r.removesuffix("+candidates") if r != "candidates" else "today"]
        if r != base_recipe and base_recipe in per_record and (r, base_recipe) not in pairs
    ]
    result["recipe_comparisons"] = {
        f"{r} vs {b}": {
            name: vs(per_record[b][name], column) for name, column in per_record[r].items()
        }
        for r, b in pairs
    }
    result["per_record"] = {
        "index": held_out,
        "session": held_sessions,
        **{name: [round(v, 4) for v in column] for name, column in base.items()},
        **{
            f"{recipe}/{name}": [None if np.isnan(v) else round(float(v), 4) for v in column]
            for recipe, columns in per_record.items()
            for name, column in columns.items()
        },
    }
    return result


def print_table(result: dict[str, Any]) -> None:
    base = result["baselines"]["target vs copy"]
    print(
        f"\nTREC Session 2013, {result['records']} held-out records of {result['sessions']} "
        f"sessions ({result['folds']}-fold by session); coverage@10, vs copying the query "
        "(paired bootstrap over sessions, 95% CI)\n"
    )
    print("| recipe | queries | coverage@10 | vs copy | 95% CI |\n|---|---|---:|---:|---|")
    print(f"| - | the original query (copy) | {base['baseline']:.3f} | | |")
    print(
        f"| - | the mined target (knows the picks) | {base['system']:.3f} | {base['delta']:+.3f} "
        f"| {base['ci95'][0]:+.3f} to {base['ci95'][1]:+.3f} |"
    )
    for recipe, systems in result["recipes"].items():
        for name, c in systems.items():
            print(
                f"| {recipe} | {name} | {c['system']:.3f} | {c['delta']:+.3f} | "
                f"{c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f} |"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG, help="app rewriting log (JSON)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--init-from", type=Path, default=None, help="export to start from")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, action="append", default=None, help="run only these")
    parser.add_argument("--methods", nargs="+", default=["beams", "novel_terms"])
    parser.add_argument("--n", type=int, nargs="+", default=[3], help="union sizes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep fits here (default: temp)"
    )
    parser.add_argument(
        "--fit-arg", action="append", default=[], help="extra main.py fit argument (repeatable)"
    )
    parser.add_argument("--output-json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.recipes is None:
        args.recipes = ["today", "candidates"] + (
            ["init", "canard", "canard+candidates"] if args.init_from else []
        )
    if args.output_json and args.output_json.exists():
        parser.error(f"{args.output_json} exists: choose a new name (results are never replaced)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    result["command"] = "python benchmarks/rewriting_retrieval.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print_table(result)
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        log(f"wrote {args.output_json}")
    return result


if __name__ == "__main__":
    main()
