"""Convert a public data set into one of the app's training data formats.

Usage::

    python -m datamodules.converters msmarco --input ms_marco_sample.json \\
        --output training_data/msmarco_sample_feedback.json
    python -m datamodules.converters trec-session --input session2013_serps.jsonl \\
        --output training_data/trec_session2013_feedback.json
    python -m datamodules.converters wikiqa --input wikiqa_grouped.jsonl \\
        --output training_data/wikiqa_feedback.json [--splits train dev]
    python -m datamodules.converters trec-session-rewriting --input session2013_serps.jsonl \\
        --output training_data/trec_session2013_rewriting.json
    python -m datamodules.converters canard --input canard_pairs.jsonl \\
        --output /tmp/canard_train_pairs.jsonl [--history rewrites|questions]

``msmarco``, ``trec-session`` and ``wikiqa`` write reranker feedback (``{"reranker_data": [...]}``),
``trec-session-rewriting`` query-rewriting feedback (``{"query_rewriting_data": [...]}``) and
``canard`` rewrite pairs as JSON Lines (CC BY-SA: keep its output out of the repository).

An existing output is never replaced unless ``--overwrite`` is given. Every converted record is
checked before anything is written (reranker records with
:func:`datamodules.reranker_records.parse_reranker_record`, query-rewriting records with
:func:`datamodules.rewrite_feedback.parse_rewriting_record` and the stricter
:func:`.trec_session_rewriting.check_rewriting_record`, pairs with :func:`.canard.check_pair`
and :func:`datamodules.rewrite_feedback.parse_rewrite_pair`), and the file is written atomically
(temp file, then ``os.replace``). Counts go to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.converters import ConversionReport, feedback_counts, write_feedback_file
from datamodules.converters.canard import (
    HISTORY_MODES,
    check_pair,
    convert_canard,
    pair_counts,
    read_canard,
)
from datamodules.converters.msmarco import convert_msmarco, read_msmarco
from datamodules.converters.trec_session import convert_trec_session, read_trec_session
from datamodules.converters.trec_session_rewriting import (
    check_rewriting_record,
    convert_trec_session_rewriting,
    read_trec_session_rewriting,
    rewriting_counts,
)
from datamodules.converters.wikiqa import TRAINABLE_SPLITS, convert_wikiqa, read_wikiqa
from datamodules.reranker_records import parse_reranker_record
from datamodules.rewrite_feedback import parse_rewrite_pair, parse_rewriting_record

Converter = Callable[[argparse.Namespace, ConversionReport], list[dict[str, Any]]]


def _check_rewriting(record: Any, file: str, index: int) -> None:
    check_rewriting_record(record, file, index)  # stricter: distinct urls, selected are shown
    parse_rewriting_record(record, file, index)  # what training will read


def _reranker_summary(records: list[dict[str, Any]]) -> str:
    c = feedback_counts(records)
    return (
        f"{c['records']} records, {c['sources']} sources, {c['positives']} positives, "
        f"{c['records_without_positive']} records without a positive"
    )


def _rewriting_summary(records: list[dict[str, Any]]) -> str:
    c = rewriting_counts(records)
    return (
        f"{c['records']} records, {c['candidates']} candidates, {c['sources']} sources, "
        f"{c['selected_sources']} selected sources, {c['later_query_covers_more']} records where "
        "a later query covers more selected sources than the original"
    )


def _pairs_summary(records: list[dict[str, Any]]) -> str:
    c = pair_counts(records)
    return (
        f"{c['pairs']} pairs, {c['with_history']} with history ({c['history_turns']} turns), "
        f"{c['target_equals_source']} with target == source"
    )


@dataclass(frozen=True)
class OutputFormat:
    """How a converter's records are checked, written and summarised."""

    check: Callable[[Any, str, int], Any]
    summary: Callable[[list[dict[str, Any]]], str]
    top_key: str = "reranker_data"
    jsonl: bool = False


RERANKER = OutputFormat(parse_reranker_record, _reranker_summary)
REWRITING = OutputFormat(_check_rewriting, _rewriting_summary, top_key="query_rewriting_data")


