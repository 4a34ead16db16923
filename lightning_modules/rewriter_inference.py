"""The rewriter's one inference path, and the app's loader for an exported rewriter.

:func:`generate_rewrites` turns a batch into rewrites for validation, ``predict``, the gate and
:class:`ExportedQueryRewriter`, which builds its batches with the training collator
(:mod:`datamodules.rewrite_inputs`) from the format saved with the export. Nothing here needs
Lightning: the app loads a rewriter with torch and transformers only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from datamodules.rewrite_feedback import RewritePair
from datamodules.rewrite_inputs import (
    DEFAULT_MAX_TEXT_CHARS,
    RewriteBatch,
    RewriteCollator,
    RewriteInputFormat,
)
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.surface import SurfaceRestorer


@torch.no_grad()
def generate_rewrites(
    model, tokenizer, restorer: SurfaceRestorer | None, batch: RewriteBatch, n: int = 1
) -> list[list[str]]:
    """The rewriter's one inference path: validation, ``predict``, the gate and the app's loader
    (:class:`ExportedQueryRewriter`) all turn a batch into text here.

    Generates with the model's own generation config (beams widened to ``n`` if fewer), decodes,
    respells uncased output from the question and each history turn, and returns up to ``n``
    distinct rewrites per question, best first. The first is the best beam, or the question
    itself where the best beam is empty (the app still needs a query to run), so the best
    rewrite is the same whatever ``n`` (up to the configured beams); the others are the next
    distinct non-empty beams.
    """
    beams = max(model.generation_config.num_beams or 1, n)
    generated = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        num_beams=beams,
        num_return_sequences=n,
    )
    out: list[list[str]] = []
    for row, question in enumerate(batch.sources):
        texts = []
        for ids in generated[row * n : (row + 1) * n].tolist():
            if restorer is not None:
                texts.append(restorer.restore(ids, batch.histories[row], question))
            else:
                texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
        rewrites = [texts[0] or question]
        rewrites += [t for t in dict.fromkeys(texts[1:]) if t and t not in rewrites]
        out.append(rewrites)
    return out


class ExportedQueryRewriter:
    """An exported rewriter as the app uses it: the folder alone, with the standard classes.

    Builds inputs with the saved input format and text clipping (the training collator itself),
    and turns them into text through :func:`generate_rewrites`, the path validation and
    ``predict`` use, so the app gets exactly what ``predict`` wrote::

        rewriter = ExportedQueryRewriter("logs/query_rewriting/version_0/export")
        rewriter.rewrite(["when did they disband?"], [["Frank Zappa", "What group..."]], n=3)
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        folder = Path(folder)
        metadata = json.loads((folder / EXPORT_METADATA_FILE).read_text())
        self.input_format = RewriteInputFormat(**(metadata.get("input_format") or {}))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(folder).to(device).eval()
        self.device = device
        self.collator = RewriteCollator(
            self.tokenizer,
            self.input_format,
            max_text_chars=metadata.get("max_text_chars", DEFAULT_MAX_TEXT_CHARS),
        )
        self.restorer = (
            SurfaceRestorer(self.tokenizer)
            if metadata.get("postprocess") == "restore_surface"
            else None
        )

    def input_text(self, question: str, history: list[str] | tuple[str, ...] = ()) -> str:
        """The model's input text for a question, as training built it."""
        return self.collator.source_text(RewritePair(question, None, tuple(history)))

    def rewrite(
        self,
        questions: list[str],
        histories: list[list[str]] | None = None,
        n: int = 1,
        batch_size: int = 32,
    ) -> list[list[str]]:
        """Up to ``n`` distinct rewrites of every question (the question itself if none)."""
        histories = histories if histories is not None else [[] for _ in questions]
        if len(histories) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(histories)} histories")
        pairs = [
            RewritePair(question, None, tuple(history))
            for question, history in zip(questions, histories, strict=True)
        ]
        out: list[list[str]] = []
        for start in range(0, len(pairs), batch_size):
            items = list(enumerate(pairs[start : start + batch_size], start))
            batch = self.collator(items).to(self.device)
            out += generate_rewrites(self.model, self.tokenizer, self.restorer, batch, n)
        return out
