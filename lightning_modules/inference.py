"""The app's side of an exported reranker: load a folder, rank a request's sources.

Nothing here imports Lightning or the training code, so the app can depend on this module alone
(with sentence-transformers for the ``torch`` backend, onnxruntime and transformers' tokenizer
for the ONNX ones)::

    from lightning_modules.inference import ExportedReranker

    reranker = ExportedReranker.load("exports/reranker", backend="onnx-int8")
    sources = [{"title": "...", "url": "https://...", "snippet": "..."}, ...]
    for index, score in reranker.rank("how is andrew tate's arrest going?", sources):
        print(sources[index]["url"], score)

The export's ``feedback_finetuning.json`` says how the model reads a source (the document
template, the length limits) and what it is (bi-encoder or cross-encoder); the loader formats
sources exactly as training did. Backends:

* ``torch``: sentence-transformers (``SentenceTransformer`` / ``CrossEncoder``) on the Hugging
  Face weights, float32.
* ``onnx``: ``onnx/model.onnx`` in onnxruntime (float32).
* ``onnx-int8``: the dynamically quantised ``onnx/model_quint8_avx2.onnx`` (portable to any
  x86-64 CPU with AVX2; see :mod:`lightning_modules.onnx_export`).

The ONNX backends tokenise and pool the way sentence-transformers does (``longest_first``
truncation at the export's ``max_length``, mean pooling and normalisation as the folder's
``modules.json`` says), so their scores match the ``torch`` ones to float precision (fp32) or to
quantisation error (int8); they pad less: a request's texts are sorted by length and cut into
batches that minimise the padded tokens computed (:func:`plan_batches`). Scores are cosine
similarities (or dot products) for a bi-encoder, logits for a cross-encoder: only their order
means something.

An export fitted with a display prior (``display_prior_weights`` in training; its weight in
``feedback_finetuning.json``) mixes those scores with the order the sources were given in,
which must then be the order the app showed them in (:mod:`lightning_modules.display_prior`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.feedback import Source, clip_text, render_document
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.hardware import describe_cpu

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_PROVIDER = "CPUExecutionProvider"
# What the data module clips queries and source fields to before tokenisation (its default
# max_text_chars), for exports that predate recording it.
DEFAULT_MAX_TEXT_CHARS = 8192


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The export's ``feedback_finetuning.json``, checked to describe a reranker."""
    folder = Path(folder)
    path = folder / EXPORT_METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {EXPORT_METADATA_FILE}: not a reranker exported by this project "
            "(`python main.py export ...`)"
        )
    metadata = json.loads(path.read_text())
    if metadata.get("architecture") not in ("bi-encoder", "cross-encoder"):
        raise ValueError(f"{path}: architecture {metadata.get('architecture')!r} is no reranker")
    return metadata


def _as_source(source: Any) -> Source:
    if isinstance(source, Source):
        return source
    if isinstance(source, Mapping):
        get = source.get
    else:
        get = lambda key, default: getattr(source, key, default)  # noqa: E731
    return Source(
        title=str(get("title", "") or ""),
        url=str(get("url", "") or ""),
        snippet=str(get("snippet", "") or ""),
    )


