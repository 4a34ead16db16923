"""Batches of (question [+ conversation history], target rewrite) pairs for seq2seq training.

Where the pairs come from (app feedback with mined targets, or the public pairs format) is the
business of :mod:`datamodules.rewrite_feedback`; this module turns them into model inputs:

* the inputs (format, collator, batches) are built by :mod:`datamodules.rewrite_inputs`, the
  module the app's loader shares;
* :class:`QueryRewritingDataModule` splits by a hash of the question (the reranker's split), so
  a question keeps its side as data grows.
"""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from datamodules.base import FeedbackDataModule
from datamodules.distributed import evaluation_sampler
from datamodules.feedback import OnInvalid, record_time
from datamodules.resumable import LengthGroupedSampler, ShuffleSampler
from datamodules.rewrite_feedback import RewritePair, load_rewrite_inputs, load_rewriting_data
from datamodules.rewrite_inputs import (
    DEFAULT_MAX_TEXT_CHARS,
    HistoryOrder,
    RewriteCollator,
    RewriteInputFormat,
    RewritePairDataset,
)
from datamodules.split import SplitMode, drop_held_out, split_train_validation

log = logging.getLogger(__name__)


def split_key(pair: RewritePair) -> str:
    """What the hash split keys a pair by: its conversation/session when it has one (a
    session's records share context and targets), else the question itself."""
    return f"session\x1f{pair.session_id}" if pair.session_id else pair.source