def _check_pair(record: Any, file: str, index: int) -> None:
    check_pair(record, file, index)
    parse_rewrite_pair(record, file, index)


PAIRS = OutputFormat(_check_pair, _pairs_summary, jsonl=True)

CONVERTERS: dict[str, tuple[str, Converter, OutputFormat]] = {
    "msmarco": (
        "MS MARCO v1.1 QnA rows (JSON list or JSONL); non-commercial research use",
        lambda a, r: convert_msmarco(read_msmarco(a.input), report=r),
        RERANKER,
    ),
    "trec-session": (
        "TREC Session Track 2013 session2013_serps.jsonl (clicks = positives)",
        lambda a, r: convert_trec_session(
            read_trec_session(a.input), report=r, negatives=a.negatives
        ),
        RERANKER,
    ),
    "wikiqa": (
        "WikiQA wikiqa_grouped.jsonl, train/dev only (test is refused); non-commercial research",
        lambda a, r: convert_wikiqa(read_wikiqa(a.input), splits=a.splits, report=r),
        RERANKER,
    ),
    "trec-session-rewriting": (
        "TREC Session Track 2013 session2013_serps.jsonl -> query-rewriting feedback (an "
        "earlier query, the session's later queries with their results, the clicked results)",
        lambda a, r: convert_trec_session_rewriting(read_trec_session_rewriting(a.input), report=r),
        REWRITING,
    ),
    "canard": (
        "CANARD canard_pairs.jsonl, train split only (dev is test-only) -> rewrite pairs "
        "(JSON Lines); CC BY-SA 4.0: write it outside the repository",
        lambda a, r: convert_canard(read_canard(a.input), history=a.history, report=r),
        PAIRS,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.converters",
        description=(
            "Convert a public data set into the app's training data: reranker feedback, "
            "query-rewriting feedback or rewrite pairs (see each data set's help)."
        ),
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, (help_text, _, fmt) in CONVERTERS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--input", required=True, type=Path, help="the data set's file")
        p.add_argument(
            "--output",
            required=True,
            type=Path,
            help="JSON Lines file to write" if fmt.jsonl else f"{fmt.top_key} .json to write",
        )
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        if name == "wikiqa":
            p.add_argument(
                "--splits",
                nargs="+",
                default=list(TRAINABLE_SPLITS),
                choices=TRAINABLE_SPLITS,
                help="WikiQA splits to convert (default: train dev; test is never converted)",
            )
        if name == "trec-session":
            p.add_argument(
                "--negatives",
                choices=("all", "skip_above"),
                default="all",
                help="every unclicked result (default), or only those skipped above a click",
            )
        if name == "canard":
            p.add_argument(
                "--history",
                choices=HISTORY_MODES,
                default="rewrites",
                help="earlier turns as their self-contained rewrites (default, what a rewriting "
                "app carries forward) or as the raw questions",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output.exists() and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    if not args.input.is_file():
        print(f"error: {args.input}: no such file", file=sys.stderr)
        return 1

    report = ConversionReport()
    _, convert, fmt = CONVERTERS[args.dataset]
    try:
        records = convert(args, report)
    except (ValueError, KeyError, TypeError) as err:
        print(f"error: {args.input}: cannot convert: {err!r}", file=sys.stderr)
        return 1
    if not records:
        print(f"error: {args.input}: no record to write", file=sys.stderr)
        return 1
    try:
        for index, record in enumerate(records):
            fmt.check(record, str(args.output), index)
    except ValueError as err:  # FeedbackError, or a parser's own ValueError
        print(f"error: converted record is invalid: {err}", file=sys.stderr)
        return 1
    try:
        write_feedback_file(
            records,
            args.output,
            overwrite=args.overwrite,
            top_key=fmt.top_key,
            jsonl=fmt.jsonl,
        )
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    print(f"{args.dataset}: read {report.read} rows from {args.input}")
    print(f"wrote {args.output}: {fmt.summary(records)}")
    for reason, n in report.dropped.most_common():
        print(f"dropped {n} x {reason}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
