"""The rewriter's one inference path, and the app's loader for an exported rewriter.

:func:`generate_rewrites` turns a batch into rewrites for validation, ``predict``, the gate and
:class:`ExportedQueryRewriter`, which builds its batches with the training collator
(:mod:`datamodules.rewrite_inputs`) from the format saved with the export. Nothing here needs
Lightning: the app loads a rewriter with torch and transformers only.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

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

VariationMethod = Literal["beams", "novel_terms", "sampling"]
VARIATION_METHODS: tuple[str, ...] = get_args(VariationMethod)

# Function words a search engine's BM25 all but ignores: a variation that differs from the
# rewrites already chosen only in these finds nothing new.
_FUNCTION_WORDS = frozenset(
    "a an and are as at be by did do does for from had has have how i in is it its of on or "
    "that the their they this to was were what when where which who whom why will with you".split()
)
_WORD = re.compile(r"\w+")


def content_terms(text: str) -> frozenset[str]:
    """The lowercased words of ``text`` other than function words."""
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _FUNCTION_WORDS)


@dataclass(frozen=True)
class RewriteVariations:
    """How the rewriter's several variations (the app searches with each) are chosen.

    ``beams``: the next distinct beams of the beam search, best first (the beams are
    near-paraphrases of each other). ``novel_terms``: a beam search over ``pool`` beams, then,
    after the best beam, greedily the beam with the most content words not in the rewrites chosen
    so far (ties: the better beam), so that each variation can retrieve what the others miss --
    the same aim as diverse beam search (Vijayakumar et al., AAAI 2018), as a selection over one
    beam search, which keeps decoding on transformers' own beam search. ``sampling``: after the
    best beam, nucleus samples (Holtzman et al., ICLR 2020; ``top_p``, ``temperature``), drawn
    from a generator seeded with ``seed`` (the same rewrites on every call, and the training
    run's random state untouched).

    In every method the first variation is the best beam, so the best rewrite does not depend on
    how many variations are asked for, and the first ``n`` variations are a prefix of the first
    ``n + 1``.
    """

    method: VariationMethod = "beams"
    pool: int = 10
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in VARIATION_METHODS:
            raise ValueError(f"variations: method must be one of {VARIATION_METHODS}")
        if self.pool < 1 or not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("variations: need pool >= 1, 0 < top_p <= 1 and temperature > 0")

    def beams(self, num_beams: int, n: int) -> int:
        """The beam search's width for ``n`` variations with ``num_beams`` configured."""
        width = max(num_beams, n)
        return max(width, self.pool) if self.method == "novel_terms" else width

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_variations(
    texts: list[str], question: str, n: int, method: VariationMethod = "beams"
) -> list[str]:
    """Up to ``n`` distinct non-empty rewrites from decoded candidates ``texts`` (the best beam
    first), best first; the first is ``texts[0]``, or the question where that is empty."""
    chosen = [texts[0] or question]
    candidates = [t for t in dict.fromkeys(texts[1:]) if t and t not in chosen]
    if method != "novel_terms":
        return (chosen + candidates)[:n]
    covered = set(content_terms(chosen[0]))
    while len(chosen) < n and candidates:
        novelty = [len(content_terms(t) - covered) for t in candidates]
        pick = candidates.pop(novelty.index(max(novelty)))  # index(): the better beam on ties
        chosen.append(pick)
        covered |= content_terms(pick)
    return chosen


@torch.no_grad()
def generate_rewrites(
    model,
    tokenizer,
    restorer: SurfaceRestorer | None,
    batch: RewriteBatch,
    n: int = 1,
    variations: RewriteVariations | None = None,
) -> list[list[str]]:
    """The rewriter's one inference path: validation, ``predict``, the gate and the app's loader
    (:class:`ExportedQueryRewriter`) all turn a batch into text here.

    Generates with the model's own generation config (beams widened to ``n`` if fewer, and to
    the pool for ``novel_terms``), decodes, respells uncased output from the question and each
    history turn, and returns up to ``n`` distinct rewrites per question, chosen as
    ``variations`` says (:class:`RewriteVariations`; default: the next distinct beams). The
    first is the best beam, or the question itself where the best beam is empty (the app still
    needs a query to run).
    """
    variations = variations or RewriteVariations()
    beams = variations.beams(model.generation_config.num_beams or 1, n)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if variations.method == "sampling":
        best = model.generate(**inputs, num_beams=beams, num_return_sequences=1)
        sampled, samples = None, max(variations.pool, n)
        if n > 1:
            with torch.random.fork_rng(devices=[]):  # seeded; leaves training's RNG alone
                torch.manual_seed(variations.seed)
                sampled = model.generate(
                    **inputs,
                    do_sample=True,
                    num_beams=1,
                    top_p=variations.top_p,
                    temperature=variations.temperature,
                    num_return_sequences=samples,
                )
        per_row = [
            [best[row].tolist()]
            + ([] if sampled is None else sampled[row * samples : (row + 1) * samples].tolist())
            for row in range(len(batch.sources))
        ]
    else:
        generated = model.generate(**inputs, num_beams=beams, num_return_sequences=beams)
        per_row = [
            generated[row * beams : (row + 1) * beams].tolist() for row in range(len(batch.sources))
        ]
    out: list[list[str]] = []
    for row, question in enumerate(batch.sources):
        if n == 1:  # (validation's BLEU, a single rewrite: only the best beam is read)
            per_row[row] = per_row[row][:1]
        if restorer is not None:
            texts = [restorer.restore(ids, batch.histories[row], question) for ids in per_row[row]]
        else:
            texts = [tokenizer.decode(i, skip_special_tokens=True).strip() for i in per_row[row]]
        out.append(select_variations(texts, question, n, variations.method))
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
        # how the several variations are chosen, as in training's validation (older exports:
        # the next distinct beams)
        self.variations = RewriteVariations(**(metadata.get("variations") or {}))
        self.num_return_sequences = int(metadata.get("num_return_sequences") or 1)

    def input_text(self, question: str, history: list[str] | tuple[str, ...] = ()) -> str:
        """The model's input text for a question, as training built it."""
        return self.collator.source_text(RewritePair(question, None, tuple(history)))

    def rewrite(
        self,
        questions: list[str],
        histories: list[list[str]] | None = None,
        n: int | None = 1,
        batch_size: int = 32,
    ) -> list[list[str]]:
        """Up to ``n`` distinct rewrites of every question, best first (the question itself if
        none); ``n=None``: as many as the export's ``num_return_sequences`` (what ``predict``
        writes), chosen the way its training chose them (``variations``)."""
        n = self.num_return_sequences if n is None else n
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
            out += generate_rewrites(
                self.model, self.tokenizer, self.restorer, batch, n, self.variations
            )
        return out
