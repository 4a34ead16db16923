"""Turning (query, documents) lists into model inputs: the rerankers' input encoders.

The model owns its tokenizer and decides how a list is encoded (a cross-encoder reads each
(query, document) pair jointly, a bi-encoder reads queries and documents separately); it hands
its encoder to the data module (``model.input_encoder()``, linked by the CLI), whose collate
function calls it, so tokenisation runs in the loader workers. Only real documents are encoded:
padding slots of a ``[B, L]`` list exist in the label/mask tensors, never as model inputs.

Sequences are padded per *chunk*: the texts of a batch are sorted by token length and cut into
chunks of ``chunk_size`` (and at most ``chunk_tokens`` padded tokens, which bounds a chunk's
activation memory whatever the texts' lengths), each padded to its own longest member, so one long
snippet does not make the whole batch pay for its length. ``order`` says where each encoded row
belongs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

ChunkedInputs = dict[str, Any]  # {"chunks": [dict[str, Tensor]], "order": LongTensor}


def truncate_queries(
    tokenizer: PreTrainedTokenizerBase, queries: list[str], max_tokens: int
) -> list[str]:
    """Cut queries longer than ``max_tokens`` tokens at a token boundary of the original text."""
    encoded = tokenizer(
        queries, add_special_tokens=False, return_offsets_mapping=True, truncation=False
    )
    out = []
    for query, offsets in zip(queries, encoded["offset_mapping"], strict=True):
        out.append(query if len(offsets) <= max_tokens else query[: offsets[max_tokens - 1][1]])
    return out


def chunk_rows(lengths: list[int], chunk_size: int, chunk_tokens: int | None) -> list[list[int]]:
    """Row indices sorted by length, cut into chunks of at most ``chunk_size`` rows and at most
    ``chunk_tokens`` padded tokens (rows x the chunk's longest; a longer row alone is a chunk)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    for i in order:
        current = chunks[-1] if chunks else None
        fits = current is not None and len(current) < chunk_size
        if fits and chunk_tokens is not None:
            fits = (len(current) + 1) * lengths[i] <= chunk_tokens  # (i is the longest yet)
        if fits:
            current.append(i)
        else:
            chunks.append([i])
    return chunks


def pad_in_chunks(
    tokenizer: PreTrainedTokenizerBase,
    encoded: dict[str, list],
    chunk_size: int,
    chunk_tokens: int | None = None,
) -> ChunkedInputs:
    """Sort unpadded encodings by length, pad them chunk by chunk (see :func:`chunk_rows`)."""
    lengths = [len(ids) for ids in encoded["input_ids"]]
    row_chunks = chunk_rows(lengths, chunk_size, chunk_tokens)
    order = [i for rows in row_chunks for i in rows]
    chunks = []
    for rows in row_chunks:
        features = [{key: values[i] for key, values in encoded.items()} for i in rows]
        padded = tokenizer.pad(features, padding=True, return_tensors="pt")
        chunks.append({k: v for k, v in padded.items() if isinstance(v, torch.Tensor)})
    return {"chunks": chunks, "order": torch.tensor(order, dtype=torch.long)}


def unchunk(outputs: list[torch.Tensor], order: torch.Tensor) -> torch.Tensor:
    """Put per-chunk outputs (rows in sorted order) back in the original order."""
    stacked = torch.cat(outputs, dim=0)
    restored = torch.empty_like(stacked)
    restored[order] = stacked
    return restored


@dataclass
class CrossEncoderInputs:
    """Pairs ``[CLS] query [SEP] document [SEP]``, truncated on the document side only.

    Queries longer than ``max_query_length`` tokens are cut first, so that every pair keeps the
    whole query (or at least its first ``max_query_length`` tokens).
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 256
    max_query_length: int = 64
    chunk_size: int = 32
    chunk_tokens: int | None = None

    def __call__(self, queries: list[str], documents: list[list[str]]) -> dict[str, Any]:
        # Leave at least half of the pair for the document, whatever the configured lengths.
        query_limit = min(self.max_query_length, self.max_length // 2)
        queries = truncate_queries(self.tokenizer, queries, query_limit)
        pair_queries = [q for q, docs in zip(queries, documents, strict=True) for _ in docs]
        pair_documents = [d for docs in documents for d in docs]
        pairs = self.tokenizer(
            pair_queries, pair_documents, truncation="only_second", max_length=self.max_length
        )
        return {"pairs": pad_in_chunks(self.tokenizer, pairs, self.chunk_size, self.chunk_tokens)}


@dataclass
class BiEncoderInputs:
    """Queries and documents tokenised separately (documents padded in length-sorted chunks)."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 256
    max_query_length: int = 64
    chunk_size: int = 32
    chunk_tokens: int | None = None

    def __call__(self, queries: list[str], documents: list[list[str]]) -> dict[str, Any]:
        query_inputs = self.tokenizer(
            queries,
            truncation=True,
            max_length=self.max_query_length,
            padding=True,
            return_tensors="pt",
        )
        flat_documents = [d for docs in documents for d in docs]
        document_inputs = self.tokenizer(
            flat_documents, truncation=True, max_length=self.max_length
        )
        return {
            "queries": {k: v for k, v in query_inputs.items() if isinstance(v, torch.Tensor)},
            "documents": pad_in_chunks(
                self.tokenizer, document_inputs, self.chunk_size, self.chunk_tokens
            ),
            "documents_per_query": torch.tensor([len(docs) for docs in documents]),
        }


class EmbeddingCache:
    """Embeddings of a frozen encoder by the token ids of each text, up to ``capacity`` texts.

    ``embed(features, encode)`` returns ``encode``'s embeddings of the rows of a padded batch,
    encoding only the rows it has not seen (trimmed to their own longest, in one pass). A row's
    embedding then no longer depends on which other rows shared its pass: equal to what a
    fresh pass gives up to float rounding (~1e-7), and served from memory on later epochs.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"anchor_cache_size must be >= 0, got {capacity}")
        self.capacity = capacity
        self.rows: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.overflowed = False  # a text was encoded but not kept: the cache was full

    @staticmethod
    def _keys(features: dict[str, torch.Tensor]) -> list[bytes]:
        ids = features["input_ids"].cpu().numpy()
        mask = features["attention_mask"].cpu().numpy().astype(bool)
        return [
            hashlib.blake2b(row[keep].tobytes(), digest_size=16).digest()
            for row, keep in zip(ids, mask, strict=True)
        ]

    def embed(self, features: dict[str, torch.Tensor], encode) -> torch.Tensor:
        if self.capacity == 0:
            return encode(features)
        keys = self._keys(features)
        first_of: dict[bytes, int] = {}  # a text repeated within the batch is encoded once
        for i, key in enumerate(keys):
            if key not in self.rows:
                first_of.setdefault(key, i)
        missing = list(first_of.values())
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            index = torch.tensor(missing, device=features["input_ids"].device)
            # (the last column any of them uses: right padding is trimmed, left padding kept)
            used = features["attention_mask"][index].any(0).nonzero()
            width = int(used.max()) + 1 if len(used) else features["input_ids"].shape[1]
            subset = {k: v[index][:, :width] for k, v in features.items()}
            for i, row in zip(missing, encode(subset), strict=True):
                fresh[keys[i]] = row
                if len(self.rows) < self.capacity:
                    self.rows[keys[i]] = row
                else:
                    self.overflowed = True
        return torch.stack([fresh[k] if k in fresh else self.rows[k] for k in keys])
