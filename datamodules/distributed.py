"""Evaluation under several processes (DDP): every query scored exactly once.

Lightning gives each process a ``DistributedSampler`` that pads the data with repeats so that
all processes get the same number of batches. That is harmless for training, but in evaluation a
repeated query is scored twice, and ranking metrics (which group by query) and corpus BLEU then
differ from a single process's. Evaluation loaders therefore get an unrepeated sampler here:
each process scores its own share of the queries, whole, and torchmetrics gathers them all
before computing, so the figures equal the single-process ones (tested).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


def evaluation_sampler(datamodule: L.LightningDataModule, dataset: Dataset) -> Sampler | None:
    """An unrepeated, unshuffled share of ``dataset`` for this process; ``None`` on one."""
    trainer = datamodule.trainer
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
