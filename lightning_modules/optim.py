"""The optimiser both models fine-tune with: AdamW, linear warm-up, then linear decay to 0."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from transformers import get_linear_schedule_with_warmup

from lightning_modules.base import has_grad_scaler


def decays(param: torch.Tensor) -> bool:
    """Weight decay for matrices (linear and embedding weights) only: biases, norm scales and
    scalars such as a learnable temperature (rank 0 or 1) are not pulled towards 0. Decided by
    the tensor's rank, not its name, so that no naming convention can slip through."""
    return param.ndim >= 2


def use_fused(params: list[torch.Tensor], trainer: L.Trainer | None = None) -> bool | None:
    """The fused AdamW kernel where it exists (CPU and CUDA tensors of float types): one pass
    over all parameters instead of one kernel per tensor, ~4x faster a step on this project's
    CPU for a 45M-parameter model (MiniLM encoder-decoder: 19 ms against 88 ms). ``None``
    leaves the choice to torch: also under fp16 with gradient clipping, which Lightning cannot
    do for a fused optimizer (its gradients are still scaled when it would clip)."""
    devices = {p.device.type for p in params}
    floats = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    if trainer is not None and trainer.gradient_clip_val and has_grad_scaler(trainer):
        return None
    return True if params and floats and len(devices) == 1 and devices <= {"cpu", "cuda"} else None


def adamw_with_linear_warmup(
    module: L.LightningModule, learning_rate: float, weight_decay: float, warmup_ratio: float
) -> dict[str, Any]:
    """``configure_optimizers``' return value: warm-up over ``warmup_ratio`` of all steps.

    Frozen parameters (``requires_grad=False``) are left out; only matrices decay (:func:`decays`).
    Parameters in the module's ``extra_parameter_groups()`` (e.g. a position model's terms, with
    their own learning rate) get those groups instead; the schedule scales every group alike.
    """
    extra = module.extra_parameter_groups() if hasattr(module, "extra_parameter_groups") else []
    own = {id(p) for group in extra for p in group["params"]}
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad and id(param) not in own:
            (decay if decays(param) else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *extra,
    ]
    fused = use_fused(decay + no_decay + [p for g in extra for p in g["params"]], module.trainer)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, fused=fused)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = int(math.ceil(warmup_ratio * total))
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
