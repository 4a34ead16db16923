"""The learning curve: does fine-tuning on simulated picks find what users want, and does a
position model help? Scored on true labels of test-only sets.

For each position-bias strength ``eta``, impression count ``N`` and seed: WikiQA train lists
are shown in BM25 order and picked by the simulated user (:mod:`simulation`); the default
reranker recipe is fine-tuned on those picks with each ``--methods`` entry:

* ``naive``: the picks as they are (today's recipe);
* ``additive``: a learned position term per rank during training (``AdditivePositionBias``);
* ``ips``: inverse propensity weighting with the simulator's true propensities ``(1/k)^eta``
  (given, not estimated: the best case for IPS);
* ``ips_estimated``: the same with propensities estimated from the log itself by intervention
  harvesting (:mod:`datamodules.propensity`; needs ``--display bm25 backbone``, orders that
  change between impressions);
* ``skip_above``: unpicked sources below the lowest pick left out of training (``SkipAbove``);
* ``display_prior``: naive training with the display prior (``configs/display_prior.yaml``:
  the display rank mixed into the scores with the weight that maximises the validation picks'
  propensity-weighted DCG at ``eval_propensity_eta``; the test lists are given in BM25 order,
  the display);
* ``oracle``: the same impressions labelled with their true grades;

each choosing its checkpoint on its own validation split of the feedback (picks; the oracle's
true labels), never on a test set. Every export is scored through the app's loader on the true
labels of WikiQA dev (never simulated from: where recipes are compared and chosen), of WikiQA
test (test-only, read from ``../shared/data/wikiqa``) and, with
``--trec-dl``, TREC DL 2019/2020 (test-only), beside the untouched backbone and the display
order (BM25). NDCG@10 over the queries with a relevant source.

    python benchmarks/learning_curve.py --output lc.json --plot lc.png   # the default plan
    python benchmarks/learning_curve.py --n 1000 --eta 1 --output lc.json   # one point
    python benchmarks/learning_curve.py --n 100 300 1000 3000 --eta 1 --seeds 0 \\
        --output benchmarks/results/learning_curve.json --plot learning_curve.png
    python benchmarks/learning_curve.py --replot results/a.json results/b.json --plot curve.png

``--plot`` draws WikiQA test NDCG@10 against N for each method at one eta (the first given),
the untouched backbone and the display order as lines, the mean over seeds where there are
several; ``--replot`` draws it from reports already written, merged, without fitting.
"""

from __future__ import annotations

import argparse
import json
import platform
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
from simulation.display import (  # noqa: E402
    BM25Order,
    FileOrder,
    add_display_argument,
    display_policy,
    in_display_order,
)
from simulation.evaluation import (  # noqa: E402
    mean_metrics,
    order_scores,
    reranker_scores,
    true_label_metrics,
    untouched_backbone,
)
from simulation.labelled import (  # noqa: E402
    WIKIQA_FEEDBACK,
    WIKIQA_GROUPED,
    load_labelled_lists,
    wikiqa_lists,
)
from simulation.simulator import simulate, with_true_labels, write_feedback  # noqa: E402
from simulation.users import PositionBasedUser  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "reranker.yaml"
METHODS = (
    "naive",
    "additive",
    "ips",
    "ips_estimated",
    "skip_above",
    "display_prior",
    "oracle",
)
DISPLAY_PRIOR_OVERLAY = REPO_ROOT / "configs" / "display_prior.yaml"


def method_arguments(method: str, eta: float, train_file: Path) -> list[str]:
    """The ``main.py fit`` arguments that make the default recipe into ``method``."""
    if method == "display_prior":
        return ["--config", str(DISPLAY_PRIOR_OVERLAY)]
    if method == "oracle":  # true labels: no position bias for ips_dcg@10 to undo (the metric)
        return ["--model.init_args.eval_propensity_eta=0"]
    if method == "ips_estimated":  # intervention harvesting on the very log trained on
        from datamodules.propensity import estimate_propensities
        from datamodules.reranker_records import load_reranker_feedback

        records, _ = load_reranker_feedback(train_file)
        propensities = estimate_propensities(records).for_weighting()
        spec = {
            "class_path": "lightning_modules.position_bias.InversePropensityWeighting",
            "init_args": {"propensities": propensities},
        }
    elif method == "additive":
        spec = {"class_path": "lightning_modules.position_bias.AdditivePositionBias"}
    elif method == "skip_above":
        spec = {"class_path": "lightning_modules.position_bias.SkipAbove"}
    elif method == "ips":
        spec = {
            "class_path": "lightning_modules.position_bias.InversePropensityWeighting",
            "init_args": {"eta": eta},
        }
    else:
        return []
    return [f"--model.init_args.position_bias={json.dumps(spec)}"]


