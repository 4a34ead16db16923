"""Rerankers trained on listwise feedback batches: a cross-encoder and a bi-encoder scorer.

Both share one LightningModule base (:class:`RerankerModule`): the loss, the optimiser and its
schedule, validation metrics for the model *and for the order the app displayed* (so every run
shows its lift over what users saw), prediction and export. Subclasses only say how a batch is
scored and how the model is written out.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from lightning.fabric.utilities.apply_func import move_data_to_device
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from datamodules.reranker import DEFAULT_DOCUMENT_TEMPLATE, RerankBatch
from lightning_modules.backbones import resolve_model_path, train_top_layers
from lightning_modules.base import FeedbackModule
from lightning_modules.display_prior import (
    FITTED_ON,
    check_weights,
    mix_with_display,
)
from lightning_modules.encoding import (
    BiEncoderInputs,
    ChunkedInputs,
    CrossEncoderInputs,
    EmbeddingCache,
    unchunk,
)
from lightning_modules.export import export_folder, read_export_metadata
from lightning_modules.loggers import log_examples
from lightning_modules.losses import (
    ListNetLoss,
    RankingLoss,
    SoftmaxCrossEntropyLoss,
    listwise_distillation,
)
from lightning_modules.metrics import AGREEMENT_METRICS, RankingMetrics
from lightning_modules.position_bias import NaivePositions

log = logging.getLogger(__name__)


class RerankerModule(FeedbackModule):
    """Shared training/evaluation logic; subclasses implement :meth:`score_batch`.

    Args:
        model_name_or_path: a local folder or a Hugging Face hub name.
            ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the packaged, offline copy.
        loss: a :class:`~lightning_modules.losses.RankingLoss` (default: the class's
            ``default_loss``: ListNet for the cross-encoder, softmax cross-entropy for the
            bi-encoder, the shipped recipes).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: share of the optimisation steps spent warming the learning rate up
            linearly from 0; it then decays linearly to 0 at the last step.
        max_length: token budget of a document (cross-encoder: of the query-document pair).
        max_query_length: token budget of a query.
        trust_remote_code: allow a hub model to run its own Python code (e.g.
            ``jinaai/jina-reranker-v1-turbo-en``). Off unless you opt in.
        num_logged_examples: evaluation queries whose reranked list (the user's picks marked)
            is sent to the loggers each epoch: a W&B table, and ``samples/*.jsonl``.
        init_from: warm start: a folder exported by this project (e.g. the deployed model),
            whose weights and tokenizer replace ``model_name_or_path``'s. Re-fine-tuning on
            new feedback then continues from what is deployed; the export records the lineage.
        torch_compile: ``torch.compile`` the backbone (opt-in; see ``benchmarks/``).
        gradient_checkpointing: trade compute for activation memory (large backbones).
        attention_dropout: dropout on the attention probabilities while training (default 0,
            the recipe; ``None``: the backbone's own, 0.1 for BERT). At 0, PyTorch's fused
            (flash) attention kernel runs on CPU as on GPU; with dropout, attention falls back
            to the unfused path, which keeps every ``[heads, L, L]`` probability matrix for the
            backward pass (measured: 40% of a training step's activation memory,
            ``benchmarks/profile_fit.py``).
        chunk_size: sequences per forward pass; a batch's sequences are sorted by length and
            each chunk is padded to its own longest (smaller chunks: less padding).
        chunk_tokens: at most this many padded tokens in a chunk (fewer sequences where they
            are long; ``None``: no limit): a chunk's activation memory is bounded whatever the
            lengths of the texts.
        chunk_checkpointing: in training, keep only each chunk's inputs and recompute its
            activations in the backward pass, one chunk at a time (``torch.utils.checkpoint``,
            dropout masks replayed): the activation memory of one chunk instead of the whole
            batch, for one more forward pass a step.
        freeze_word_embeddings: keep the backbone's token embedding matrix as it is (position
            and segment embeddings still train). For MiniLM it is half the parameters (30,522 x
            384), whose gradient and AdamW states take 0.14 GiB.
        trained_layers: train only the backbone's last N transformer layers (and its head);
            the embeddings and the layers below stay as they are (``None``, or N at least the
            backbone's depth: every layer trains). Autograd then records nothing below the
            first trained layer: no backward pass through the frozen ones and, with
            ``gradient_checkpointing`` (layer-wise), no recomputation of them either, whereas
            ``chunk_checkpointing`` recomputes a chunk's every layer.
        position_bias: how training treats the display rank of the picks
            (:mod:`lightning_modules.position_bias`; default: naive, the picks as they are).
        eval_propensity_eta: examination propensities ``(1/k)^eta`` by display rank ``k`` that
            the debiased validation metric ``ips_dcg@10`` weights picks with.
        display_prior_weights: the display prior (:mod:`lightning_modules.display_prior`): at
            every validation epoch, the weight of this grid (ascending, from 0) whose mix of
            the model's score with the display rank maximises ``val/ips_dcg@10`` is chosen and
            logged (``val/display_prior/*``), and the export carries it: the app's loader then
            ranks with the mix (weight 0: the model alone). The other validation metrics stay
            the model's alone. Opt-in (``configs/display_prior.yaml`` holds the shipped grid, in
            z-units of the display rank, 0 first): the choice is only as good
            as ``eval_propensity_eta``, and on simulated picks with eta 2 judged at eta 1 it
            took the position bias for information (README). None (the default): no prior
            fitted (a warm start, ``init_from``, that has one keeps ranking with its weight).
    """

    architecture: str = ""
    default_loss: type[RankingLoss] = ListNetLoss

    def __init__(
        self,
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        loss: RankingLoss | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        max_length: int = 256,
        max_query_length: int = 64,
        trust_remote_code: bool = False,
        num_logged_examples: int = 3,
        init_from: str | None = None,
        torch_compile: bool = False,
        gradient_checkpointing: bool = False,
        attention_dropout: float | None = 0.0,
        chunk_size: int = 16,
        chunk_tokens: int | None = 1024,
        chunk_checkpointing: bool = True,
        freeze_word_embeddings: bool = True,
        trained_layers: int | None = None,
        position_bias: NaivePositions | None = None,
        eval_propensity_eta: float = 1.0,
        display_prior_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "position_bias"])
        if attention_dropout is not None and not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {attention_dropout}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.attention_dropout = attention_dropout
        self.chunk_size = chunk_size
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be at least 1 (or null), got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        if chunk_checkpointing and gradient_checkpointing:
            # (a chunk's recomputation would itself checkpoint and recompute every layer)
            raise ValueError(
                "chunk_checkpointing and gradient_checkpointing both recompute activations: "
                "set one of them to false"
            )
        self.chunk_checkpointing = chunk_checkpointing
        self.freeze_word_embeddings = freeze_word_embeddings
        self.trained_layers = trained_layers
        self.torch_compile = torch_compile
        self.gradient_checkpointing = gradient_checkpointing
        self.model_name_or_path = model_name_or_path
        self.init_from = init_from
        self.init_metadata: dict[str, Any] | None = None
        if init_from:
            self.init_metadata = read_export_metadata(init_from, self.architecture)
            self.model_path = str(init_from)
        else:
            self.model_path = resolve_model_path(model_name_or_path)
        self.loss = loss if loss is not None else self.default_loss()
        self.position_bias = position_bias if position_bias is not None else NaivePositions()
        self.position_bias.check_loss(self.loss)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.max_length = max_length
        self.max_query_length = max_query_length
        self.trust_remote_code = trust_remote_code
        self.num_logged_examples = num_logged_examples
        # (record index, display positions, scores) of the first evaluation lists of an epoch
        self._examples: list[tuple[int, list[int], list[float]]] = []
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, trust_remote_code=trust_remote_code
        )
        if eval_propensity_eta < 0:
            raise ValueError(f"eval_propensity_eta must be >= 0, got {eval_propensity_eta}")
        self.eval_propensity_eta = eval_propensity_eta
        self.eval_propensities = [(1.0 / k) ** eval_propensity_eta for k in range(1, 11)]
        for stage in ("val", "test"):
            for system in ("metrics", "display_metrics"):
                setattr(
                    self, f"{stage}_{system}", RankingMetrics(propensities=self.eval_propensities)
                )
        # The display prior: the weight it ranks with (saved in checkpoints), and the grid it
        # is fitted on, one evaluation state per candidate weight.
        prior = ((self.init_metadata or {}).get("display_prior") or {}).get("weight", 0.0)
        self.register_buffer("display_prior_weight", torch.tensor(float(prior)))
        self.display_prior_weights = (
            None if display_prior_weights is None else check_weights(display_prior_weights)
        )
        if self.display_prior_weights is not None:
            self.val_prior_metrics = torch.nn.ModuleList(
                RankingMetrics(propensities=self.eval_propensities)
                for _ in self.display_prior_weights
            )

    # -- to implement ----------------------------------------------------------------------

    def input_encoder(self):
        """The picklable callable the data module tokenises batches with."""
        raise NotImplementedError

    def score_inputs(self, inputs: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        """Scores of the real documents of a batch, flat, in row-major order of its mask."""
        raise NotImplementedError

    def _save_model(self, folder: Path) -> None:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------

    def _from_pretrained(self, auto_class, **kwargs: Any):
        """The backbone, with ``attention_dropout`` applied (refused where the backbone has no
        such setting, rather than silently ignored)."""
        if self.attention_dropout is not None:
            kwargs["attention_probs_dropout_prob"] = self.attention_dropout
        model = auto_class.from_pretrained(
            self.model_path, trust_remote_code=self.trust_remote_code, **kwargs
        )
        if self.attention_dropout is not None:
            if getattr(model.config, "attention_probs_dropout_prob", None) != (
                self.attention_dropout
            ):
                raise ValueError(
                    f"attention_dropout: {type(model).__name__} has no "
                    "attention_probs_dropout_prob setting; leave attention_dropout at null"
                )
        if self.freeze_word_embeddings:
            model.get_input_embeddings().requires_grad_(False)
        train_top_layers(model, self.trained_layers)
        return model.train()  # from_pretrained returns eval mode; dropout belongs to training

    def forward_chunk(self, function, chunk: dict[str, torch.Tensor]) -> torch.Tensor:
        """``function(chunk)``, checkpointed when ``chunk_checkpointing`` applies."""
        if self.chunk_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(function, chunk, use_reentrant=False)
        return function(chunk)

    # -- scoring ----------------------------------------------------------------------------

    def score_batch(self, batch: RerankBatch) -> torch.Tensor:
        """``[B, L]`` float32 scores; padding slots hold 0 and are masked everywhere downstream.

        (float32 even under bf16 autocast: losses and ranks need the resolution.)
        """
        flat = self.score_inputs(batch.inputs).float()
        scores = flat.new_zeros(batch.mask.shape)
        scores[batch.mask] = flat
        return scores

    def training_step(self, batch: RerankBatch, batch_idx: int) -> torch.Tensor:
        scores = self.score_batch(batch)
        positions = self.position_bias
        scores = positions.training_scores(scores, batch.display_rank, batch.mask)
        loss = positions.training_loss(
            self.loss, scores, batch.labels, batch.mask, batch.display_rank
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.labels.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        examination = self.position_bias.examination()
        if examination is not None:  # rank 1 is the reference (1.0)
            self.log_dict(
                {f"train/examination@{k}": v for k, v in enumerate(examination, 1) if k > 1}
            )

    def extra_parameter_groups(self) -> list[dict[str, Any]]:
        return self.position_bias.parameter_groups()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before the display prior existed: keep the weight it has now
        state_dict.setdefault(f"{prefix}display_prior_weight", self.display_prior_weight.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fits_display_prior(self, stage: str) -> bool:
        return self.display_prior_weights is not None and stage == "val"

    def ranking_scores(self, batch: RerankBatch) -> torch.Tensor:
        """What the model ranks a batch's lists by in evaluation and prediction: its scores,
        mixed with the display rank where a display prior has been fitted."""
        return mix_with_display(
            self.score_batch(batch),
            batch.display_rank,
            batch.mask,
            float(self.display_prior_weight),
        )

    def evaluation_step(self, batch: RerankBatch, stage: str) -> None:
        if self.fits_display_prior(stage):  # the model alone; the mix per candidate weight
            scores = self.score_batch(batch)
            for weight, metrics in zip(
                self.display_prior_weights, self.val_prior_metrics, strict=True
            ):
                mixed = mix_with_display(scores, batch.display_rank, batch.mask, weight)
                metrics.update_lists(
                    mixed, batch.labels, batch.mask, batch.record_index, batch.display_rank
                )
        else:
            scores = self.ranking_scores(batch)
        size = batch.labels.shape[0]
        self.log(f"{stage}/loss", self.loss(scores, batch.labels, batch.mask), batch_size=size)
        for system, system_scores in (
            ("metrics", scores),
            ("display_metrics", batch.display_scores),
        ):
            getattr(self, f"{stage}_{system}").update_lists(
                system_scores, batch.labels, batch.mask, batch.record_index, batch.display_rank
            )
        room = self.num_logged_examples - len(self._examples)
        if room > 0:
            cpu_scores = scores.detach().float().cpu()
            for row, positions in enumerate(batch.positions[:room]):
                row_scores = cpu_scores[row, : len(positions)].tolist()
                self._examples.append((int(batch.record_index[row]), positions, row_scores))

    def evaluation_epoch_end(self, stage: str) -> None:
        model = getattr(self, f"{stage}_metrics")
        display = getattr(self, f"{stage}_display_metrics")
        model_values, display_values = model.compute(), display.compute()
        logged = {}
        for name, value in model_values.items():
            if name in AGREEMENT_METRICS:  # the model's agreement with the display itself
                logged[f"{stage}/agreement/{name}"] = value
                continue
            logged[f"{stage}/{name}"] = value
            logged[f"{stage}/display/{name}"] = display_values[name]
            logged[f"{stage}/lift/{name}"] = value - display_values[name]
        headline = f"{stage}/ndcg@10"
        self.log(headline, logged.pop(headline), prog_bar=True)
        self.log_dict(logged)
        self.keep_evaluation(stage, {"model": model.per_query(), "display": display.per_query()})
        model.reset()
        display.reset()
        if self.fits_display_prior(stage):
            self._fit_display_prior(stage)
        self._log_examples(stage)

    def _fit_display_prior(self, stage: str) -> None:
        """Choose the grid's weight with the best debiased ``ips_dcg@10`` (the first, smallest,
        on a tie) and log the mix's metrics under ``<stage>/display_prior/``."""
        candidates = [metrics.compute() for metrics in self.val_prior_metrics]
        for metrics in self.val_prior_metrics:
            metrics.reset()
        values = [float(c[FITTED_ON]) for c in candidates]
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        weight = self.display_prior_weights[best]
        self.display_prior_weight.fill_(weight)
        log.info(
            "Display prior: weight %g (%s/%s by weight: %s)",
            weight,
            stage,
            FITTED_ON,
            ", ".join(
                f"{w:g}: {v:.4f}" for w, v in zip(self.display_prior_weights, values, strict=True)
            ),
        )
        logged = {f"{stage}/display_prior/weight": torch.tensor(weight)}
        for name, value in candidates[best].items():
            if name not in AGREEMENT_METRICS:
                logged[f"{stage}/display_prior/{name}"] = value
        self.log_dict(logged)

    def _log_examples(self, stage: str) -> None:
        """The first evaluation lists as the model reranked them, the user's picks marked."""
        examples, self._examples = self._examples, []
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        records = getattr(datamodule, f"{stage}_records", None)
        if not examples or not records:
            return
        columns = ["query", "rank", "shown_rank", "picked", "score", "title", "url"]
        rows = []
        for record_index, positions, scores in examples:
            record = records[record_index]
            order = sorted(range(len(positions)), key=lambda i: -scores[i])
            for rank, i in enumerate(order, start=1):
                position = positions[i]
                source = record.sources[position]
                picked = "✓" if record.grades[position] > 0 else ""
                row = [record.query, rank, position + 1, picked, round(scores[i], 4)]
                rows.append([*row, source.title, source.url])
        log_examples(self, f"{stage}/examples", columns, rows)

    def predict_step(self, batch: RerankBatch, batch_idx: int) -> list[dict[str, Any]]:
        """For each query: its record index and the display positions, best first, with scores."""
        scores = self.ranking_scores(batch).float().cpu()
        out = []
        for row, positions in enumerate(batch.positions):
            row_scores = scores[row, : len(positions)]
            order = torch.argsort(row_scores, descending=True, stable=True).tolist()
            out.append(
                {
                    "record_index": int(batch.record_index[row]),
                    "ranking": [(positions[i], float(row_scores[i])) for i in order],
                }
            )
        return out

    # -- export ----------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        template = getattr(getattr(self.trainer, "datamodule", None), "document_template", None)
        if self.init_metadata is not None and template is not None:
            deployed = self.init_metadata.get("document_template")
            if deployed is not None and deployed != template:
                log.warning(
                    "init_from %s was trained on documents formatted as %r; this run formats "
                    "them as %r",
                    self.init_from,
                    deployed,
                    template,
                )

    def export_metadata(self, document_template: str) -> dict[str, Any]:
        base = (self.init_metadata or {}).get("base_model", self.model_name_or_path)
        return {
            "architecture": self.architecture,
            "base_model": base,
            "init_from": self.init_from,
            "document_template": document_template,
            "max_length": self.max_length,
            "max_query_length": self.max_query_length,
            **self.display_prior_metadata(),
        }

    def display_prior_metadata(self) -> dict[str, Any]:
        """What the app's loader needs to rank with the prior (nothing when there is none)."""
        weight = float(self.display_prior_weight)
        if self.display_prior_weights is None and weight == 0:
            return {}
        return {
            "display_prior": {
                "weight": weight,
                "formula": "z(score) + weight * z(-display rank), z within each request",
                "fitted_on": f"val/{FITTED_ON}, propensities (1/k)^{self.eval_propensity_eta:g}",
                "grid": list(self.display_prior_weights or [weight]),
            }
        }

    def export(
        self,
        export_dir: str | Path,
        *,
        datamodule: L.LightningDataModule | None = None,
        overwrite: bool = False,
        onnx: bool = False,
    ) -> Path:
        """Write a self-contained Hugging Face / sentence-transformers folder, atomically.

        The datamodule's document template is saved with it: the app must format sources the
        same way. With ``onnx``, the folder also holds ``onnx/model.onnx`` and its int8
        quantisation (see :mod:`lightning_modules.onnx_export`), written inside the same atomic
        export, and the metadata lists them.
        """
        if onnx:  # before anything is written
            from lightning_modules.onnx_export import require_onnx_dependencies

            require_onnx_dependencies("export with onnx=true")
        document_template = getattr(datamodule, "document_template", DEFAULT_DOCUMENT_TEMPLATE)
        metadata = {
            **self.export_metadata(document_template),
            "training": self.training_record(datamodule),
        }
        max_text_chars = getattr(datamodule, "max_text_chars", None)
        if max_text_chars is not None:
            metadata["max_text_chars"] = max_text_chars

        def save(folder: Path) -> dict[str, Any] | None:
            self._save_model(folder)
            if not onnx:
                return None
            from lightning_modules.onnx_export import write_onnx

            description = write_onnx(
                folder,
                self.architecture,
                max_length=self.max_length,
                trust_remote_code=self.trust_remote_code,
            )
            return {"onnx": description}

        return export_folder(export_dir, save, metadata, overwrite=overwrite)


class CrossEncoderReranker(RerankerModule):
    """A cross-encoder: ``AutoModelForSequenceClassification`` with one output reads each
    (query, document) pair and returns its relevance logit.

    Any such model works: the packaged MiniLM (its classification head starts random), or hub
    rerankers such as ``jinaai/jina-reranker-v1-turbo-en`` (``trust_remote_code: true``) and
    ``cross-encoder/ms-marco-MiniLM-L6-v2`` for users online. The export loads with
    ``AutoModelForSequenceClassification.from_pretrained`` and
    ``sentence_transformers.CrossEncoder``.
    """

    architecture = "cross-encoder"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = self._from_pretrained(AutoModelForSequenceClassification, num_labels=1)

    def input_encoder(self) -> CrossEncoderInputs:
        return CrossEncoderInputs(
            self.tokenizer,
            self.max_length,
            self.max_query_length,
            self.chunk_size,
            self.chunk_tokens,
        )

    def score_inputs(self, inputs):
        pairs: ChunkedInputs = inputs["pairs"]
        logits = [
            self.forward_chunk(lambda c: self.model(**c).logits.squeeze(-1), chunk)
            for chunk in pairs["chunks"]
        ]
        return unchunk(logits, pairs["order"])

    def _save_model(self, folder: Path) -> None:
        # A sentence-transformers CrossEncoder truncates to the tokenizer's model_max_length.
        self.tokenizer.model_max_length = self.max_length
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)


class BiEncoderReranker(RerankerModule):
    """A bi-encoder scorer: query and document are encoded separately by the backbone,
    mean-pooled, and scored by cosine similarity (or dot product) divided by a temperature.

    This is how a sentence-embedding backbone such as all-MiniLM-L6-v2 was trained to rank, so
    fine-tuning it keeps what it already knows. The temperature only sharpens the scores the loss
    sees (fixed in the recipe; learnable with ``learn_temperature``); it never changes the
    ranking, so the export is a plain ``sentence_transformers.SentenceTransformer``.

    Args:
        similarity: ``cosine`` (normalised embeddings) or ``dot``.
        temperature: initial softmax temperature of the scores (0.05 = scale 20, as in
            sentence-transformers' MultipleNegativesRankingLoss).
        learn_temperature: learn the temperature with the model (off in the recipe: a fixed
            scale of 20, as the backbone was trained).
        in_batch_negatives: in training, every query's list also holds the other queries'
            sources of the batch as negatives (the in-batch negatives of sentence-transformers'
            MultipleNegativesRankingLoss, which trained all-MiniLM-L6-v2), so the embedding space
            stays calibrated across queries, not only within one result list.
        anchor_weight: weight of a listwise distillation term that keeps the model's ranking of
            each training list close to the untouched backbone's (a frozen copy): fine-tuning
            on a few hundred noisy lists then adds to what the backbone knows instead of
            overwriting it. 0 turns it off (and keeps no copy).
        anchor_cache_size: the frozen copy's embeddings never change, so each distinct text is
            embedded by it once per fit and then served from memory (queries and documents, by
            their token ids; ~1.5 KiB a text at 384 dimensions). Texts past this many are
            embedded again on every step. 0: no cache.
    """

    architecture = "bi-encoder"
    default_loss = SoftmaxCrossEntropyLoss

    def __init__(
        self,
        *args: Any,
        similarity: Literal["cosine", "dot"] = "cosine",
        temperature: float = 0.05,
        learn_temperature: bool = False,
        in_batch_negatives: bool = True,
        anchor_weight: float = 1.0,
        anchor_cache_size: int = 200_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["loss", "position_bias"])
        self.similarity = similarity
        deployed_similarity = (self.init_metadata or {}).get("similarity", similarity)
        if deployed_similarity != similarity:
            log.warning(
                "init_from %s scored with %s similarity; this run trains with %s",
                self.init_from,
                deployed_similarity,
                similarity,
            )
        self.in_batch_negatives = in_batch_negatives
        self.anchor_weight = anchor_weight
        self.anchor_temperature = temperature
        self.model = self._from_pretrained(AutoModel)
        self.freeze_unused_pooler(self.model)  # mean pooling never reads it
        log_temperature = torch.tensor(math.log(temperature))
        self.log_temperature = torch.nn.Parameter(log_temperature, requires_grad=learn_temperature)
        # Kept in a list so that it is neither trained, nor saved in checkpoints, nor switched
        # to train mode by Lightning. ``setup`` releases it once it has embedded every text.
        self._anchor: list[torch.nn.Module] = []
        if anchor_weight > 0:
            self._anchor.append(copy.deepcopy(self.model).eval().requires_grad_(False))
        self._anchor_cache = EmbeddingCache(anchor_cache_size)

    def setup(self, stage: str) -> None:
        # (before a checkpoint is restored: the copy still holds the weights training started
        # from, on a resumed fit too)
        lists = getattr(getattr(self.trainer, "datamodule", None), "whole_training_lists", None)
        if stage == "fit" and lists is not None:
            self.embed_training_texts_with_anchor(
                lists(),
                self.trainer.strategy.root_device,
                self.trainer.precision_plugin.forward_context,
            )

    @torch.no_grad()
    def embed_training_texts_with_anchor(self, lists, device, forward_context=nullcontext) -> None:
        """Embed every text of the training lists (batches of
        :meth:`~datamodules.reranker.RerankerDataModule.whole_training_lists`) with the frozen
        copy once, into the anchor cache, and release the copy (a model's worth of memory,
        0.16 GiB for MiniLM) when the cache holds them all; training then reads the anchor
        from memory only. Kept where the cache is too small for the texts."""
        if not self._anchor or self._anchor_cache.capacity == 0:
            return
        started = time.perf_counter()
        self._anchor[0].to(device)
        # (a DataLoader draws its base seed from the global RNG: forked, so training's dropout
        # masks and samples are those of a fit without this pass)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), forward_context():
            for batch in lists:
                self.anchor_embeddings(move_data_to_device(batch.inputs, device))
        cache = self._anchor_cache
        if cache.overflowed:
            log.info(
                "Anchor: the training texts exceed anchor_cache_size %d; the frozen copy stays "
                "to embed the rest on every step",
                cache.capacity,
            )
            return
        self._anchor.clear()
        log.info(
            "Anchor: the untouched backbone embedded the %d distinct training texts once "
            "(%.0f s); the frozen copy is released",
            len(cache.rows),
            time.perf_counter() - started,
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for anchor in self._anchor:
            anchor.to(self.device)

    def input_encoder(self) -> BiEncoderInputs:
        return BiEncoderInputs(
            self.tokenizer,
            self.max_length,
            self.max_query_length,
            self.chunk_size,
            self.chunk_tokens,
        )

    def embed(
        self, features: dict[str, torch.Tensor], model: torch.nn.Module | None = None
    ) -> torch.Tensor:
        hidden = (model or self.model)(**features).last_hidden_state
        weights = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.similarity == "cosine" else pooled

    def embed_batch(
        self, inputs: dict[str, Any], model: torch.nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query embeddings ``[B, D]`` and the real documents' embeddings ``[N, D]``."""

        def embed(chunk: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.embed(chunk, model)

        queries = self.forward_chunk(embed, inputs["queries"])
        chunked: ChunkedInputs = inputs["documents"]
        embedded = [self.forward_chunk(embed, chunk) for chunk in chunked["chunks"]]
        return queries, unchunk(embedded, chunked["order"])

    def score_inputs(self, inputs):
        queries, documents = self.embed_batch(inputs)
        # Each document belongs to one query: repeat the query embedding per real document.
        per_document = torch.repeat_interleave(queries, inputs["documents_per_query"], dim=0)
        return (per_document * documents).sum(-1) / self.log_temperature.exp()

    @staticmethod
    def _owners(batch: RerankBatch) -> torch.Tensor:
        """For each real document of the batch, the row of the query it belongs to."""
        counts = batch.inputs["documents_per_query"]
        return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)

    def _training_lists(
        self, batch: RerankBatch, queries: torch.Tensor, documents: torch.Tensor, temperature
    ) -> torch.Tensor:
        """``[B, L]`` list scores, then (with in-batch negatives) ``[B, L + N]``."""
        similarity = (queries @ documents.T).float() / temperature  # [B, N]
        owner = self._owners(batch)
        scores = similarity.new_zeros(batch.mask.shape)
        scores[batch.mask] = similarity[owner, torch.arange(len(owner), device=owner.device)]
        if not self.in_batch_negatives:
            return scores
        return torch.cat([scores, similarity], dim=1)

    @torch.no_grad()
    def anchor_scores(self, batch: RerankBatch) -> torch.Tensor:
        """The untouched backbone's training-list scores (the anchor's target)."""
        queries, documents = self.anchor_embeddings(batch.inputs)
        return self._training_lists(batch, queries, documents, self.anchor_temperature)

    @torch.no_grad()
    def anchor_embeddings(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The untouched backbone's query and document embeddings of a batch, served from
        :class:`EmbeddingCache` where it has seen a text before."""

        def encode(features: dict[str, torch.Tensor]) -> torch.Tensor:
            if not self._anchor:
                raise RuntimeError(
                    "the anchor met a training text it did not embed before training; was the "
                    "training data changed after setup?"
                )
            return self.embed(features, self._anchor[0])

        def embed(features: dict[str, torch.Tensor]) -> torch.Tensor:
            return self._anchor_cache.embed(features, encode)

        queries = embed(inputs["queries"])
        chunked: ChunkedInputs = inputs["documents"]
        return queries, unchunk([embed(chunk) for chunk in chunked["chunks"]], chunked["order"])

    def training_step(self, batch: RerankBatch, batch_idx: int) -> torch.Tensor:
        queries, documents = self.embed_batch(batch.inputs)
        scores = self._training_lists(batch, queries, documents, self.log_temperature.exp())
        labels, mask = batch.labels, batch.mask
        if self.in_batch_negatives:
            # Every other query's sources join the list as negatives; its own stay as labelled.
            rows = torch.arange(len(queries), device=mask.device)
            foreign = self._owners(batch).unsqueeze(0) != rows.unsqueeze(1)
            labels = torch.cat([labels, labels.new_zeros(foreign.shape)], dim=1)
            mask = torch.cat([mask, foreign], dim=1)
        size = batch.labels.shape[0]
        positions = self.position_bias
        biased = positions.training_scores(scores, batch.display_rank, batch.mask)
        loss = positions.training_loss(self.loss, biased, labels, mask, batch.display_rank)
        self.log("train/ranking_loss", loss, batch_size=size)
        if self.anchor_weight > 0:  # (the model's own scores as inference sees them: no bias)
            anchor = listwise_distillation(scores, self.anchor_scores(batch), mask)
            self.log("train/anchor_loss", anchor, batch_size=size)
            loss = loss + self.anchor_weight * anchor
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/temperature", self.log_temperature.exp().detach(), batch_size=size)
        return loss

    def loss_name(self) -> str:
        parts = [f"{type(self.loss).__name__} over each query's shown sources"]
        if type(self.position_bias) is not NaivePositions:
            parts.append(self.position_bias.describe())
        if self.in_batch_negatives:
            parts.append("the batch's other sources as negatives")
        if self.anchor_weight > 0:
            parts.append(
                f"listwise distillation to the untouched backbone (weight {self.anchor_weight:g})"
            )
        return ", ".join(parts)

    def export_metadata(self, document_template: str) -> dict[str, Any]:
        return {**super().export_metadata(document_template), "similarity": self.similarity}

    def _save_model(self, folder: Path) -> None:
        from lightning_modules.export import save_sentence_transformer

        save_sentence_transformer(
            self.model,
            self.tokenizer,
            folder,
            max_seq_length=self.max_length,
            normalize=self.similarity == "cosine",
        )
