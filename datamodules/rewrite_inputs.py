"""How a rewriter's inputs are built, the same way in training, validation and the app:

* :class:`RewriteInputFormat` is how a question and its history become one input text. It is
  saved with every export, so the app builds inputs exactly as training did.
* :class:`RewriteCollator` clips every text, selects the history that fits the token budget and
  tokenises with dynamic padding; labels are padded with ``-100`` so padding never counts in the
  loss.

No Lightning here: the app's loader (:class:`lightning_modules.rewriter_inference.
ExportedQueryRewriter`) builds its batches with this collator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from datamodules.feedback import clip_text
from datamodules.rewrite_feedback import RewritePair, candidate_coverages

HistoryOrder = Literal["question_first", "chronological"]
# Questions, history turns and targets are clipped to this many characters before tokenisation.
DEFAULT_MAX_TEXT_CHARS = 8192


def target_end_token_id(tokenizer) -> int:
    """The token that ends a target: ``</s>`` for T5, ``[SEP]`` for BERT-style vocabularies."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither an eos nor a sep token")
    return end


@dataclass(frozen=True)
class RewriteInputFormat:
    """How a question and its conversation history become the model's input text.

    Args:
        task_prefix: text put before everything (T5 style, e.g. ``"rewrite: "``).
        history_separator: put between the question and each history turn.
        history_order: ``question_first`` writes the question, then the turns newest first
            (``q ||| newest ||| older``); ``chronological`` writes the turns oldest first and
            the question last (``oldest ||| newer ||| q``), the layout of e.g. T5-CANARD models.
        max_history_turns: keep at most this many of the newest turns (``None``: all that fit).
        max_source_tokens: token budget of the whole input. The question is always kept whole
            (cut only if it alone exceeds the budget); then the newest turns that fit whole are
            kept and older ones dropped, so the model always sees the most recent context.
    """

    task_prefix: str = ""
    history_separator: str = " ||| "
    history_order: HistoryOrder = "question_first"
    max_history_turns: int | None = None
    max_source_tokens: int = 128

    def __post_init__(self) -> None:
        if self.history_order not in ("question_first", "chronological"):
            raise ValueError(
                f"history_order must be question_first or chronological, got {self.history_order!r}"
            )
        if self.max_history_turns is not None and self.max_history_turns < 0:
            raise ValueError("max_history_turns must be >= 0 or null")
        if self.max_source_tokens < 1:
            raise ValueError("max_source_tokens must be >= 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def join(self, question: str, history: Sequence[str]) -> str:
        """The input text for ``question`` given the (already selected) ``history`` turns."""
        if self.history_order == "question_first":
            parts = [question, *reversed(history)]
        else:
            parts = [*history, question]
        return self.task_prefix + self.history_separator.join(p.strip() for p in parts)

    def select_history(self, question: str, history: Sequence[str], count_tokens) -> list[str]:
        """The newest turns that fit the token budget whole, oldest first.

        ``count_tokens(texts) -> list[int]`` counts tokens without special tokens.
        """
        # Every turn takes at least one token, so no more than max_source_tokens turns can fit:
        # a conversation of thousands of turns costs no more than a short one.
        turns = [t for t in history[-self.max_source_tokens :] if t.strip()]
        if self.max_history_turns is not None:
            turns = turns[len(turns) - self.max_history_turns :] if self.max_history_turns else []
        if not turns:
            return []
        # Special tokens (e.g. [CLS]/[SEP] or </s>) take a few of the budget: keep 2 spare.
        fixed, separator, *lengths = count_tokens(
            [self.task_prefix + question, self.history_separator, *turns]
        )
        budget = self.max_source_tokens - 2 - fixed
        kept: list[str] = []
        for turn, length in zip(reversed(turns), reversed(lengths), strict=True):
            cost = length + separator
            if cost > budget:
                break
            budget -= cost
            kept.append(turn)
        return kept[::-1]


@dataclass
class RewriteBatch:
    """Tokenised inputs and ``-100``-padded labels, plus the texts for metrics and writers."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    sources: list[str]  # the questions as the user wrote them (the copy baseline's output)
    targets: list[str | None]
    histories: list[tuple[str, ...]] = field(default_factory=list)  # for respelling output
    indices: list[int] = field(default_factory=list)
    # training batches (``with_candidates``): every candidate query of each pair's app record
    # as ``-100``-padded labels ``[B, C, T]``, the selected sources each found ``[B, C]`` and
    # which slots are real ``[B, C]``; a pair without a record has its target alone
    candidate_labels: torch.Tensor | None = None
    candidate_grades: torch.Tensor | None = None
    candidate_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def to(self, device: torch.device | str) -> RewriteBatch:
        """The batch with its tensors on ``device`` (texts as they are)."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=move(self.labels),
            candidate_labels=move(self.candidate_labels),
            candidate_grades=move(self.candidate_grades),
            candidate_mask=move(self.candidate_mask),
        )


