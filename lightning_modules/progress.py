"""Progress that shows in a log file.

Lightning's TQDM bar redraws one line with carriage returns: on a terminal that is a live bar,
but with the output redirected (``nohup``, SLURM, CI) the file holds one line per epoch at
best. :class:`LogProgress` writes whole lines instead, every ``every_n_seconds`` and at the end
of each epoch and stage: the stage, epoch, batch, the progress-bar metrics (the loss), elapsed
and estimated remaining time. :class:`~main.FeedbackTrainer` uses it by itself when standard
error is not a terminal and no other progress bar is configured.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def is_interactive(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class LogProgress(ProgressBar):
    """A progress bar made of log lines (see the module docstring).

    Args:
        every_n_seconds: least time between two lines of the same stage.
        stream: where lines go (standard error, as Lightning's bar and logging; ``nohup``
            sends it to the same file as standard output).
    """

    def __init__(self, every_n_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_seconds < 0:
            raise ValueError(f"every_n_seconds must be >= 0, got {every_n_seconds}")
        self.every_n_seconds = every_n_seconds
        self.stream = stream
        self._enabled = True
        self._started: dict[str, float] = {}
        self._last_line: dict[str, float] = {}
        self._fit_started: float | None = None

    # -- ProgressBar's interface ----------------------------------------------------------

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(*args, file=self.stream or sys.stderr, flush=True, **kwargs)

    # -- lines -----------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=self.stream or sys.stderr, flush=True)

    def _start(self, stage: str) -> None:
        now = time.monotonic()
        self._started[stage] = now
        self._last_line[stage] = now

    def _metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        items = []
        for name, value in self.get_metrics(trainer, pl_module).items():
            if name == "v_num":
                continue
            items.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
        return " ".join(items)

    def _line(
        self,
        stage: str,
        done: int,
        total: int | float,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        *,
        force: bool = False,
        epochs_left: int = 0,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_line.get(stage, 0.0) < self.every_n_seconds:
            return
        self._last_line[stage] = now
        elapsed = now - self._started.get(stage, now)
        known = isinstance(total, int) and total > 0
        remaining = math.inf
        if known and done:
            per_batch = elapsed / done
            remaining = per_batch * (total - done) + epochs_left * per_batch * total
        where = f"{done}/{total if known else '?'}"
        share = f" ({100 * done / total:.0f}%)" if known else ""
        parts = [f"[{stage}]"]
        if stage == "train":
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
            parts.append(f"epoch {trainer.current_epoch + 1}/{epochs}")
            parts.append(f"step {trainer.global_step}")
        parts.append(f"batch {where}{share}")
        metrics = self._metrics(trainer, pl_module) if stage == "train" else ""
        if metrics:
            parts.append(metrics)
        parts.append(f"elapsed {format_duration(elapsed)}")
        if known and done < total or epochs_left:
            parts.append(f"remaining ~{format_duration(remaining)}")
        if stage == "train" and self._fit_started is not None:
            parts.append(f"(fit {format_duration(now - self._fit_started)})")
        self._write(" ".join(parts))

    # -- hooks -----------------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("train")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.monotonic() - (self._fit_started or time.monotonic())
        self._write(
            f"[train] finished: epoch {trainer.current_epoch}, step {trainer.global_step}, "
            f"in {format_duration(elapsed)}"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = self.total_train_batches
        last = isinstance(total, int) and batch_idx + 1 >= total
        epochs_left = 0
        if trainer.max_epochs and trainer.max_epochs > 0:
            epochs_left = max(trainer.max_epochs - trainer.current_epoch - 1, 0)
        first = batch_idx == 0
        self._line(
            "train",
            batch_idx + 1,
            total,
            trainer,
            pl_module,
            force=first or last,
            epochs_left=epochs_left,
        )

    def _eval_start(self, stage: str) -> None:
        self._start(stage)

    def _eval_batch(self, stage: str, batch_idx: int, total, trainer, pl_module) -> None:
        last = isinstance(total, int) and batch_idx + 1 >= total
        self._line(stage, batch_idx + 1, total, trainer, pl_module, force=last)

    # (the base class tracks the current evaluation dataloader from these)
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.has_dataloader_changed(dataloader_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.has_dataloader_changed(dataloader_idx)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.has_dataloader_changed(dataloader_idx)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset_dataloader_idx_tracker()
        if not trainer.sanity_checking:
            self._eval_start("validate")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            total = self.total_val_batches_current_dataloader
            self._eval_batch("validate", batch_idx, total, trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset_dataloader_idx_tracker()
        if trainer.sanity_checking:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and "/" not in k[4:]
        }
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        elapsed = time.monotonic() - self._started.get("validate", time.monotonic())
        self._write(f"[validate] done in {format_duration(elapsed)}: {shown}".rstrip(": "))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset_dataloader_idx_tracker()
        self._eval_start("test")

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        total = self.total_test_batches_current_dataloader
        self._eval_batch("test", batch_idx, total, trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset_dataloader_idx_tracker()
        self._eval_start("predict")

    def on_predict_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        total = self.total_predict_batches_current_dataloader
        self._eval_batch("predict", batch_idx, total, trainer, pl_module)
