"""The optimiser both models fine-tune with: AdamW, linear warm-up, then linear decay to 0."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from transformers import get_linear_schedule_with_warmup

# Parameters that AdamW should not decay (the usual BERT/T5 recipe).
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def adamw_with_linear_warmup(
    module: L.LightningModule, learning_rate: float, weight_decay: float, warmup_ratio: float
) -> dict[str, Any]:
    """``configure_optimizers``' return value: warm-up over ``warmup_ratio`` of all steps.

    Frozen parameters (``requires_grad=False``) are left out; biases and norms get no decay.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if any(n in name for n in NO_DECAY) else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
    )
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = int(math.ceil(warmup_ratio * total))
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
