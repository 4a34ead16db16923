"""Convert a public data set into an app feedback file.

Usage::

    python -m datamodules.converters msmarco --input ms_marco_sample.json \\
        --output training_data/msmarco_sample_feedback.json
    python -m datamodules.converters trec-session --input session2013_serps.jsonl \\
        --output training_data/trec_session2013_feedback.json
    python -m datamodules.converters wikiqa --input wikiqa_grouped.jsonl \\
        --output training_data/wikiqa_feedback.json [--splits train dev]

An existing output is never replaced unless ``--overwrite`` is given. Every converted record is
checked with :func:`datamodules.feedback.parse_reranker_record` before anything is written, and
the file is written atomically (temp file, then ``os.replace``). Counts go to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datamodules.converters import ConversionReport, feedback_counts, write_feedback_file
from datamodules.converters.msmarco import convert_msmarco, read_msmarco
from datamodules.converters.trec_session import convert_trec_session, read_trec_session
from datamodules.converters.wikiqa import TRAINABLE_SPLITS, convert_wikiqa, read_wikiqa
from datamodules.feedback import FeedbackError, parse_reranker_record

Converter = Callable[[argparse.Namespace, ConversionReport], list[dict[str, Any]]]

CONVERTERS: dict[str, tuple[str, Converter]] = {
    "msmarco": (
        "MS MARCO v1.1 QnA rows (JSON list or JSONL); non-commercial research use",
        lambda a, r: convert_msmarco(read_msmarco(a.input), report=r),
    ),
    "trec-session": (
        "TREC Session Track 2013 session2013_serps.jsonl (clicks = positives)",
        lambda a, r: convert_trec_session(
            read_trec_session(a.input), report=r, negatives=a.negatives
        ),
    ),
    "wikiqa": (
        "WikiQA wikiqa_grouped.jsonl, train/dev only (test is refused); non-commercial research",
        lambda a, r: convert_wikiqa(read_wikiqa(a.input), splits=a.splits, report=r),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.converters",
        description="Convert a public data set into the app's reranker feedback format.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, (help_text, _) in CONVERTERS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--input", required=True, type=Path, help="the data set's file")
        p.add_argument("--output", required=True, type=Path, help="feedback .json to write")
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
    try:
        records = CONVERTERS[args.dataset][1](args, report)
    except (ValueError, KeyError, TypeError) as err:
        print(f"error: {args.input}: cannot convert: {err!r}", file=sys.stderr)
        return 1
    if not records:
        print(f"error: {args.input}: no record to write", file=sys.stderr)
        return 1
    try:
        for index, record in enumerate(records):
            parse_reranker_record(record, str(args.output), index)
    except FeedbackError as err:
        print(f"error: converted record is invalid: {err}", file=sys.stderr)
        return 1
    try:
        write_feedback_file(records, args.output, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    counts = feedback_counts(records)
    print(f"{args.dataset}: read {report.read} rows from {args.input}")
    print(
        f"wrote {args.output}: {counts['records']} records, {counts['sources']} sources, "
        f"{counts['positives']} positives, "
        f"{counts['records_without_positive']} records without a positive"
    )
    for reason, n in report.dropped.most_common():
        print(f"dropped {n} x {reason}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
