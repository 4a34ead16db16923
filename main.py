"""Command line: ``python main.py {fit,validate,test,predict,export} --config configs/....yaml``.

``python main.py compare [log folders]`` prints a table of finished runs (see
:mod:`lightning_modules.compare`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lightning_modules.callbacks import load_weights


class FeedbackTrainer(L.Trainer):
    """Lightning's Trainer plus the ``export`` subcommand."""

    def export(
        self,
        model: L.LightningModule,
        export_dir: str,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the model as a Hugging Face / sentence-transformers folder for the app.

        Args:
            export_dir: folder to create (refused if it exists, unless ``overwrite``).
            ckpt_path: checkpoint whose weights to export; without it the untouched base model
                is exported (useful as a baseline).
            overwrite: replace an existing ``export_dir``.
        """
        if ckpt_path is not None:
            load_weights(model, ckpt_path)
        else:
            logging.getLogger(__name__).warning("No --ckpt_path: exporting the untouched model")
        target = model.export(export_dir, datamodule=datamodule, overwrite=overwrite)
        print(f"Exported {type(model).__name__} to {target}")
        return target


class FeedbackCLI(LightningCLI):
    """LightningCLI with ``export`` next to fit/validate/test/predict."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}


def main(args: list[str] | None = None) -> FeedbackCLI | int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["compare"]:  # reads finished runs' logs: no model, no trainer
        from lightning_modules.compare import main as compare

        return compare(argv[1:])
    return FeedbackCLI(
        trainer_class=FeedbackTrainer,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    result = main()
    if isinstance(result, int):
        sys.exit(result)
