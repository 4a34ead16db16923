"""Training data that a killed run can resume mid-epoch, batch for batch.

An uninterrupted run and a run resumed from a mid-epoch checkpoint see the same batches only if
the order of an epoch depends on nothing but the seed and the epoch, and the resumed epoch
starts where the checkpoint left it. So:

* :class:`ResumableSampler` orders each epoch from ``(seed, epoch)`` (Lightning calls its
  ``set_epoch``), and can start an epoch part-way;
* :class:`ResumableTrainingData` (a data module base) records in every checkpoint how many
  batches of the current epoch were trained, and on resume makes the sampler skip them; its
  training loader has its own random generator, so that it never draws on the global one, whose
  state the modules save with their checkpoints (:mod:`lightning_modules.base`).

Random choices inside the dataset (the reranker's negative sampling) take their seed from the
``(index, epoch)`` items such a sampler yields, never from a global generator.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (order matters)."""
    seed = 0x9E3779B97F4A7C15
    for part in parts:
        seed = (seed * 6364136223846793005 + int(part) + 1442695040888963407) % (1 << 63)
    return seed


class ResumableSampler(Sampler):
    """Base: ``order()`` is the epoch's indices as a function of ``(seed, epoch)``.

    Args:
        seed: base seed (default: torch's initial seed, i.e. ``seed_everything``'s).
        with_epoch: yield ``(index, epoch)`` instead of ``index``, for datasets that draw
            random choices per item.
    """

    def __init__(self, size: int, seed: int | None = None, with_epoch: bool = False) -> None:
        self.size = size
        self.seed = torch.initial_seed() if seed is None else seed
        self.with_epoch = with_epoch
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, items to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, items_done: int) -> None:
        self._resume = (epoch, items_done)

    def order(self) -> list[int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Any]:
        # (a generator: the order is made at the first next(), after Lightning's set_epoch)
        order = self.order()
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        for index in order[start:]:
            yield (index, self.epoch) if self.with_epoch else index


class ShuffleSampler(ResumableSampler):
    """A random permutation per epoch."""

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return torch.randperm(self.size, generator=generator).tolist()


class LengthGroupedSampler(ResumableSampler):
    """Shuffled batches of similar input length: less padding, same data each epoch.

    Shuffles, cuts the order into windows of ``batch_size * window_batches`` examples, sorts
    each window by length and shuffles the resulting batches (the usual "bucketing" trick).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        window_batches: int = 50,
        seed: int | None = None,
    ) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.window = batch_size * window_batches

    def order(self) -> list[int]:
        rng = random.Random(mix_seed(self.seed, self.epoch))
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=self.lengths.__getitem__)
            batches += [
                window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)
            ]
        rng.shuffle(batches)
        return [index for batch in batches for index in batch]


class ResumableTrainingData(L.LightningDataModule):
    """A data module whose training order survives a checkpoint mid-epoch.

    Lightning stores a data module's ``state_dict`` in every checkpoint and hands it back on
    resume: here, the epoch and how many of its batches were trained. The training sampler then
    starts that epoch past them. (Lightning's own hook for stateful loaders is not used: the
    training loader already exists, built to count the optimisation steps, when a resumed fit
    would load its state, so the state would never reach it.)
    """

    _train_sampler: ResumableSampler | None = None
    _train_batch_size: int = 1
    _pending_resume: dict[str, int] | None = None

    def resumable_loader(
        self, dataset: Any, sampler: ResumableSampler, batch_size: int, **kwargs: Any
    ) -> DataLoader:
        """The training loader. Its own generator keeps it from drawing on the global one, whose
        state the modules save with their checkpoints (:mod:`lightning_modules.base`)."""
        self._train_sampler, self._train_batch_size = sampler, batch_size
        self._apply_resume()
        generator = torch.Generator().manual_seed(sampler.seed)
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs
        )

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        # At a batch end, the batch just trained is "processed" but not yet "completed".
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending_resume = dict(state_dict)
            self._apply_resume()

    def _apply_resume(self) -> None:
        if self._pending_resume is None or self._train_sampler is None:
            return
        state, self._pending_resume = self._pending_resume, None
        self._train_sampler.resume_at(state["epoch"], state["batches"] * self._train_batch_size)