class RewritePairDataset(Dataset):
    def __init__(self, pairs: Sequence[RewritePair]) -> None:
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[int, RewritePair]:
        return index, self.pairs[index]


class RewriteCollator:
    """Tokenises a list of pairs: inputs padded to the batch's longest, labels with ``-100``."""

    def __init__(
        self,
        tokenizer,
        input_format: RewriteInputFormat,
        max_target_tokens: int = 64,
        max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
        with_candidates: bool = False,
    ):
        self.tokenizer = tokenizer
        self.input_format = input_format
        self.max_target_tokens = max_target_tokens
        self.with_candidates = with_candidates
        # Every text is clipped to this many characters before it is tokenised at all.
        self.max_text_chars = max_text_chars

    def _count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def source_text(self, pair: RewritePair) -> str:
        fmt = self.input_format
        source = clip_text(pair.source, self.max_text_chars)
        turns = [clip_text(turn, self.max_text_chars) for turn in pair.history]
        history = fmt.select_history(source, turns, self._count_tokens)
        return fmt.join(source, history)

    def __call__(self, items: list[tuple[int, RewritePair]]) -> RewriteBatch:
        indices = [i for i, _ in items]
        pairs = [p for _, p in items]
        texts = [self.source_text(p) for p in pairs]
        encoded = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.input_format.max_source_tokens,
            return_tensors="pt",
        )
        targets = [p.target for p in pairs]
        labels = None
        if all(t is not None for t in targets):
            labels = self.labels(targets)
        candidates = {}
        if self.with_candidates and labels is not None:
            candidates = self.candidates(pairs)
        return RewriteBatch(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            labels=labels,
            sources=[p.source for p in pairs],
            targets=targets,
            histories=[p.history for p in pairs],
            indices=indices,
            **candidates,
        )

    def labels(self, targets: Sequence[str]) -> torch.Tensor:
        """``[N, T]`` label ids, ``-100``-padded. Targets end with the end token and carry no
        start token: the model prepends its decoder start token itself (T5: pad,
        EncoderDecoder: [CLS])."""
        end = target_end_token_id(self.tokenizer)
        clipped = [clip_text(t, self.max_text_chars) for t in targets]
        ids = self.tokenizer(clipped, add_special_tokens=False)["input_ids"]
        ids = [row[: self.max_target_tokens - 1] + [end] for row in ids]
        labels = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
        for row, values in enumerate(ids):
            labels[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        return labels

    def candidates(self, pairs: Sequence[RewritePair]) -> dict[str, torch.Tensor]:
        """The candidate tensors of :class:`RewriteBatch` for ``pairs``."""
        lists = [
            candidate_coverages(p.record) if p.record is not None else [(p.target, 1)]
            for p in pairs
        ]
        width = max(len(items) for items in lists)
        flat = self.labels([query for items in lists for query, _ in items])
        labels = torch.full((len(pairs), width, flat.shape[1]), -100, dtype=torch.long)
        grades = torch.zeros(len(pairs), width)
        mask = torch.zeros(len(pairs), width, dtype=torch.bool)
        start = 0
        for row, items in enumerate(lists):
            labels[row, : len(items)] = flat[start : start + len(items)]
            grades[row, : len(items)] = torch.tensor([float(g) for _, g in items])
            mask[row, : len(items)] = True
            start += len(items)
        return {"candidate_labels": labels, "candidate_grades": grades, "candidate_mask": mask}
