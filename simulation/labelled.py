"""Lists whose true relevance is known: the simulator's input.

Read from app-format ``reranker_data`` files through the project's one parser: a source's true
grade is its ``relevance`` grade where the record has one, else 1 for a ``positive_sources`` url
and 0 for the rest. That covers WikiQA (``training_data/wikiqa_feedback.json``: WikiQA's labels),
the MS MARCO sample (the human ``is_selected`` flags) and any file with graded ``relevance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datamodules.feedback import RerankerRecord, Source
from datamodules.reranker_records import load_reranker_feedback

REPO_ROOT = Path(__file__).resolve().parents[1]
# WikiQA as the benchmarks read it: train + dev labels shipped in the app's format, dev alone
# (the gate's canary, where the benchmarks choose), and the data set's grouped file for test
WIKIQA_FEEDBACK = REPO_ROOT / "training_data" / "wikiqa_feedback.json"
WIKIQA_DEV = REPO_ROOT / "training_data" / "wikiqa_dev_canary.json"
WIKIQA_GROUPED = REPO_ROOT.parent / "shared" / "data" / "wikiqa" / "wikiqa_grouped.jsonl"


@dataclass(frozen=True)
class LabelledList:
    query: str
    query_id: str
    sources: tuple[Source, ...]
    grades: tuple[float, ...]  # true grade of each source

    @property
    def has_relevant(self) -> bool:
        return any(g > 0 for g in self.grades)


def from_record(record: RerankerRecord) -> LabelledList:
    return LabelledList(record.query, record.query_id, record.sources, record.grades)


def load_labelled_lists(
    paths: str | Path | Sequence[str | Path], *, query_id_prefix: str | None = None
) -> list[LabelledList]:
    """The lists of app-format files (files, folders or globs), optionally only those whose
    ``query_id`` starts with ``query_id_prefix`` (e.g. ``wikiqa-train-``)."""
    records, _ = load_reranker_feedback(paths, on_invalid="error")
    lists = [from_record(r) for r in records]
    if query_id_prefix is not None:
        lists = [item for item in lists if item.query_id.startswith(query_id_prefix)]
    return lists


def wikiqa_lists(path: str | Path, split: str) -> list[LabelledList]:
    """One split of WikiQA's ``wikiqa_grouped.jsonl`` as labelled lists, read for scoring (the
    test split is a benchmark: it is read here, never written out as training data). Query ids
    and urls follow the converter's (``wikiqa-{split}-{n}``, ``wikiqa://{split}/{n}/{i}``)."""
    from datamodules.converters.wikiqa import read_wikiqa

    lists, n = [], 0
    for row in read_wikiqa(path):
        if row.get("split") != split:
            continue
        sources, grades = [], []
        for i, candidate in enumerate(row.get("candidates") or []):
            sources.append(
                Source(
                    title=(candidate.get("title") or "").strip(),
                    url=f"wikiqa://{split}/{n}/{i}",
                    snippet=(candidate.get("sentence") or "").strip(),
                )
            )
            grades.append(float(candidate.get("label") or 0))
        if sources:
            query = (row.get("query") or "").strip()
            lists.append(LabelledList(query, f"wikiqa-{split}-{n}", tuple(sources), tuple(grades)))
        n += 1
    return lists