def fit(train_file: Path, method: str, eta: float, run_dir: Path, args) -> tuple[Path, dict]:
    """Fine-tune the default recipe on one feedback file; the export and the fit's figures."""
    import main

    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(run_dir), "name": method},
        }
    ]
    cli_args = [
        "fit",
        "--config",
        str(args.config),
        *[part for overlay in args.overlay for part in ("--config", overlay)],
        f"--data.init_args.train_files={json.dumps([str(train_file)])}",
        f"--trainer.logger={json.dumps(loggers)}",
        "--trainer.enable_model_summary=false",
        *method_arguments(method, eta, train_file),
        *args.set,
    ]
    if args.max_epochs is not None:
        cli_args.append(f"--trainer.max_epochs={args.max_epochs}")
    started = time.perf_counter()
    cli = main.main(cli_args)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    examination = cli.model.position_bias.examination()
    return Path(cli.trainer.log_dir) / "export", {
        "fit_seconds": round(time.perf_counter() - started, 1),
        "val": {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/")},
        "examination": examination,
    }


def score_export(folder: Path, test_sets: dict[str, Any]) -> dict[str, dict[str, float]]:
    from lightning_modules.inference import ExportedReranker

    return score_reranker(ExportedReranker.load(folder), test_sets)


def score_reranker(reranker, test_sets: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: score(reranker) for name, score in test_sets.items()}


def wikiqa_test_set(path: Path):
    # in BM25 order, the simulated app's display (a model's ranking does not depend on the
    # order it is given the sources in, unless it has a display prior, which reads it)
    lists = in_display_order(wikiqa_lists(path, "test"), BM25Order())

    def score(reranker) -> dict[str, float]:
        return mean_metrics(true_label_metrics(lists, reranker_scores(reranker, lists)))

    display = mean_metrics(true_label_metrics(lists, order_scores(FileOrder().order(lists))))
    return lists, score, display


def trec_dl_test_sets(data_dir: str | None) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import trec_dl

    folder = trec_dl.resolve_data_dir(data_dir or trec_dl.DEFAULT_DATA_DIR)
    sets = {}
    for year in trec_dl.YEARS:
        data = trec_dl.load_year(folder, year)

        def score(reranker, data=data) -> dict[str, float]:
            _, evaluation = trec_dl.score_year(trec_dl.ExportScorer(reranker), data)
            return {**evaluation.mean, "n_queries": evaluation.n_queries}

        sets[f"trec_dl_{year}"] = score
    return sets


def curve_points(reports: Sequence[dict[str, Any]], eta: float, metric: str = "ndcg@10"):
    """``{method: [(n, mean over seeds of WikiQA test metric), ...]}`` at ``eta``, N ascending,
    and the baselines' values; later reports win for a repeated (method, n, seed)."""
    runs: dict[tuple[str, int, int], float] = {}
    baselines: dict[str, float] = {}
    for report in reports:
        for run in report["runs"]:
            if run["eta"] == eta:
                key = (run["method"], run["n"], run["seed"])
                runs[key] = run["test"]["wikiqa_test"][metric]
        for name, values in report["baselines"].items():
            baselines[name] = values["wikiqa_test"][metric]
    by_method: dict[str, dict[int, list[float]]] = {}
    for (method, n, _), value in runs.items():
        by_method.setdefault(method, {}).setdefault(n, []).append(value)
    points = {
        method: [(n, float(np.mean(values[n]))) for n in sorted(values)]
        for method, values in by_method.items()
    }
    return points, baselines


def plot_curve(reports: Sequence[dict[str, Any]], path: str | Path, eta: float) -> None:
    """WikiQA test NDCG@10 against impressions, per method, with the baselines as lines."""
    try:
        import matplotlib
    except ImportError as error:
        raise SystemExit(f"--plot needs matplotlib: pip install matplotlib ({error})") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, baselines = curve_points(reports, eta)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for method in [m for m in METHODS if m in points]:
        ns, values = zip(*points[method], strict=True)
        ax.plot(ns, values, "o-", label=method)
    for (name, value), style in zip(sorted(baselines.items()), ("k--", "k:", "k-."), strict=False):
        ax.axhline(value, linestyle=style[1:], color="k", linewidth=1, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("simulated impressions (N)")
    ax.set_ylabel("WikiQA test NDCG@10 (true labels)")
    ax.set_title(f"eta = {eta:g}, BM25 display")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# The default plan (no --n/--eta/--seeds): the N range at eta = 1, the other etas and two more
# seeds at N = 1,000; 3 methods, 24 fits, estimated at ~75 minutes on a 2-core CPU (bf16). It trades
# a full grid (4 N x 3 eta x 3 seeds x 3 methods: 108 fits, ~6 hours) for the curve itself
# plus one point of each other axis; --n/--eta/--seeds run any full grid instead.
DEFAULT_PLAN = (
    *[(1.0, n, 0) for n in (100, 300, 1000, 3000)],
    (0.5, 1000, 0),
    (2.0, 1000, 0),
    (1.0, 1000, 1),
    (1.0, 1000, 2),
)


def plan(args: argparse.Namespace) -> list[tuple[float, int, int]]:
    """The (eta, N, seed) points to run: the default plan, or the full grid of what is given
    (missing axes at eta 1, N 1,000, seed 0)."""
    if args.n is None and args.eta is None and args.seeds is None:
        return list(DEFAULT_PLAN)
    return [
        (eta, n, seed)
        for eta in args.eta or [1.0]
        for n in args.n or [1000]
        for seed in args.seeds or [0]
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=None, help="impressions")
    parser.add_argument("--eta", type=float, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=["naive", "additive", "oracle"]
    )
    add_display_argument(
        parser, "several: they take turns by impression (ips_estimated needs bm25 backbone)"
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--overlay", nargs="*", default=[], help="configs stacked after it")
    parser.add_argument("--max-epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--set", nargs="*", default=[], help="more main.py arguments")
    parser.add_argument("--wikiqa", default=str(WIKIQA_GROUPED), help="wikiqa_grouped.jsonl")
    parser.add_argument("--trec-dl", action="store_true", help="also score TREC DL 2019/2020")
    parser.add_argument("--trec-dl-dir", default=None)
    parser.add_argument("--work-dir", default="logs/learning_curve")
    parser.add_argument("--output", help="the report (JSON); required unless --replot")
    parser.add_argument("--plot", default=None, help="also draw the curve into this PNG")
    parser.add_argument("--replot", nargs="+", default=None, help="reports to draw, no fits")
    args = parser.parse_args(argv)
    if args.replot is None and args.output is None:
        parser.error("--output is required (unless --replot)")
    if args.replot is not None and args.plot is None:
        parser.error("--replot needs --plot")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.replot is not None:
        reports = [json.loads(Path(p).read_text()) for p in args.replot]
        plot_curve(reports, args.plot, (args.eta or [1.0])[0])
        return {"plotted": args.plot, "from": args.replot}
    work_dir = Path(args.work_dir)
    if Path(args.output).exists():
        raise SystemExit(f"{args.output} exists: choose a new file")
    train_lists = load_labelled_lists(WIKIQA_FEEDBACK, query_id_prefix="wikiqa-train-")
    _, wikiqa_score, wikiqa_display = wikiqa_test_set(Path(args.wikiqa))
    dev_lists = in_display_order(
        load_labelled_lists(WIKIQA_FEEDBACK, query_id_prefix="wikiqa-dev-"), BM25Order()
    )

    def dev_score(reranker) -> dict[str, float]:
        return mean_metrics(true_label_metrics(dev_lists, reranker_scores(reranker, dev_lists)))

    # WikiQA dev (true labels, not simulated from) is where recipes are compared and chosen;
    # WikiQA test and TREC DL are reported, never chosen on.
    test_sets = {"wikiqa_dev": dev_score, "wikiqa_test": wikiqa_score}
    if args.trec_dl:
        test_sets.update(trec_dl_test_sets(args.trec_dl_dir))
    report: dict[str, Any] = {
        "benchmark": "learning curve on simulated feedback (benchmarks/learning_curve.py)",
        "machine": describe_cpu(),
        "python": platform.python_version(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "baselines": {"display (BM25)": {"wikiqa_test": wikiqa_display}},
        "runs": [],
    }
    backbone = untouched_backbone(work_dir / "backbone")
    report["baselines"]["untouched backbone"] = score_reranker(backbone, test_sets)
    print(json.dumps(report["baselines"], indent=1), flush=True)
    points = plan(args)
    report["settings"]["points (eta, n, seed)"] = points
    display = display_policy(args.display, work_dir / "display", seed=points[0][2])
    for eta, n, seed in points:
        displayed = "+".join(args.display)
        point = work_dir / f"{displayed}_eta{eta:g}_n{n}_seed{seed}"
        point.mkdir(parents=True, exist_ok=True)
        user = PositionBasedUser(eta=eta)
        records = simulate(train_lists, display, user, n_impressions=n, seed=seed)
        picks = point / "picks.json"
        oracle = point / "oracle.json"
        if not picks.exists():
            write_feedback(records, picks)
            write_feedback(with_true_labels(records), oracle)
        for method in args.methods:
            train_file = oracle if method == "oracle" else picks
            export, figures = fit(train_file, method, eta, point, args)
            run = {"display": displayed, "eta": eta, "n": n, "seed": seed}
            run.update(method=method, **figures)
            run["test"] = score_export(export, test_sets)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
            Path(args.output).write_text(json.dumps(report, indent=1))
    summary = {}
    for run in report["runs"]:
        key = f"eta={run['eta']:g} n={run['n']} {run['method']}"
        summary.setdefault(key, []).append(run["test"]["wikiqa_test"]["ndcg@10"])
    report["summary_wikiqa_ndcg@10"] = {k: float(np.mean(v)) for k, v in summary.items()}
    dev = {}
    for run in report["runs"]:
        key = f"eta={run['eta']:g} n={run['n']} {run['method']}"
        dev.setdefault(key, []).append(run["test"]["wikiqa_dev"]["ndcg@10"])
    report["summary_wikiqa_dev_ndcg@10"] = {k: float(np.mean(v)) for k, v in dev.items()}
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary_wikiqa_ndcg@10"], indent=1))
    if args.plot:
        plot_curve([report], args.plot, points[0][0])
    return report


if __name__ == "__main__":
    main()
