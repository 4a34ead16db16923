"""What the two tasks' data modules share: the stage files, the split, setup by stage, the
loaders, and the model's input encoder handed in from outside (``main.py`` links it).

A task says only what is particular to it: how a file becomes items (``load``), how the training
items are split when no ``val_files`` are given (``split_fit``), how items become a loader
(``loader``) and what it calls its items (``items_name``: ``train_records``, ``val_pairs``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import DataLoader

from datamodules.feedback import OnInvalid, ParseReport
from datamodules.resumable import ResumableTrainingData
from datamodules.split import SplitMode

STAGES = ("train", "val", "test", "predict")


class FeedbackDataModule(ResumableTrainingData):
    """Base of :class:`~datamodules.reranker.RerankerDataModule` and
    :class:`~datamodules.query_rewriting.QueryRewritingDataModule` (their docstrings describe
    the arguments)."""

    items_name = "items"  # the attributes are <stage>_<items_name>
    nothing_to_learn = "No training item"

    def __init__(
        self,
        *,
        train_files: list[str] | None,
        val_files: list[str] | None,
        test_files: list[str] | None,
        predict_files: list[str] | None,
        validation_fraction: float,
        split: SplitMode,
        deduplicate: bool,
        split_salt: str,
        on_invalid: OnInvalid,
        max_text_chars: int,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        input_encoder: Any,
    ) -> None:
        super().__init__()
        self.train_files = train_files or []
        self.val_files = val_files or []
        self.test_files = test_files or []
        self.predict_files = predict_files or []
        self.validation_fraction = validation_fraction
        self.split = split
        self.deduplicate = deduplicate
        self.split_salt = split_salt
        self.on_invalid = on_invalid
        self.max_text_chars = max_text_chars
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.input_encoder = input_encoder
        for stage in STAGES:
            setattr(self, f"{stage}_{self.items_name}", [])
        self.reports: dict[str, ParseReport] = {}

    # -- what a task says ------------------------------------------------------------------

    def load(self, name: str, files: list[str]) -> Sequence[Any]:
        """The items of ``files`` (``name``: train, validation, test, predict), with the load
        report kept in ``self.reports[name]``."""
        raise NotImplementedError

    def split_fit(self, items: Sequence[Any]) -> None:
        """Set the training and validation items from the training files' (``val_files``
        absent) or from both (``val_files`` given: ``self.val_<items>`` is already loaded)."""
        raise NotImplementedError

    def loader(self, items: Sequence[Any], stage: str) -> DataLoader:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------

    def items(self, stage: str) -> Sequence[Any]:
        return getattr(self, f"{stage}_{self.items_name}")

    def setup(self, stage: str | None = None) -> None:
        if self.input_encoder is None:
            raise RuntimeError(
                f"{type(self).__name__} needs an input_encoder (the model's: "
                "`model.input_encoder()`, its tokenizer and lengths): main.py links it; "
                "elsewhere pass it to the data module or set `datamodule.input_encoder` "
                "before setup."
            )
        if stage in (None, "fit", "validate") and not (self.items("train") or self.items("val")):
            if not self.train_files and not self.val_files:
                raise ValueError(
                    "fit/validate need data.train_files (and optionally data.val_files)"
                )
            items = self.load("train", self.train_files) if self.train_files else []
            if self.val_files:
                setattr(self, f"val_{self.items_name}", self.load("validation", self.val_files))
            self.split_fit(items)
        for name in ("test", "predict"):
            if stage in (None, name) and not self.items(name):
                files = getattr(self, f"{name}_files")
                if not files:
                    raise ValueError(f"`{name}` needs data.{name}_files")
                setattr(self, f"{name}_{self.items_name}", self.load(name, files))

    def train_dataloader(self) -> DataLoader:
        if not self.items("train"):
            report = self.reports.get("train", ParseReport())
            raise ValueError(f"{self.nothing_to_learn}: nothing to learn from ({report.summary()})")
        return self.loader(self.items("train"), "train")

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.items("val"), "val")

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.items("test"), "test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.items("predict"), "predict")
