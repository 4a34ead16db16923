"""The base both task modules share (:class:`FeedbackModule`), and what they share around
checkpoints: the global random generator states travel with them, so that a run resumed
mid-epoch draws the same dropout masks as the run it continues (see :mod:`datamodules.resumable`
for the data order), and the opt-in speed levers are applied when Lightning builds the model."""

from __future__ import annotations

import json
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from lightning_modules.backbones import apply_speed_options

RNG_KEY = "feedback_finetuning_rng_states"


def save_rng_states(checkpoint: dict[str, Any]) -> None:
    checkpoint[RNG_KEY] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        # (plain types and tensors only: loadable with torch.load(weights_only=True))
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": random.getstate(),
    }


def _numpy_state_to_plain(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached


def restore_rng_states(checkpoint: dict[str, Any]) -> None:
    states = checkpoint.get(RNG_KEY)
    if not states:  # a checkpoint from before this was saved, or from elsewhere
        return
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(states["python"])


class FeedbackModule(L.LightningModule):
    """Base of the reranker and rewriter modules: what a task shares (optimiser, the
    validation/test dispatch, the evaluation kept for the gate, the training record of an
    export, the speed levers, RNG states in checkpoints). A task sets ``self.model`` (the
    network), ``architecture``, ``learning_rate``/``weight_decay``/``warmup_ratio``,
    ``torch_compile`` and ``gradient_checkpointing``, and says how a batch is evaluated
    (``evaluation_step``) and how an evaluation ends (``evaluation_epoch_end``)."""

    architecture: str = ""
    torch_compile: bool = False
    gradient_checkpointing: bool = False

    @staticmethod
    def freeze_unused_pooler(encoder: torch.nn.Module | None) -> None:
        """BERT's [CLS] pooler feeds neither mean pooling nor a seq2seq decoder: frozen, it is
        neither trained nor (under DDP) a parameter without a gradient, which DDP refuses."""
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, torch.nn.Module):
            pooler.requires_grad_(False)

    def evaluation_step(self, batch: Any, stage: str) -> None:
        raise NotImplementedError

    def evaluation_epoch_end(self, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.evaluation_epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.evaluation_epoch_end("test")

    def extra_parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups with settings of their own (their parameters leave the default
        groups): none unless a model has such parameters."""
        return []

    def configure_optimizers(self):
        from lightning_modules.optim import adamw_with_linear_warmup

        return adamw_with_linear_warmup(
            self, self.learning_rate, self.weight_decay, self.warmup_ratio
        )

    def keep_evaluation(self, stage: str, results: dict[str, Any]) -> None:
        """What the last validation/test pass measured, per query and per system (the model
        and the baseline the app already has), kept for the promotion gate's paired bootstrap
        after the epoch's metrics are logged and reset: ``self.evaluations[stage]``."""
        if not hasattr(self, "evaluations"):
            self.evaluations: dict[str, dict[str, Any]] = {}
        self.evaluations[stage] = results

    def training_record(self, datamodule: L.LightningDataModule | None) -> dict[str, Any]:
        """What an export says about how it was made (``feedback_finetuning.json`` and the
        model card): the recipe, the loss, the data (files and a hash of their contents) and,
        when exported from a fit, the validation metric beside its baseline."""
        from lightning_modules.loggers import data_content_hash, training_data_files
        from lightning_modules.metrics import baseline_name

        recipe = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        record: dict[str, Any] = {
            "recipe": json.loads(json.dumps(recipe, default=str)),
            "loss": self.loss_name(),
        }
        files = {
            key: [str(f) for f in getattr(datamodule, key, None) or []]
            for key in ("train_files", "val_files")
        }
        if any(files.values()):
            found = training_data_files({"init_args": files})
            record["data"] = {**files, "content_hash": data_content_hash(found)}
        trainer = self._trainer
        checkpoint = getattr(trainer, "checkpoint_callback", None) if trainer else None
        monitor = getattr(checkpoint, "monitor", None)
        metrics = trainer.callback_metrics if trainer is not None else {}
        if monitor and monitor in metrics:
            value = float(metrics[monitor])
            baseline_key = baseline_name(monitor)
            validation = {"metric": monitor, "value": value, "epoch": trainer.current_epoch}
            if baseline_key in metrics:
                baseline = float(metrics[baseline_key])
                validation.update(baseline_metric=baseline_key, baseline=baseline)
                validation["lift"] = value - baseline
            record["validation"] = validation
        return record

    def loss_name(self) -> str:
        """The training objective, as the model card names it."""
        loss = getattr(self, "loss", None)
        return type(loss).__name__ if loss is not None else "unknown"

    def configure_model(self) -> None:
        apply_speed_options(
            self.model,
            compile=self.torch_compile,
            gradient_checkpointing=self.gradient_checkpointing,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_rng_states(checkpoint)  # a mid-epoch resume continues the same random stream

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_states(checkpoint)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning refuses to clip for a fused optimizer under mixed precision, because with a
        # GradScaler (fp16) the gradients are still scaled at this point. bf16 has no scaler:
        # the gradients are the true ones, and clipping them here is what Lightning would do.
        # (With a scaler the optimizer is not fused: see lightning_modules/optim.py.)
        fused = bool(getattr(optimizer, "defaults", {}).get("fused"))
        if fused and gradient_clip_val and not has_grad_scaler(self.trainer):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def has_grad_scaler(trainer: L.Trainer) -> bool:
    """True when gradients reach the optimizer scaled (fp16 mixed precision)."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None