class ExportedReranker:
    """An exported reranker, ready to rank the sources of a request. Build with :meth:`load`."""

    def __init__(self, folder: Path, backend: str, metadata: dict[str, Any], engine) -> None:
        self.folder = folder
        self.backend = backend
        self.metadata = metadata
        self._engine = engine

    @classmethod
    def load(
        cls, folder: str | Path, backend: str = "torch", *, threads: int | None = None
    ) -> ExportedReranker:
        """Load an export folder with one of :data:`BACKENDS`, on the CPU.

        Args:
            threads: intra-op threads (onnxruntime's session option; for ``torch``,
                ``torch.set_num_threads``, which is process-wide). Default: the library's own
                (one per physical core).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        folder = Path(folder)
        metadata = read_metadata(folder)
        if backend == "torch":
            engine = _SentenceTransformersEngine(folder, metadata, threads)
        else:
            engine = _OnnxRuntimeEngine(folder, metadata, backend, threads)
        reranker = cls(folder, backend, metadata, engine)
        log.info("Loaded %s; CPU: %s", reranker.description, describe_cpu())
        return reranker

    @property
    def architecture(self) -> str:
        return self.metadata["architecture"]

    @property
    def document_template(self) -> str:
        return self.metadata["document_template"]

    @property
    def max_text_chars(self) -> int:
        return int(self.metadata.get("max_text_chars") or DEFAULT_MAX_TEXT_CHARS)

    @property
    def display_prior_weight(self) -> float:
        """The display prior's weight (0: none; the model's scores alone)."""
        return float((self.metadata.get("display_prior") or {}).get("weight", 0.0))

    @property
    def description(self) -> str:
        prior = self.display_prior_weight
        mixed = f", mixed with the display rank at weight {prior:g}" if prior else ""
        return (
            f"{self.architecture} {self.folder} with backend {self.backend} ({self._engine}){mixed}"
        )

    def render(self, source: Any) -> str:
        """The text the model reads for a source (a dict with title/url/snippet, or a Source)."""
        return render_document(self.document_template, _as_source(source), self.max_text_chars)

    def score(self, query: str, documents: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Scores of already rendered ``documents`` for ``query`` (float64, higher is better),
        given in the order the app showed them (which a display prior mixes in)."""
        if not documents:
            return np.zeros(0)
        query = clip_text(query, self.max_text_chars)
        scores = np.asarray(self._engine.score(query, list(documents), batch_size), np.float64)
        if self.display_prior_weight:
            import torch

            from lightning_modules.display_prior import mix_with_display

            row = torch.from_numpy(scores)[None]
            shown = torch.arange(len(scores))[None]
            mixed = mix_with_display(
                row, shown, torch.ones_like(shown, dtype=torch.bool), self.display_prior_weight
            )
            scores = mixed[0].numpy()
        return scores

    def score_sources(
        self, query: str, sources: Sequence[Any], *, batch_size: int = 32
    ) -> np.ndarray:
        """Scores of the app's sources (dicts with title/url/snippet), in their order."""
        return self.score(query, [self.render(s) for s in sources], batch_size=batch_size)

    def rank(
        self, query: str, sources: Sequence[Any], *, batch_size: int = 32
    ) -> list[tuple[int, float]]:
        """``(index into sources, score)`` best first; ties keep the order the app showed."""
        scores = self.score_sources(query, sources, batch_size=batch_size)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(i, float(scores[i])) for i in order]


