"""Listwise batches of feedback for reranker training, validation, testing and prediction."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import FeedbackDataModule
from datamodules.distributed import evaluation_sampler
from datamodules.feedback import (
    FeedbackError,
    LabelMode,
    OnInvalid,
    ParseReport,
    RerankerRecord,
    clip_text,
    parse_timestamp,
    render_document,
)
from datamodules.feedback_table import FactSpec, FeedbackTable, index_feedback
from datamodules.reranker_records import parse_reranker_record
from datamodules.resumable import ShuffleSampler, mix_seed
from datamodules.split import (
    SplitMode,
    hash_validation_mask,
    normalise_query,
    normalised_query_bucket,
    time_validation_mask,
)

log = logging.getLogger(__name__)


class InputEncoder(Protocol):
    """What the collator needs from the model: its lists (queries and their documents' texts)
    as model inputs. The rerankers' encoders are in :mod:`lightning_modules.encoding`."""

    def __call__(self, queries: list[str], documents: list[list[str]]) -> dict[str, Any]: ...


DEFAULT_DOCUMENT_TEMPLATE = "{title}\n{snippet}"


def reranker_facts(record: RerankerRecord, salt: str = "") -> tuple:
    """What the data module needs of a record without re-reading it (see :data:`FACT_TYPES`)."""
    normalised = normalise_query(record.query)
    query_key = hashlib.blake2b(normalised.encode("utf-8", "surrogatepass"), digest_size=8)
    try:
        time = parse_timestamp(record.timestamp, file=record.origin, index=-1).timestamp()
    except FeedbackError:  # no or no readable time: only the time split needs one (checked)
        time = math.nan
    return (
        normalised_query_bucket(normalised, salt),
        int.from_bytes(query_key.digest(), "big"),
        time,
        record.has_contrast,
        record.has_positive,
        len(record.sources),
    )


# bucket: the hash split's number for the query; query_key: 64-bit digest of the normalised
# query (val_files leave out training records with the same query); time: POSIX seconds or NaN.
FACT_TYPES = {
    "bucket": "d",
    "query_key": "Q",
    "time": "d",
    "has_contrast": "b",
    "has_positive": "b",
    "n_sources": "q",
}


def index_reranker_feedback(
    paths: str | Sequence[str],
    *,
    label_mode: LabelMode = "binary",
    on_invalid: OnInvalid = "error",
    deduplicate: bool = False,
    require_timestamp: bool = False,
    split_salt: str = "",
    workers: int | None = None,
) -> tuple[FeedbackTable[RerankerRecord], ParseReport]:
    """:func:`~datamodules.reranker_records.load_reranker_feedback` as a
    :class:`FeedbackTable`: what the data module holds, so that a log of millions of records
    fits in memory."""
    return index_feedback(
        paths,
        top_key="reranker_data",
        parse_record=functools.partial(
            parse_reranker_record, label_mode=label_mode, require_timestamp=require_timestamp
        ),
        facts=FactSpec(FACT_TYPES, functools.partial(reranker_facts, salt=split_salt)),
        on_invalid=on_invalid,
        dedupe_key=content_key if deduplicate else None,
        workers=workers,
    )


def content_key(record: RerankerRecord):
    """(A module-level function: the worker processes of a large load receive it pickled.)"""
    return record.content_key


@dataclass
class RerankList:
    """One query's (possibly sampled) list, before collation."""

    record_index: int
    query: str
    documents: list[str]
    grades: list[float]
    positions: list[int]  # display positions (0 = shown first) of the documents kept


@dataclass
class RerankBatch:
    """B queries x up to L documents.

    ``labels``/``mask``/``display_rank`` are ``[B, L]``; ``inputs`` holds model inputs for the
    real documents only, in row-major order of ``mask`` (``scores[mask] = model(inputs)``).
    """

    inputs: dict[str, dict[str, torch.Tensor]]
    labels: torch.Tensor
    mask: torch.Tensor
    display_rank: torch.Tensor
    record_index: torch.Tensor
    positions: list[list[int]] = field(default_factory=list)

    @property
    def display_scores(self) -> torch.Tensor:
        """Scores that reproduce the order the app showed (first shown = highest)."""
        return -self.display_rank.to(torch.float32)


class RerankListDataset(Dataset):
    """Records as lists; in sampling mode keeps every positive and samples negatives.

    ``max_docs`` caps the list: positives first, then a uniform sample of negatives fills the
    rest. Positives that would fill more than the cap less half of it (or less every negative,
    when there are fewer) are sampled down, so that a sampled list always keeps its contrast.
    Training lists hold judged sources only. Sampling is seeded per (seed, epoch, record), so
    that it is reproducible and a resumed run draws the same lists. Kept documents stay in
    display order.
    """

    def __init__(
        self,
        records: Sequence[RerankerRecord],
        document_template: str,
        max_docs: int | None,
        sample: bool,
        max_chars: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.records = records  # (a FeedbackTable re-reads each record when asked: keep it so)
        self.document_template = document_template
        self.max_docs = max_docs
        self.sample = sample
        self.max_chars = max_chars
        self.seed = torch.initial_seed() if seed is None else seed

    def __len__(self) -> int:
        return len(self.records)

    def _choose_positions(
        self, record: RerankerRecord, generator: torch.Generator | None = None
    ) -> list[int]:
        if not self.sample:  # evaluation: the list as shown (capped: what was shown first)
            return list(range(len(record.sources)))[: self.max_docs]
        # Training: judged sources only (see RerankerRecord.judged).
        judged = [p for p, j in enumerate(record.judged) if j]
        if self.max_docs is None or len(judged) <= self.max_docs:
            return judged
        positives = [p for p in judged if record.grades[p] > 0]
        negatives = [p for p in judged if record.grades[p] <= 0]
        # Picks crowding the list must leave room for negatives: a list of picks only has
        # nothing to rank (half the list, or every negative when there are fewer).
        max_positives = self.max_docs - min(len(negatives), self.max_docs // 2)
        if len(positives) > max_positives:
            order = torch.randperm(len(positives), generator=generator)
            positives = [positives[i] for i in order[:max_positives]]
        room = self.max_docs - len(positives)
        order = torch.randperm(len(negatives), generator=generator)
        chosen_negatives = [negatives[i] for i in order[:room]]
        return sorted(positives + chosen_negatives)

    def __getitem__(self, item: int | tuple[int, int]) -> RerankList:
        # A resumable sampler yields (index, epoch): the sample then depends on nothing else.
        index, epoch = item if isinstance(item, tuple) else (item, None)
        generator = None
        if epoch is not None:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        record = self.records[index]
        positions = self._choose_positions(record, generator)
        return RerankList(
            record_index=index,
            query=clip_text(record.query, self.max_chars),
            documents=[
                render_document(self.document_template, record.sources[p], self.max_chars)
                for p in positions
            ],
            grades=[record.grades[p] for p in positions],
            positions=positions,
        )


@dataclass
class ListwiseCollator:
    """Stacks lists into a :class:`RerankBatch` and tokenises with the model's encoder."""

    input_encoder: InputEncoder

    def __call__(self, lists: list[RerankList]) -> RerankBatch:
        width = max(len(item.documents) for item in lists)
        labels = torch.zeros(len(lists), width)
        mask = torch.zeros(len(lists), width, dtype=torch.bool)
        display_rank = torch.zeros(len(lists), width, dtype=torch.long)
        for row, item in enumerate(lists):
            n = len(item.documents)
            labels[row, :n] = torch.tensor(item.grades)
            mask[row, :n] = True
            display_rank[row, :n] = torch.tensor(item.positions)
        return RerankBatch(
            inputs=self.input_encoder([i.query for i in lists], [i.documents for i in lists]),
            labels=labels,
            mask=mask,
            display_rank=display_rank,
            record_index=torch.tensor([i.record_index for i in lists]),
            positions=[i.positions for i in lists],
        )


class RerankerDataModule(FeedbackDataModule):
    """Reads reranker feedback and serves listwise batches.

    Args:
        train_files: feedback files, directories or globs (JSON or JSON Lines) to learn from;
            a deterministic hash of each normalised query sends ``validation_fraction`` of the
            queries to validation instead.
        val_files: explicit validation feedback. When given, no hash split is made and training
            drops any record whose query also appears here.
        test_files: feedback for ``main.py test`` (same metrics as validation).
        predict_files: feedback-format files to rerank with ``main.py predict``.
        validation_fraction: share of queries held out for validation.
        split: ``hash`` (default): a hash of each normalised query decides its side, stable as
            feedback grows. ``time``: the newest ``validation_fraction`` of the records (by
            ``timestamp``) validate and all older ones train, as a deployed model meets them;
            every record then needs a valid ISO 8601 ``timestamp`` (``on_invalid`` applies).
        deduplicate: drop repeated records (the same normalised query with the same sources
            and the same picks), counted in the load report; the first copy is kept.
        split_salt: changes which queries are held out by the hash split, reproducibly.
        label_mode: ``binary`` (picked = 1) or ``pick_order`` (1st/2nd/3rd pick = 3/2/1).
        on_invalid: ``error`` stops at the first bad record; ``skip`` drops and reports them.
        document_template: how a source becomes text, over ``{title}``, ``{snippet}``, ``{url}``.
        batch_size: queries per training batch.
        eval_batch_size: queries per validation/test/predict batch (``None``: ``batch_size``;
            64: their pairs, sorted by length, pad less).
        max_docs_per_query: list cap in training (all positives kept, negatives sampled; picks
            that would take more than half the list are sampled down to leave room).
        max_docs_per_query_eval: list cap in validation and test (the first sources shown are
            kept); ``None`` keeps whole lists. Prediction always ranks whole lists.
        max_text_chars: queries and each source field are clipped to this many characters
            before tokenisation (far above what ``max_length`` tokens hold), so that a
            multi-megabyte snippet costs no more than a normal one.
        num_workers: DataLoader worker processes (tokenisation runs there).
        index_workers: processes that read and validate JSON Lines logs of 64 MiB or more at
            setup (``None``: one per core, at most 8; ``1``: none).
        train_on_uniform_lists: training normally drops lists whose labels are all equal (no
            pick, or everything picked): ranking losses get nothing from them. Set true to keep
            them, e.g. for the pointwise loss, which learns "not relevant" from them.
        input_encoder: how lists become model inputs (the model's tokenizer, lengths and
            chunking: ``BiEncoderInputs``/``CrossEncoderInputs``). ``main.py`` links it from the
            model (``model.input_encoder()``), so the data module never looks at the model;
            elsewhere pass it (or set ``datamodule.input_encoder``) before ``setup``.
    """

    items_name = "records"
    nothing_to_learn = "No training list has both a picked and an unpicked source"

    def __init__(
        self,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        predict_files: list[str] | None = None,
        validation_fraction: float = 0.2,
        split: SplitMode = "hash",
        deduplicate: bool = True,
        split_salt: str = "",
        label_mode: LabelMode = "binary",
        on_invalid: OnInvalid = "error",
        document_template: str = DEFAULT_DOCUMENT_TEMPLATE,
        batch_size: int = 8,
        eval_batch_size: int | None = 64,
        max_docs_per_query: int = 16,
        max_docs_per_query_eval: int | None = 100,
        max_text_chars: int = 8192,
        num_workers: int = 0,
        index_workers: int | None = None,
        train_on_uniform_lists: bool = False,
        input_encoder: InputEncoder | None = None,
    ) -> None:
        super().__init__(
            train_files=train_files,
            val_files=val_files,
            test_files=test_files,
            predict_files=predict_files,
            validation_fraction=validation_fraction,
            split=split,
            deduplicate=deduplicate,
            split_salt=split_salt,
            on_invalid=on_invalid,
            max_text_chars=max_text_chars,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            input_encoder=input_encoder,
        )
        # (the encoder holds the model's tokenizer: it belongs to the model's checkpoint)
        self.save_hyperparameters(ignore=["input_encoder"])
        self.label_mode = label_mode
        self.document_template = document_template
        self.max_docs_per_query = max_docs_per_query
        self.max_docs_per_query_eval = max_docs_per_query_eval
        self.index_workers = index_workers
        self.train_on_uniform_lists = train_on_uniform_lists
        # Validated records (train_records, val_records, ...), held as where they lie in the
        # files (see FeedbackTable).

    # -- loading ---------------------------------------------------------------------------

    def load(self, name: str, files: list[str]) -> FeedbackTable[RerankerRecord]:
        records, report = index_reranker_feedback(
            files,
            label_mode=self.label_mode,
            on_invalid=self.on_invalid,
            deduplicate=self.deduplicate,
            require_timestamp=name == "train" and self.split == "time" and not self.val_files,
            split_salt=self.split_salt,
            workers=self.index_workers,
        )
        self.reports[name] = report
        return records

    def split_fit(self, records) -> None:
        if not self.train_files:
            records = FeedbackTable.from_records([], FactSpec(FACT_TYPES, reranker_facts))
        if self.val_files:
            held_out = np.isin(records.facts["query_key"], self.val_records.facts["query_key"])
            train = records.select(~held_out)
            if held_out.any():
                log.info("Dropped %d training records whose query is in val_files", held_out.sum())
        else:
            if self.split == "hash":
                is_val = hash_validation_mask(records.facts["bucket"], self.validation_fraction)
            elif self.split == "time":
                is_val = time_validation_mask(records.facts["time"], self.validation_fraction)
            else:
                raise ValueError(f"split must be 'hash' or 'time', got {self.split!r}")
            train, self.val_records = records.select(~is_val), records.select(is_val)
        if self.train_on_uniform_lists:
            self.train_records = train
        else:
            self.train_records = train.select(train.facts["has_contrast"])
        log.info(
            "Reranker data: %d training lists (%d without a pick or with everything picked "
            "left out of training), %d validation lists (%d with a pick)",
            len(self.train_records),
            len(train) - len(self.train_records),
            len(self.val_records),
            int(self.val_records.facts["has_positive"].sum()),
        )

    # -- loaders ---------------------------------------------------------------------------

    def loader(self, records, stage: str) -> DataLoader:
        train = stage == "train"
        cap = self.max_docs_per_query if train else self.max_docs_per_query_eval
        if stage == "predict":  # prediction ranks whole lists
            cap = None
        elif cap is not None and not train:  # (training samples within its cap: see the dataset)
            if isinstance(records, FeedbackTable):  # (without re-reading every record)
                capped = int((records.facts["n_sources"] > cap).sum())
            else:
                capped = sum(len(r.sources) > cap for r in records)
            if capped:
                log.warning(
                    "%d evaluation lists have more than %d sources: the first %d shown are used",
                    capped,
                    cap,
                    cap,
                )
        dataset = RerankListDataset(
            records, self.document_template, cap, sample=train, max_chars=self.max_text_chars
        )
        common = {
            "num_workers": self.num_workers,
            "collate_fn": ListwiseCollator(self.input_encoder),
            "persistent_workers": self.num_workers > 0,
        }
        if not train:
            return DataLoader(
                dataset,
                batch_size=self.eval_batch_size,
                sampler=evaluation_sampler(self, dataset),
                **common,
            )
        sampler = ShuffleSampler(len(dataset), with_epoch=True)
        return self.resumable_loader(dataset, sampler, self.batch_size, **common)

    def whole_training_lists(self) -> DataLoader:
        """Every training list with all its judged sources (no sampling cap), in evaluation
        batches, in file order: each text a training batch can hold, for a frozen model to
        embed once before training (the bi-encoder's anchor)."""
        dataset = RerankListDataset(
            self.train_records,
            self.document_template,
            None,
            sample=True,
            max_chars=self.max_text_chars,
        )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            collate_fn=ListwiseCollator(self.input_encoder),
        )