class QueryRewritingDataModule(FeedbackDataModule):
    """Question → rewrite pairs from app feedback and/or pairs files.

    Args:
        train_files: app ``query_rewriting_training_data.json`` files (targets are mined, see
            :mod:`datamodules.rewrite_feedback`) and/or pairs files (``{"source", "target",
            "history"?}`` JSON Lines), directories or globs, in any mix. A deterministic hash
            of each normalised question (of its ``session_id`` when it has one, so that a
            conversation stays on one side) sends ``validation_fraction`` of them to validation.
        val_files: explicit validation data. When given, no hash split is made and training
            drops pairs whose question also appears here.
        test_files: data for ``main.py test`` (same metrics as validation).
        predict_files: questions to rewrite with ``main.py predict``: app records (their
            ``original_query``) or pairs-format lines (``target`` optional).
        validation_fraction: share of questions held out for validation.
        split: ``hash`` (default, as above) or ``time``: the newest ``validation_fraction`` of
            the pairs (by ``timestamp``) validate and all older ones train; every record then
            needs a valid ISO 8601 ``timestamp`` (``on_invalid`` applies).
        deduplicate: drop repeated pairs (the same normalised question, history and target),
            counted in the load report; the first copy is kept.
        max_val_pairs: validation generates text (slow on a CPU): cap the validation set at this
            many pairs, chosen by hash so the same ones are kept every run. ``None``: all.
        split_salt: changes which questions are held out, reproducibly.
        keep_unchanged: keep records where the original query itself found the user's sources
            best (target = the query: the model learns when *not* to rewrite). ``false`` drops
            them.
        on_invalid: ``error`` stops at the first bad record; ``skip`` drops and reports them.
        task_prefix, history_separator, history_order, max_history_turns, max_source_tokens:
            the input format (see :class:`RewriteInputFormat`); saved with the export.
        max_target_tokens: longer targets are truncated in training.
        max_text_chars: questions, history turns and targets are clipped to this many
            characters before tokenisation (a bound on the cost of a pathological record).
        batch_size: pairs per training batch.
        eval_batch_size: pairs per validation/test/predict batch (default: ``batch_size``).
        group_by_length: batch training pairs of similar input length (less padding).
        num_workers: DataLoader worker processes (tokenisation runs there).
        input_encoder: the model's tokenizer (``model.input_encoder()``). ``main.py`` links it
            from the model, so the data module never looks at the model; elsewhere pass it (or
            set ``datamodule.input_encoder``) before ``setup``.
    """

    items_name = "pairs"
    nothing_to_learn = "No training pair"

    def __init__(
        self,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        predict_files: list[str] | None = None,
        validation_fraction: float = 0.2,
        split: SplitMode = "hash",
        deduplicate: bool = True,
        max_val_pairs: int | None = None,
        split_salt: str = "",
        keep_unchanged: bool = True,
        on_invalid: OnInvalid = "error",
        task_prefix: str = "",
        history_separator: str = " ||| ",
        history_order: HistoryOrder = "question_first",
        max_history_turns: int | None = None,
        max_source_tokens: int = 128,
        max_target_tokens: int = 64,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        group_by_length: bool = True,
        num_workers: int = 0,
        input_encoder: PreTrainedTokenizerBase | None = None,
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
        # (the tokenizer belongs to the model's checkpoint, not to the data's hyperparameters)
        self.save_hyperparameters(ignore=["input_encoder"])
        self.max_val_pairs = max_val_pairs
        self.keep_unchanged = keep_unchanged
        self.input_format = RewriteInputFormat(
            task_prefix=task_prefix,
            history_separator=history_separator,
            history_order=history_order,
            max_history_turns=max_history_turns,
            max_source_tokens=max_source_tokens,
        )
        self.max_target_tokens = max_target_tokens
        self.group_by_length = group_by_length
        # (train_pairs, val_pairs, test_pairs, predict_pairs: the base sets them)

    def input_format_metadata(self) -> dict[str, Any]:
        """Saved with an export: how the app must build the model's input."""
        return {"input_format": self.input_format.as_dict()}

    # -- loading ---------------------------------------------------------------------------

    def load(self, name: str, files: list[str]) -> list[RewritePair]:
        if name == "predict":  # questions to rewrite: targets optional
            pairs, self.reports[name] = load_rewrite_inputs(files, on_invalid=self.on_invalid)
            return pairs
        pairs, report = load_rewriting_data(
            files,
            keep_unchanged=self.keep_unchanged,
            on_invalid=self.on_invalid,
            deduplicate=self.deduplicate,
            require_timestamp=name == "train" and self.split == "time" and not self.val_files,
        )
        self.reports[name] = report
        return pairs

    def split_fit(self, pairs: list[RewritePair]) -> None:
        if self.val_files:
            self.train_pairs = drop_held_out(
                pairs, (p.source for p in self.val_pairs), lambda p: p.source
            )
            if len(self.train_pairs) < len(pairs):
                log.info(
                    "Dropped %d training pairs whose question is in val_files",
                    len(pairs) - len(self.train_pairs),
                )
        else:
            # Hash split: a conversation/session stays on one side, since its records share
            # context and targets; without one, the question itself is the key.
            self.train_pairs, self.val_pairs = split_train_validation(
                pairs,
                mode=self.split,
                validation_fraction=self.validation_fraction,
                key=split_key,
                time_of=record_time,
                salt=self.split_salt,
            )
        if self.max_val_pairs is not None and len(self.val_pairs) > self.max_val_pairs:
            # A fixed subset (by hash, not by position) so every run validates on the same pairs.
            from datamodules.split import query_bucket

            ranked = sorted(
                range(len(self.val_pairs)),
                key=lambda i: query_bucket(
                    f"{self.val_pairs[i].source}\x1f{self.val_pairs[i].target}", "val-subset"
                ),
            )
            keep = sorted(ranked[: self.max_val_pairs])
            self.val_pairs = [self.val_pairs[i] for i in keep]
        log.info(
            "Query rewriting data: %d training pairs (%d keep the question unchanged), "
            "%d validation pairs",
            len(self.train_pairs),
            sum(p.is_original for p in self.train_pairs),
            len(self.val_pairs),
        )

    # -- loaders ---------------------------------------------------------------------------

    def collator(self, with_candidates: bool = False) -> RewriteCollator:
        return RewriteCollator(
            self.input_encoder,
            self.input_format,
            self.max_target_tokens,
            self.max_text_chars,
            with_candidates=with_candidates,
        )

    def loader(self, pairs: list[RewritePair], stage: str) -> DataLoader:
        train = stage == "train"
        dataset = RewritePairDataset(pairs)
        batch_size = self.batch_size if train else self.eval_batch_size
        common = {
            "batch_size": batch_size,
            "num_workers": self.num_workers,
            # training batches carry every candidate of each record, for a listwise objective
            # over them (cheap: a few more short texts to tokenise)
            "collate_fn": self.collator(with_candidates=train),
            "persistent_workers": self.num_workers > 0,
        }
        if not train:
            return DataLoader(dataset, sampler=evaluation_sampler(self, dataset), **common)
        if self.group_by_length:
            # Character length is a cheap, good enough proxy for token length here.
            lengths = [len(p.source) + sum(len(t) for t in p.history) for p in pairs]
            sampler = LengthGroupedSampler(lengths, batch_size)
        else:
            sampler = ShuffleSampler(len(pairs))
        batch_size = common.pop("batch_size")
        return self.resumable_loader(dataset, sampler, batch_size, **common)
