"""A seq2seq query rewriter: question (+ conversation history) -> the query that finds the sources.

One LightningModule, three ways to get the network (``init``):

* ``pretrained``: any ``AutoModelForSeq2SeqLM`` folder or hub name, e.g. the app's
  ``prhegde/t5-query-reformulation-RL`` (T5) for users with internet;
* ``t5_config``: a T5 with random weights built from ``T5Config`` sizes given in the YAML, using
  a tokenizer from a local folder (offline there is no pretrained T5);
* ``encoder_decoder``: an ``EncoderDecoderModel`` warm-started from a BERT-style checkpoint on
  both sides (Rothe et al., 2020, "Leveraging Pre-trained Checkpoints for Sequence Generation
  Tasks"), e.g. the packaged all-MiniLM-L6-v2; the decoder's cross-attention starts random.

Validation generates rewrites and logs corpus SacreBLEU, chrF and exact match (torchmetrics),
and the same for the **copy baseline** (the question returned unchanged) on the same pairs, so
every run shows its lift over not rewriting at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EncoderDecoderModel,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput

from datamodules.rewrite_inputs import DEFAULT_MAX_TEXT_CHARS, RewriteBatch, target_end_token_id
from lightning_modules.backbones import resolve_model_path
from lightning_modules.base import FeedbackModule
from lightning_modules.export import export_folder, read_export_metadata
from lightning_modules.loggers import log_examples
from lightning_modules.losses import RankingLoss
from lightning_modules.metrics import (
    COVERAGE_SYSTEMS,
    CoverageMetrics,
    RewriteMetrics,
    union_system,
)
from lightning_modules.retrieval_judge import RetrievalJudge
from lightning_modules.rewriter_inference import (
    RewriteVariations,
    VariationMethod,
    generate_rewrites,
)
from lightning_modules.surface import SurfaceRestorer, needs_surface_restoration

log = logging.getLogger(__name__)
# The ``architecture`` of a rewriter export (feedback_finetuning.json).
ARCHITECTURE = "seq2seq_query_rewriter"

Init = Literal["pretrained", "t5_config", "encoder_decoder"]
CrossAttentionInit = Literal["self_attention", "random"]


def copy_self_attention_into_cross_attention(model: EncoderDecoderModel) -> None:
    """Start every decoder layer's cross-attention as a copy of its pretrained self-attention.

    A warm-started decoder's cross-attention is the only part with random weights, and until it
    learns to read the encoder the decoder ignores the input and babbles its language-model prior
    (a rewriter must mostly copy the input). The encoder is the same checkpoint, so its outputs
    live in the space the pretrained attention was trained on: starting from the self-attention
    weights lets the decoder look at the question from the first step.
    """
    for layer in model.decoder.base_model.encoder.layer:
        if getattr(layer, "crossattention", None) is None:
            raise ValueError("the decoder has no cross-attention to initialise")
        layer.crossattention.load_state_dict(layer.attention.state_dict())


def build_seq2seq(
    init: Init,
    model_path: str,
    tokenizer_path: str,
    t5_config: dict[str, Any] | None,
    decoder_num_layers: int | None,
    trust_remote_code: bool,
    cross_attention_init: CrossAttentionInit = "self_attention",
):
    """The network and its tokenizer, with the special token ids generation needs set."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if init != "pretrained":
        # A BERT tokenizer also returns token_type_ids, which T5 and EncoderDecoderModel refuse
        # in generate(). Given at load time it is saved with the export, so that there too
        # `model.generate(**tokenizer(text))` just works.
        kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **kwargs)
    end_id = target_end_token_id(tokenizer)
    if init == "pretrained":
        model = AutoModelForSeq2SeqLM.from_pretrained(
            model_path, trust_remote_code=trust_remote_code
        )
    elif init == "t5_config":
        sizes = dict(t5_config or {})
        sizes.setdefault("vocab_size", len(tokenizer))
        if sizes["vocab_size"] < len(tokenizer):
            raise ValueError(
                f"t5_config.vocab_size={sizes['vocab_size']} is smaller than the tokenizer's "
                f"vocabulary ({len(tokenizer)})"
            )
        config = T5Config(
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end_id,
            decoder_start_token_id=tokenizer.pad_token_id,  # T5's convention
            **sizes,
        )
        model = T5ForConditionalGeneration(config)
    elif init == "encoder_decoder":
        kwargs = {}
        if decoder_num_layers is not None:
            kwargs["decoder_num_hidden_layers"] = decoder_num_layers
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            model_path, model_path, **kwargs
        )
        if cross_attention_init == "self_attention":
            copy_self_attention_into_cross_attention(model)
        start = (
            tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        )
        model.config.decoder_start_token_id = start
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.eos_token_id = end_id
        model.generation_config.decoder_start_token_id = start
    else:
        raise ValueError(f"init must be pretrained, t5_config or encoder_decoder, got {init!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = end_id
    if model.generation_config.decoder_start_token_id is None:
        model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    return model, tokenizer


class QueryRewriter(FeedbackModule):
    """Fine-tunes a seq2seq model to rewrite questions into the queries that find the sources.

    Args:
        model_name_or_path: the pretrained seq2seq model (``init: pretrained``), or the BERT
            checkpoint to warm-start both sides from (``init: encoder_decoder``).
            ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the packaged offline copy.
        init: ``pretrained``, ``t5_config`` or ``encoder_decoder`` (see the module docstring).
        t5_config: ``T5Config`` arguments for ``init: t5_config`` (``d_model``, ``num_layers``,
            ...); ``vocab_size`` defaults to the tokenizer's.
        tokenizer_name_or_path: default ``model_name_or_path``.
        decoder_num_layers: ``encoder_decoder`` only: warm-start a decoder with this many of
            the checkpoint's first layers (default: all).
        cross_attention_init: ``encoder_decoder`` only: ``self_attention`` starts each decoder
            layer's cross-attention as a copy of its pretrained self-attention (see
            :func:`copy_self_attention_into_cross_attention`); ``random`` as transformers does.
        learning_rate, weight_decay, warmup_ratio: AdamW with linear warm-up and decay.
        label_smoothing: cross-entropy label smoothing.
        num_beams, max_new_tokens, repetition_penalty, length_penalty, no_repeat_ngram_size:
            generation settings for validation, test, predict, and saved in the export's
            ``generation_config.json`` (so plain ``model.generate`` behaves the same).
        num_return_sequences: rewrites per question written by ``predict`` and returned by the
            app's loader (the app searches with several).
        variation_method, variation_pool, sampling_top_p, sampling_temperature: how those
            variations are chosen (:class:`~lightning_modules.rewriter_inference.
            RewriteVariations`): ``novel_terms`` (default: from a beam search over
            ``variation_pool`` beams, each next variation the one adding the most new content
            words; measured: ``benchmarks/rewriting_retrieval.py``), ``beams`` (the next
            distinct beams) or ``sampling`` (nucleus samples after the best beam). Saved in the
            export, so the app's loader chooses them the same way.
        union_sizes: validation judges the union of the first ``n`` variations for each ``n``
            here (``val/union{n}_coverage@10``), from one beam search: ``num_beams`` is raised
            to the largest ``n`` (and ``num_return_sequences``), so the best rewrite is the same
            in validation, ``predict`` and the app whatever ``n`` they ask for.
        restore_surface: respell uncased output from the question and history (see
            :mod:`lightning_modules.surface`); ``None``: only for tokenizers that lowercase.
        num_logged_examples: validation rewrites sent to the logger each epoch.
        dropout: ``true``/``false`` switches the network's dropout on/off for training. ``null``
            leaves it as transformers builds it: off for loaded checkpoints (``pretrained``,
            ``encoder_decoder``: ``from_pretrained`` returns eval mode, and Lightning keeps a
            submodule's mode), on for a T5 built from a config. The CANARD figures were
            measured that way.
        trust_remote_code: allow a hub model to run its own code. Off unless you opt in.
        init_from: warm start from a rewriter exported by this project (e.g. the deployed one):
            its network and tokenizer replace what ``init`` would build.
        torch_compile: ``torch.compile`` the network (opt-in).
        gradient_checkpointing: trade compute for activation memory (large models).
        candidate_loss: learn from every logged candidate, not only the mined one: a ranking
            loss of :mod:`lightning_modules.losses` (e.g. ``SoftmaxCrossEntropyLoss``) over
            each app record's candidate queries, scored by their length-normalised sequence
            log-likelihood (:meth:`candidate_scores`) and graded by how many of the user's
            selected sources each retrieved; added to the token cross-entropy on the mined
            target with ``candidate_loss_weight``. None (the default): that cross-entropy
            alone. On held-out TREC Session sessions it lowered coverage (README).
    """

    architecture = ARCHITECTURE

    def __init__(
        self,
        model_name_or_path: str = "prhegde/t5-query-reformulation-RL",
        init: Init = "pretrained",
        t5_config: dict[str, Any] | None = None,
        tokenizer_name_or_path: str | None = None,
        decoder_num_layers: int | None = None,
        cross_attention_init: CrossAttentionInit = "self_attention",
        learning_rate: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.05,
        label_smoothing: float = 0.0,
        num_beams: int = 4,
        max_new_tokens: int = 48,
        repetition_penalty: float = 1.8,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        num_return_sequences: int = 3,
        variation_method: VariationMethod = "novel_terms",
        variation_pool: int = 10,
        sampling_top_p: float = 0.9,
        sampling_temperature: float = 1.0,
        union_sizes: tuple[int, ...] = (1, 3, 5),
        restore_surface: bool | None = None,
        num_logged_examples: int = 8,
        dropout: bool | None = None,
        trust_remote_code: bool = False,
        init_from: str | None = None,
        torch_compile: bool = False,
        gradient_checkpointing: bool = False,
        candidate_loss: RankingLoss | None = None,
        candidate_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["candidate_loss"])
        self.candidate_loss = candidate_loss
        self.candidate_loss_weight = candidate_loss_weight
        self.torch_compile = torch_compile
        self.gradient_checkpointing = gradient_checkpointing
        self.model_name_or_path = model_name_or_path
        self.init = init
        self.init_from = init_from
        self.init_metadata: dict[str, Any] | None = None
        if init_from:
            # A previous export: its network and tokenizer, whatever `init` built it first.
            self.init_metadata = read_export_metadata(init_from, ARCHITECTURE)
            self.model, self.tokenizer = build_seq2seq(
                "pretrained", str(init_from), str(init_from), None, None, trust_remote_code
            )
        else:
            model_path = resolve_model_path(model_name_or_path)
            tokenizer_path = resolve_model_path(tokenizer_name_or_path or model_name_or_path)
            self.model, self.tokenizer = build_seq2seq(
                init,
                model_path,
                tokenizer_path,
                t5_config,
                decoder_num_layers,
                trust_remote_code,
                cross_attention_init,
            )
        # A BERT encoder's [CLS] pooler feeds nothing in a seq2seq model.
        self.freeze_unused_pooler(getattr(self.model, "encoder", None))
        if dropout is not None:
            self.model.train(dropout)
        self.variations = RewriteVariations(
            variation_method, variation_pool, sampling_top_p, sampling_temperature
        )
        if not union_sizes or min(union_sizes) < 1 or num_return_sequences < 1:
            raise ValueError("union_sizes and num_return_sequences must be positive")
        self.union_sizes = tuple(sorted(set(union_sizes)))
        # one beam search serves every n (see union_sizes)
        self.max_variations = max(num_return_sequences, *self.union_sizes)
        beams = self.variations.beams(num_beams, self.max_variations)
        if beams != num_beams:
            log.info(
                "num_beams %d -> %d: one beam search gives up to %d variations (%s)",
                num_beams,
                beams,
                self.max_variations,
                variation_method,
            )
        num_beams = beams
        generation = self.model.generation_config
        generation.num_beams = num_beams
        generation.max_new_tokens = max_new_tokens
        generation.repetition_penalty = repetition_penalty
        generation.length_penalty = length_penalty
        generation.no_repeat_ngram_size = no_repeat_ngram_size
        generation.early_stopping = num_beams > 1
        generation.max_length = None
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.label_smoothing = label_smoothing
        self.num_return_sequences = num_return_sequences
        self.num_logged_examples = num_logged_examples
        if restore_surface is None:
            restore_surface = needs_surface_restoration(self.tokenizer)
        self.restorer = SurfaceRestorer(self.tokenizer) if restore_surface else None
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{system}": RewriteMetrics()
                for stage in ("val", "test")
                for system in ("model", "copy")
            }
        )
        # what each rewrite finds: the retrieval judge over the log's sources (built from the
        # data module's app records when evaluation first needs it)
        self.coverage_systems = (*COVERAGE_SYSTEMS, *(union_system(n) for n in self.union_sizes))
        self.coverage = nn.ModuleDict(
            {stage: CoverageMetrics(self.coverage_systems) for stage in ("val", "test")}
        )
        self._judge: tuple[tuple, RetrievalJudge | None] | None = None
        self._samples: list[dict[str, str]] = []

    # -- text ------------------------------------------------------------------------------

    def loss_name(self) -> str:
        smoothing = f", label smoothing {self.label_smoothing}" if self.label_smoothing else ""
        name = f"token cross-entropy on the mined target{smoothing}"
        if self.candidate_loss is not None:
            name += (
                f" + {self.candidate_loss_weight:g} x {type(self.candidate_loss).__name__} over "
                "the logged candidates' mean token log-likelihoods, graded by selected sources "
                "found"
            )
        return name

    def input_encoder(self):
        """What the data module encodes inputs with: this model's tokenizer (``main.py`` links
        it into ``data.init_args.input_encoder``)."""
        return self.tokenizer

    def rewrites(self, batch: RewriteBatch, n: int = 1) -> list[list[str]]:
        """Up to ``n`` distinct rewrites of every question of the batch, best first."""
        return generate_rewrites(
            self.model, self.tokenizer, self.restorer, batch, n, self.variations
        )

    def rewrite(self, batch: RewriteBatch) -> list[str]:
        """The best rewrite of every question of the batch."""
        return [rewrites[0] for rewrites in self.rewrites(batch)]

    # -- training --------------------------------------------------------------------------

    def encode(self, batch: RewriteBatch) -> BaseModelOutput:
        """The encoder's output for the batch's questions (shared by the target's and the
        candidates' losses, so the encoder runs once a step)."""
        return self.model.get_encoder()(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        )

    def forward(self, batch: RewriteBatch, encoded: BaseModelOutput | None = None) -> torch.Tensor:
        # Decoder inputs are made from the labels here rather than by passing ``labels=``, which
        # would make transformers compute a second cross-entropy over the whole vocabulary.
        decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=batch.labels)
        logits = self.model(
            input_ids=None if encoded is not None else batch.input_ids,
            encoder_outputs=encoded,
            attention_mask=batch.attention_mask,
            decoder_input_ids=decoder_input_ids,
        ).logits
        return nn.functional.cross_entropy(
            logits.float().flatten(0, 1),
            batch.labels.flatten(),
            ignore_index=-100,
            label_smoothing=self.label_smoothing,
        )

    def candidate_scores(
        self, batch: RewriteBatch, encoded: BaseModelOutput | None = None
    ) -> torch.Tensor:
        """``[B, C]``: each candidate's mean token log-probability given the question (the
        encoder runs once per question; padded candidate slots score 0)."""
        labels = batch.candidate_labels
        size, width, length = labels.shape
        encoded = encoded if encoded is not None else self.encode(batch)
        hidden = encoded.last_hidden_state.repeat_interleave(width, dim=0)
        flat = labels.reshape(size * width, length)
        logits = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=batch.attention_mask.repeat_interleave(width, dim=0),
            decoder_input_ids=self.model.prepare_decoder_input_ids_from_labels(labels=flat),
        ).logits
        real = flat != -100
        token_logp = torch.log_softmax(logits.float(), dim=-1).gather(
            -1, flat.clamp(min=0).unsqueeze(-1)
        )
        token_logp = token_logp.squeeze(-1) * real
        mean = token_logp.sum(-1) / real.sum(-1).clamp(min=1)
        return mean.view(size, width)

    def training_step(self, batch: RewriteBatch, batch_idx: int) -> torch.Tensor:
        if batch.labels is None:
            raise ValueError("training pairs need targets")
        if self.candidate_loss is None or batch.candidate_labels is None:
            loss = self(batch)
        else:
            encoded = self.encode(batch)
            loss = self(batch, encoded)
            self.log("train/target_loss", loss, batch_size=len(batch))
            candidates = self.candidate_loss(
                self.candidate_scores(batch, encoded), batch.candidate_grades, batch.candidate_mask
            )
            self.log("train/candidate_loss", candidates, batch_size=len(batch))
            loss = loss + self.candidate_loss_weight * candidates
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    # -- evaluation ------------------------------------------------------------------------

    def retrieval_judge(self) -> RetrievalJudge | None:
        """The judge over every app record the data module has loaded (training, validation
        and test: one index, as the app has one search engine); None when no pair came from
        an app record whose sources have text (pairs files)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is None:
            return None
        # (called every evaluation batch: the loaded lists identify what was indexed)
        loaded = [
            getattr(datamodule, f"{stage}_pairs", None) or () for stage in ("train", "val", "test")
        ]
        key = tuple((id(pairs) if pairs else None, len(pairs)) for pairs in loaded)
        if self._judge is None or self._judge[0] != key:
            records = [p.record for pairs in loaded for p in pairs if getattr(p, "record", None)]
            judge = None
            if records:
                try:
                    judge = RetrievalJudge(records)
                except ValueError as error:  # bare urls only: nothing to retrieve by
                    log.warning("No retrieval judge for the rewrites: %s", error)
            self._judge = (key, judge)
        return self._judge[1]

    def _update_coverage(
        self,
        batch: RewriteBatch,
        stage: str,
        rewrites: list[list[str]],
        targets: list[str],
    ) -> None:
        judge = self.retrieval_judge()
        pairs = getattr(self.trainer.datamodule, f"{stage}_pairs", None) if judge else None
        if not pairs:
            return
        rows, values = [], []
        for row, index in enumerate(batch.indices):
            record = pairs[index].record
            if record is None:
                continue
            queries = {
                "model": rewrites[row][:1],
                "copy": [batch.sources[row]],
                "target": [targets[row]],
                # what the app searches with: its first n variations
                **{union_system(n): rewrites[row][:n] for n in self.union_sizes},
            }
            values.append(
                judge.union_coverages([queries[s] for s in self.coverage_systems], record)
            )
            rows.append(index)
        if rows:
            self.coverage[stage].update(torch.tensor(values, dtype=torch.float64), rows)

    def evaluation_step(self, batch: RewriteBatch, stage: str) -> None:
        if batch.labels is not None:
            self.log(f"{stage}/loss", self(batch), batch_size=len(batch))
        targets = [t or "" for t in batch.targets]
        # up to the largest union judged (one beam search: the best is the same as for n = 1)
        variations = self.rewrites(batch, self.max_variations)
        rewrites = [v[0] for v in variations]
        self.metrics[f"{stage}_model"].update(rewrites, targets, batch.indices)
        self.metrics[f"{stage}_copy"].update(batch.sources, targets, batch.indices)
        self._update_coverage(batch, stage, variations, targets)
        room = self.num_logged_examples - len(self._samples)
        for row in range(min(room, len(batch))):
            self._samples.append(
                {
                    "history": " | ".join(batch.histories[row]),
                    "question": batch.sources[row],
                    "rewrite": rewrites[row],
                    "target": targets[row],
                }
            )

    def evaluation_epoch_end(self, stage: str) -> None:
        model = self.metrics[f"{stage}_model"].compute()
        copy = self.metrics[f"{stage}_copy"].compute()
        if model["bleu"] < copy["bleu"] and not (self._trainer and self._trainer.sanity_checking):
            # The baseline the app already has: a rewriter below it should not replace it.
            log.warning(
                "%s BLEU %.2f is below the copy baseline's %.2f: this model rewrites worse than "
                "leaving the question unchanged",
                stage,
                float(model["bleu"]),
                float(copy["bleu"]),
            )
        self.log(f"{stage}/bleu", model["bleu"], prog_bar=True)
        logged = {}
        for name, value in model.items():
            if name != "bleu":
                logged[f"{stage}/{name}"] = value
            logged[f"{stage}/copy/{name}"] = copy[name]
            logged[f"{stage}/lift/{name}"] = value - copy[name]
        coverage = self.coverage[stage].compute()
        if not torch.isnan(coverage["model"]):  # pairs from app records, judged by retrieval
            name = f"coverage@{self._judge[1].k}"
            logged[f"{stage}/{name}"] = coverage["model"]
            logged[f"{stage}/copy/{name}"] = coverage["copy"]
            logged[f"{stage}/target/{name}"] = coverage["target"]
            logged[f"{stage}/lift/{name}"] = coverage["model"] - coverage["copy"]
            # the union of the first n variations the app searches with
            for n in self.union_sizes:
                union = union_system(n)
                logged[f"{stage}/{union}_{name}"] = coverage[union]
                logged[f"{stage}/lift/{union}_{name}"] = coverage[union] - coverage["copy"]
        self.log_dict(logged)
        self._log_samples(stage)
        self.keep_evaluation(
            stage,
            {
                "model": self.metrics[f"{stage}_model"].per_sentence(),
                "copy": self.metrics[f"{stage}_copy"].per_sentence(),
                "coverage": self.coverage[stage].per_pair(),
            },
        )
        self.metrics[f"{stage}_model"].reset()
        self.metrics[f"{stage}_copy"].reset()
        self.coverage[stage].reset()

    def _log_samples(self, stage: str) -> None:
        samples, self._samples = self._samples, []
        if not samples or self._trainer is None or self._trainer.sanity_checking:
            return
        for sample in samples:
            log.info(
                "%s sample: %s -> %s (target: %s)",
                stage,
                sample["question"],
                sample["rewrite"],
                sample["target"],
            )
        columns = ["history", "question", "rewrite", "target"]
        rows = [[sample[c] for c in columns] for sample in samples]
        log_examples(self, f"{stage}/samples", columns, rows)

    def predict_step(self, batch: RewriteBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Up to ``num_return_sequences`` distinct, non-empty rewrites per question, best first.

        (At least one: the question itself when the model generated nothing usable.)
        """
        rewrites = self.rewrites(batch, self.num_return_sequences)
        return [
            {"index": index, "question": question, "rewrites": found}
            for index, question, found in zip(batch.indices, batch.sources, rewrites, strict=True)
        ]

    # -- optimisation ----------------------------------------------------------------------

    # -- export ----------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        input_format = getattr(getattr(self.trainer, "datamodule", None), "input_format", None)
        deployed = (self.init_metadata or {}).get("input_format")
        if deployed is not None and input_format is not None and deployed != input_format.as_dict():
            log.warning(
                "init_from %s was trained with input format %s; this run uses %s",
                self.init_from,
                deployed,
                input_format.as_dict(),
            )

    def export_metadata(self, datamodule: L.LightningDataModule | None) -> dict[str, Any]:
        input_format = getattr(datamodule, "input_format", None)
        lineage = self.init_metadata or {}
        return {
            "architecture": self.architecture,
            "init": lineage.get("init", self.init),
            "base_model": lineage.get("base_model", self.model_name_or_path),
            "init_from": self.init_from,
            "input_format": input_format.as_dict() if input_format is not None else None,
            # the collator's clipping of every text, so the app's loader builds the same inputs
            "max_text_chars": getattr(datamodule, "max_text_chars", DEFAULT_MAX_TEXT_CHARS),
            # Uncased models' output is respelt from the question and history before use:
            # lightning_modules.surface.SurfaceRestorer.
            "postprocess": "restore_surface" if self.restorer is not None else None,
            "num_return_sequences": self.num_return_sequences,
            "variations": self.variations.as_dict(),
        }

    def export(
        self,
        export_dir: str | Path,
        *,
        datamodule: L.LightningDataModule | None = None,
        overwrite: bool = False,
    ) -> Path:
        """A folder that loads with ``AutoModelForSeq2SeqLM`` + ``AutoTokenizer``, atomically.

        The generation settings travel in ``generation_config.json``; the input format (task
        prefix, history) and post-processing in ``feedback_finetuning.json``.
        """

        def save_model(folder: Path) -> None:
            self.model.save_pretrained(folder, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)

        return export_folder(
            export_dir,
            save_model,
            {**self.export_metadata(datamodule), "training": self.training_record(datamodule)},
            overwrite=overwrite,
        )
