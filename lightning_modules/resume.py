"""Global random generator states travel with checkpoints, so that a run resumed mid-epoch
draws the same dropout masks as the run it continues (see :mod:`datamodules.resumable` for the
data order)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

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