class _SentenceTransformersEngine:
    """The ``torch`` backend: sentence-transformers on the Hugging Face weights."""

    def __init__(self, folder: Path, metadata: dict[str, Any], threads: int | None) -> None:
        import torch
        from sentence_transformers import CrossEncoder, SentenceTransformer

        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.architecture = metadata["architecture"]
        self.cosine = metadata.get("similarity", "cosine") == "cosine"
        max_length = metadata["max_length"]
        if self.architecture == "cross-encoder":
            self.model = CrossEncoder(str(folder), device="cpu", max_length=max_length)
            self.identity = torch.nn.Identity()
        else:
            self.model = SentenceTransformer(str(folder), device="cpu")
            self.model.max_seq_length = max_length

    def __str__(self) -> str:
        return f"sentence-transformers, torch float32, {self.threads} threads"

    def score(self, query: str, documents: list[str], batch_size: int) -> np.ndarray:
        if self.architecture == "cross-encoder":
            return self.model.predict(
                [(query, d) for d in documents],
                batch_size=batch_size,
                activation_fn=self.identity,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        # The query and the documents in one call: one forward pass for a request's 10 sources.
        embeddings = self.model.encode(
            [query, *documents],
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _similarities(np.asarray(embeddings, np.float64), self.cosine)


def _similarities(embeddings: np.ndarray, cosine: bool) -> np.ndarray:
    """Scores of rows 1.. against row 0 (the query)."""
    if cosine:
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.clip(norms, 1e-12, None)
    return embeddings[1:] @ embeddings[0]


class _OnnxRuntimeEngine:
    """The ``onnx`` / ``onnx-int8`` backends: onnxruntime, tokenised and pooled as
    sentence-transformers does."""

    def __init__(
        self, folder: Path, metadata: dict[str, Any], backend: str, threads: int | None
    ) -> None:
        try:
            import onnxruntime as ort
            from transformers import AutoTokenizer
        except ImportError as error:
            raise ImportError(
                f'backend {backend!r} needs onnxruntime: pip install -e ".[onnx]" ({error})'
            ) from error
        files = (metadata.get("onnx") or {}).get("files") or {}
        if backend not in files or not (folder / files[backend]).is_file():
            raise FileNotFoundError(
                f"{folder} has no {backend} file: export with `main.py export ... --onnx true` "
                "(or the ExportBestModel callback's onnx: true)"
            )
        self.path = folder / files[backend]
        self.architecture = metadata["architecture"]
        self.max_length = int(metadata["max_length"])
        self.cosine = metadata.get("similarity", "cosine") == "cosine"
        if self.architecture == "bi-encoder":
            self.cosine = self.cosine or _has_normalize(folder)
            _check_mean_pooling(folder)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=[ONNX_PROVIDER])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output = metadata["onnx"].get("output") or self.session.get_outputs()[0].name
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def __str__(self) -> str:
        threads = self.threads if self.threads is not None else "default"
        return (
            f"onnxruntime {ONNX_PROVIDER}, {self.path.relative_to(self.path.parents[1])}, "
            f"{threads} threads"
        )

    def _encode(self, *texts: list[str]) -> dict[str, list]:
        """Token ids of the texts (or text pairs), truncated, unpadded."""
        return self.tokenizer(*texts, truncation="longest_first", max_length=self.max_length)

    def _run(self, encoded: dict[str, list], rows: list[int]) -> np.ndarray:
        """The model's outputs for ``rows`` of ``encoded``, padded to their longest."""
        padded = self.tokenizer.pad(
            {key: [values[i] for i in rows] for key, values in encoded.items()},
            padding=True,
            return_tensors="np",
        )
        feeds = {}
        for name in self.input_names:
            if name in padded:
                feeds[name] = padded[name].astype(np.int64)
            else:  # e.g. token_type_ids the tokenizer does not return
                feeds[name] = np.zeros_like(padded["input_ids"], dtype=np.int64)
        out = self.session.run([self.output], feeds)[0].astype(np.float64)
        if self.architecture == "cross-encoder":
            return out[:, 0]
        mask = feeds["attention_mask"][..., None].astype(np.float64)
        return (out * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)

    def score(self, query: str, documents: list[str], batch_size: int) -> np.ndarray:
        if self.architecture == "cross-encoder":
            encoded = self._encode([query] * len(documents), documents)
        else:
            encoded = self._encode([query, *documents])
        lengths = [len(ids) for ids in encoded["input_ids"]]
        results: list[np.ndarray] = [np.empty(0)] * len(lengths)
        for rows in plan_batches(lengths, batch_size):
            for i, value in zip(rows, self._run(encoded, rows), strict=True):
                results[i] = value
        if self.architecture == "cross-encoder":
            return np.asarray(results, np.float64)
        return _similarities(np.stack(results), self.cosine)


# What one more onnxruntime call costs, in padded tokens of work: the call itself and the
# smaller matrix products of two batches instead of one. Chosen on training-data requests
# (benchmarks/onnx_batching.py, fine-tuned MiniLM, 2-core EPYC with AVX-512): p50 1.39x faster
# than one padded batch at 16, 1.36x at 64, 1.32x at 0, 1.16x at 256.
CALL_COST_TOKENS = 16


def plan_batches(
    lengths: Sequence[int], max_rows: int, call_cost: float = CALL_COST_TOKENS
) -> list[list[int]]:
    """Rows sorted by length, cut into runs of at most ``max_rows`` that minimise the padded
    tokens computed (each run pads to its longest) plus ``call_cost`` a run.

    sentence-transformers sorts a request's texts by length too, but pads each batch of 32 to
    its longest, so a request's short query and sources are computed at its longest source's
    length. The cut is exact: dynamic programming over the sorted lengths
    (``O(n * max_rows)``). Padding never changes a row's result, only the work.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ordered = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * len(order)
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for first in range(max(0, end - max_rows), end):
            cost = best[first] + (end - first) * ordered[end - 1] + call_cost
            if cost < best[end]:
                best[end], start[end] = cost, first
    runs, end = [], len(order)
    while end > 0:
        runs.append(order[start[end] : end])
        end = start[end]
    return runs[::-1]


def _modules(folder: Path) -> list[dict[str, Any]]:
    path = folder / "modules.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no modules.json: not a SentenceTransformer folder")
    return json.loads(path.read_text())


def _has_normalize(folder: Path) -> bool:
    return any(m.get("type", "").endswith("Normalize") for m in _modules(folder))


def _check_mean_pooling(folder: Path) -> None:
    """The ONNX path pools as this project's bi-encoder exports do: the mean of the tokens."""
    pooling = [m for m in _modules(folder) if m.get("type", "").endswith("Pooling")]
    if len(pooling) != 1:
        raise ValueError(f"{folder}: expected one Pooling module, found {len(pooling)}")
    config = json.loads((folder / pooling[0]["path"] / "config.json").read_text())
    mode = config.get("pooling_mode")  # sentence-transformers >= 6; before: one flag a mode
    if mode is None:
        mode = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v is True)
        mode = "mean" if mode == ["pooling_mode_mean_tokens"] else mode
    if mode not in ("mean", ["mean"]):
        raise ValueError(
            f"{folder}: the ONNX backends implement mean pooling only; the export pools with "
            f"{mode!r}"
        )
