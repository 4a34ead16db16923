"""Callbacks that turn a run into artefacts the app can use: exported models and rankings."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint

from lightning_modules.export import write_atomically
from lightning_modules.loggers import rank_zero_log_dir

log = logging.getLogger(__name__)


def load_weights(module: L.LightningModule, ckpt_path: str | Path) -> None:
    """Load a Lightning checkpoint's weights into an already built module (strictly).

    Read memory-mapped and as plain data only (``weights_only``): nothing in the file is run,
    and the optimizer's states beside the weights are never brought into memory.
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    module.load_state_dict(checkpoint["state_dict"])


class ExportBestModel(L.Callback):
    """The best model of a fit as a folder the app loads, written as a by-product of
    checkpointing: whenever the ModelCheckpoint saves a new best (by its monitor), the module
    holds exactly those weights, and the export is written then, replacing this fit's previous
    one atomically. Nothing is cloned or reloaded, and the export's model card and metadata
    carry that epoch's validation metric beside its baseline.

    Without a monitored ModelCheckpoint, the weights the fit ends with are exported. A resumed
    fit that never beats the best checkpoint it resumed with exports that checkpoint (loaded,
    exported, then the module's weights put back).

    Args:
        export_dir: where to write; default ``<log dir>/export``, a fresh folder for every run,
            so a fit never replaces a model that is already there.
        overwrite: replace ``export_dir`` if it exists when the fit first writes it.
        onnx: also write ``onnx/model.onnx`` and its int8 quantisation into the export (a
            reranker only; needs the ``onnx`` extra, checked when the fit starts). Off by
            default: it adds a few seconds to every export of a small model, and the app that
            loads the Hugging Face folder has no use for it.
    """

    def __init__(
        self, export_dir: str | None = None, overwrite: bool = False, onnx: bool = False
    ) -> None:
        self.export_dir = export_dir
        self.overwrite = overwrite
        self.onnx = onnx
        self._exported_best: tuple[str, float | None] | None = None
        self._wrote_export = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wrote_export = False
        if not self.onnx:
            return
        # Refuse now, not after the whole fit.
        if "onnx" not in inspect.signature(pl_module.export).parameters:
            raise ValueError(
                f"ExportBestModel(onnx=true): {type(pl_module).__name__} has no ONNX export "
                "(the rerankers have)"
            )
        from lightning_modules.onnx_export import require_onnx_dependencies

        require_onnx_dependencies("ExportBestModel(onnx=true)")

    @staticmethod
    def _checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
        return next(
            (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None
        )

    @staticmethod
    def _best(checkpoint: ModelCheckpoint) -> tuple[str, float | None]:
        score = checkpoint.best_model_score
        return checkpoint.best_model_path, None if score is None else float(score)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # (after a resume has restored the ModelCheckpoint: its best so far is not new)
        checkpoint = self._checkpoint(trainer)
        self._exported_best = self._best(checkpoint) if checkpoint is not None else None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # ModelCheckpoint records a new best before it saves it: the weights are the best's.
        monitor = self._checkpoint(trainer)
        if monitor is None or trainer.sanity_checking or trainer.fast_dev_run:
            return
        best = self._best(monitor)
        if best[0] and best != self._exported_best:
            self._exported_best = best
            log.info("New best checkpoint %s: exporting it", best[0])
            self._export(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._wrote_export or trainer.fast_dev_run:
            return
        checkpoint = self._checkpoint(trainer)
        if checkpoint is None or not checkpoint.best_model_path:
            self._export(trainer, pl_module)  # nothing monitored: the final weights
            return
        # Resumed, and no epoch beat the best it resumed with: that checkpoint's weights.
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        load_weights(pl_module, checkpoint.best_model_path)
        log.info("Exporting best checkpoint %s", checkpoint.best_model_path)
        try:
            self._export(trainer, pl_module)
        finally:
            pl_module.load_state_dict(state)  # leave the module as fit left it

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wrote_before, self._wrote_export = self._wrote_export, True
        if not trainer.is_global_zero:
            return
        target = Path(self.export_dir or rank_zero_log_dir(trainer) / "export")
        extra = {"onnx": True} if self.onnx else {}
        # The first write of this fit honours `overwrite`; later ones replace its own export.
        overwrite = self.overwrite or wrote_before
        pl_module.export(target, datamodule=trainer.datamodule, overwrite=overwrite, **extra)
        print(f"Exported the fine-tuned model to {target}")


class _PredictionFolderWriter(BasePredictionWriter):
    """Writes ``predict`` results once, at the end, into a fresh folder (atomically).

    Args:
        output_dir: where to write; default ``<log dir>/predictions``, fresh for every run.
        overwrite: replace ``output_dir`` if it exists.
    """

    def __init__(self, output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.overwrite = overwrite

    def _write_folder(self, trainer: L.Trainer, write: Callable[[Path], None]) -> Path:
        target = Path(self.output_dir or Path(trainer.log_dir or ".") / "predictions")
        return write_atomically(target, write, overwrite=self.overwrite)


class RerankingWriter(_PredictionFolderWriter):
    """Writes ``predict`` results: the reranked feedback JSON and a TREC run file.

    ``reranked.json`` is the input in the app's format with ``all_sources`` reordered best
    first, each source carrying its ``score`` and ``display_position`` (where the app showed
    it). ``run.trec`` has one line per source: ``qid Q0 docid rank score tag``, where docid is
    the source url (``url#position`` when a url repeats within a query).

    Args:
        output_dir: where to write; default ``<log dir>/predictions``, fresh for every run.
        tag: the run tag of the TREC run file.
        overwrite: replace ``output_dir`` if it exists.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        tag: str = "feedback-finetuning",
        overwrite: bool = False,
    ) -> None:
        super().__init__(output_dir, overwrite)
        self.tag = tag

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        records = trainer.datamodule.predict_records
        results = [item for batch in predictions for item in batch]
        results.sort(key=lambda r: r["record_index"])

        def write(folder: Path) -> None:
            reranked, lines = [], []
            for result in results:
                record = records[result["record_index"]]
                urls = [s.url for s in record.sources]
                sources = []
                for rank, (position, score) in enumerate(result["ranking"], start=1):
                    source = record.sources[position]
                    sources.append(
                        {
                            "title": source.title,
                            "url": source.url,
                            "snippet": source.snippet,
                            "score": score,
                            "display_position": position,
                        }
                    )
                    docid = (
                        source.url if urls.count(source.url) == 1 else f"{source.url}#{position}"
                    )
                    lines.append(f"{record.query_id} Q0 {docid} {rank} {score:.6f} {self.tag}")
                reranked.append(
                    {"query_id": record.query_id, "query": record.query, "all_sources": sources}
                )
            (folder / "reranked.json").write_text(
                json.dumps({"reranker_data": reranked}, ensure_ascii=False, indent=1) + "\n"
            )
            (folder / "run.trec").write_text("\n".join(lines) + "\n")

        target = self._write_folder(trainer, write)
        print(f"Wrote {len(results)} reranked queries to {target}")


class RewriteWriter(_PredictionFolderWriter):
    """Writes ``predict`` results of the query rewriter: ``rewrites.jsonl``, one line a question.

    Each line is ``{"question", "history", "rewrites": [best, ...]}`` in input order, with the
    number of rewrites set by the model's ``num_return_sequences`` (the app searches with
    several variations).

    Args:
        output_dir: where to write; default ``<log dir>/predictions``, fresh for every run.
        overwrite: replace ``output_dir`` if it exists.
    """

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        pairs = trainer.datamodule.predict_pairs
        results = sorted((r for batch in predictions for r in batch), key=lambda r: r["index"])

        def write(folder: Path) -> None:
            with open(folder / "rewrites.jsonl", "w", encoding="utf-8") as handle:
                for result in results:
                    pair = pairs[result["index"]]
                    line = {
                        "question": pair.source,
                        "history": list(pair.history),
                        "rewrites": result["rewrites"],
                    }
                    handle.write(json.dumps(line, ensure_ascii=False) + "\n")

        target = self._write_folder(trainer, write)
        print(f"Wrote rewrites of {len(results)} questions to {target}")


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class ReleaseFreedMemory(L.Callback):
    """Give the memory that tensors freed back to the operating system after every training
    step and evaluation pass (glibc's ``malloc_trim``; a no-op on other C libraries).

    Why: PyTorch's CPU tensors come from ``malloc``. Once a few have been freed, glibc serves
    blocks under 32 MiB from its heap instead of mapping them apart, and keeps freed heap pages
    resident; chunks of a different length every step then leave holes that new allocations do
    not fill, and the process's resident memory creeps up through a fit (measured on the default
    reranker fit: from 1.6 to 2.0 GiB, with nothing more in use). Trimming after each step hands
    the holes back; the next step then touches fresh pages again (more minor page faults; their
    time has not been measured apart from the rest of a step).

    Args:
        every_n_steps: trim after every this many training steps (0: only after evaluation).
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.trim = _glibc_malloc_trim()
        self.trims = 0

    def release(self) -> None:
        if self.trim is not None:
            self.trim(0)
            self.trims += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and (batch_idx + 1) % self.every_n_steps == 0:
            self.release()

    def on_validation_end(self, trainer, pl_module) -> None:
        self.release()

    def on_test_end(self, trainer, pl_module) -> None:
        self.release()
