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
    """At the end of ``fit``, export the best checkpoint (by the ModelCheckpoint's monitor).

    Args:
        export_dir: where to write; default ``<log dir>/export``, a fresh folder for every run,
            so a fit never replaces a model that is already there.
        overwrite: replace ``export_dir`` if it exists.
        onnx: also write ``onnx/model.onnx`` and its int8 quantisation into the export (a
            reranker only; needs the ``onnx`` extra, checked when the fit starts). Off by
            default: it adds a few seconds to a small model's export, and the app that loads
            the Hugging Face folder has no use for it.
    """

    def __init__(
        self, export_dir: str | None = None, overwrite: bool = False, onnx: bool = False
    ) -> None:
        self.export_dir = export_dir
        self.overwrite = overwrite
        self.onnx = onnx

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        checkpoint = next(
            (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path),
            None,
        )
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if checkpoint is not None:
            load_weights(pl_module, checkpoint.best_model_path)
            log.info("Exporting best checkpoint %s", checkpoint.best_model_path)
        target = Path(self.export_dir or rank_zero_log_dir(trainer) / "export")
        extra = {"onnx": True} if self.onnx else {}
        pl_module.export(target, datamodule=trainer.datamodule, overwrite=self.overwrite, **extra)
        pl_module.load_state_dict(state)  # leave the module as fit left it
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
