"""Simulated app feedback from lists with true labels: what a position-biased user would pick.

Reads lists whose true relevance is known (app-format files: WikiQA's labels in
``training_data/wikiqa_feedback.json``, the MS MARCO sample's human picks, any file with
``relevance`` grades), shows each list in a display policy's order, lets a position-based user
(:mod:`simulation.users`) pick among the ``--shown`` first sources, and writes the impressions as
``reranker_training_data.json`` (the true grades kept under ``simulation``; ``--oracle-output``
also writes the same impressions labelled with them). Prints what the log holds: picks per
impression, how many of them are relevant, and the pick rate by rank beside the true
examination probability.

    python benchmarks/simulate_feedback.py --output /tmp/sim/picks.json
    python benchmarks/simulate_feedback.py --input training_data/wikiqa_feedback.json \\
        --query-id-prefix wikiqa-train- --display bm25 --eta 1 --impressions 1000 \\
        --output /tmp/sim/picks.json --oracle-output /tmp/sim/oracle.json
    python benchmarks/simulate_feedback.py --display backbone ...   # the untouched model's order

Deterministic from ``--seed``. Never overwrites a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from simulation.display import add_display_argument, display_policy  # noqa: E402
from simulation.labelled import load_labelled_lists  # noqa: E402
from simulation.simulator import simulate, with_true_labels, write_feedback  # noqa: E402
from simulation.users import PositionBasedUser  # noqa: E402

DEFAULT_INPUT = str(REPO_ROOT / "training_data" / "wikiqa_feedback.json")


def summary(records: Sequence[dict[str, Any]], user: PositionBasedUser, shown: int) -> dict:
    picks = [r["simulation"]["picked_ranks"] for r in records]
    truth = [r["simulation"]["true_relevance"] for r in records]
    n_picks = sum(len(p) for p in picks)
    relevant_picks = sum(
        truth_i[r["all_sources"][k - 1]["url"]] > 0
        for r, p, truth_i in zip(records, picks, truth, strict=True)
        for k in p
    )
    by_rank = np.zeros(shown)
    for p in picks:
        for k in p:
            by_rank[k - 1] += 1
    return {
        "impressions": len(records),
        "queries": len({r["query_id"] for r in records}),
        "picks_per_impression": n_picks / max(1, len(records)),
        "impressions_without_picks": sum(not p for p in picks),
        "share_of_picks_relevant": relevant_picks / max(1, n_picks),
        "impressions_with_a_relevant_source_shown": sum(
            any(g > 0 for g in t.values()) for t in truth
        ),
        "pick_rate_by_rank": (by_rank / max(1, len(records))).round(4).tolist(),
        "examination_by_rank": user.examination(shown).round(4).tolist(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", nargs="+", default=[DEFAULT_INPUT], help="app-format files")
    parser.add_argument("--query-id-prefix", default="wikiqa-train-", help="'' for every list")
    add_display_argument(
        parser, "several: they take turns by impression (the app's order changing over time)"
    )
    parser.add_argument("--plot", default=None, help="examination by rank, estimated and true")
    parser.add_argument("--eta", type=float, default=1.0, help="position-bias strength")
    parser.add_argument("--relevant-pick", type=float, default=PositionBasedUser.relevant_pick)
    parser.add_argument("--irrelevant-pick", type=float, default=PositionBasedUser.irrelevant_pick)
    parser.add_argument("--max-picks", type=int, default=PositionBasedUser.max_picks)
    parser.add_argument("--max-grade", type=float, default=PositionBasedUser.max_grade)
    parser.add_argument("--impressions", type=int, default=None, help="default: one per list")
    parser.add_argument("--shown", type=int, default=10, help="sources the app shows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="the simulated picks (a new file)")
    parser.add_argument("--oracle-output", default=None, help="the same, with true labels")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    for path in (args.output, args.oracle_output):
        if path and Path(path).exists():
            raise SystemExit(f"{path} exists: choose a new file")
    lists = load_labelled_lists(args.input, query_id_prefix=args.query_id_prefix or None)
    if not lists:
        raise SystemExit(f"no lists in {args.input} with query_id prefix {args.query_id_prefix!r}")
    user = PositionBasedUser(
        eta=args.eta,
        relevant_pick=args.relevant_pick,
        irrelevant_pick=args.irrelevant_pick,
        max_picks=args.max_picks,
        max_grade=args.max_grade,
    )
    with tempfile.TemporaryDirectory(prefix="simulate-") as work_dir:
        display = display_policy(args.display, work_dir, seed=args.seed)
        records = simulate(
            lists, display, user, n_impressions=args.impressions, shown=args.shown, seed=args.seed
        )
    write_feedback(records, args.output)
    if args.oracle_output:
        write_feedback(with_true_labels(records), args.oracle_output)
    report = {
        "display": "+".join(args.display),
        "user": {
            k: getattr(args, k) for k in ("eta", "relevant_pick", "irrelevant_pick", "max_picks")
        },
        "seed": args.seed,
        **summary(records, user, args.shown),
    }
    report["estimated_examination"] = estimated_examination(
        args.output, args.shown, user, args.plot
    )
    print(json.dumps(report, indent=1))
    return report


def estimated_examination(path: str, shown: int, user: PositionBasedUser, plot: str | None):
    """Intervention harvesting on the written log (:mod:`datamodules.propensity`), beside the
    truth; ``None`` when the display never changed (nothing to harvest)."""
    from datamodules.propensity import estimate_propensities
    from datamodules.propensity import plot as plot_estimate
    from datamodules.reranker_records import load_reranker_feedback

    records, _ = load_reranker_feedback(path)
    try:
        estimate = estimate_propensities(records, n_ranks=shown)
    except ValueError as error:
        return {"estimate": None, "why": str(error)}
    if plot:
        plot_estimate(estimate, plot, reference=user.examination(shown).tolist())
    return {"estimate": estimate.propensities, "true": user.examination(shown).round(4).tolist()}


if __name__ == "__main__":
    main()
