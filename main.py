"""Command line: ``python main.py {fit,validate,test,predict,export,promote} --config ...yaml``.

``python main.py compare [log folders]`` prints a table of finished runs (see
:mod:`deployment.compare`); ``python main.py rollback <deployment>`` switches a deployment back
to its previous version (see :mod:`deployment.versions`).
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Literal

import lightning as L
import yaml
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lightning_modules.callbacks import load_weights
from lightning_modules.hardware import describe_cpu
from lightning_modules.loggers import FeedbackWandbLogger, describe_run
from lightning_modules.precision import AUTO, resolve_precision
from lightning_modules.progress import LogProgress, is_interactive

log = logging.getLogger(__name__)


class FeedbackTrainer(L.Trainer):
    """Lightning's Trainer with ``precision: auto`` (the default) and the ``export`` and
    ``promote`` subcommands.

    Args:
        precision: ``auto`` picks what the hardware runs natively (bf16 autocast only where bf16
            is native, fp16 on GPUs without bf16, float32 otherwise; see
            :mod:`lightning_modules.precision`), logs the choice and keeps it in
            ``precision_choice``. Any of Lightning's values is used as given.

    When standard error is not a terminal (``nohup``, SLURM, CI) and no progress bar callback
    is configured, progress is written as lines (:class:`~lightning_modules.progress.LogProgress`).
        accelerator: as Lightning's (``auto`` by default).
        **kwargs: every other Trainer argument.
    """

    def __init__(
        self,
        *,
        accelerator: str | L.pytorch.accelerators.Accelerator = "auto",
        precision: _PRECISION_INPUT | Literal["auto"] | None = AUTO,
        **kwargs: Any,
    ) -> None:
        self.precision_choice = resolve_precision(precision, accelerator)
        log.info(self.precision_choice.describe())
        if kwargs.get("enable_progress_bar") is not False and not is_interactive():
            # Redirected output (nohup, SLURM, CI): progress as whole lines, not a redrawn bar.
            callbacks = kwargs.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
            if not any(isinstance(c, ProgressBar) for c in callbacks):
                kwargs["callbacks"] = [*callbacks, LogProgress()]
        super().__init__(
            accelerator=accelerator, precision=self.precision_choice.precision, **kwargs
        )

    def export(
        self,
        model: L.LightningModule,
        export_dir: str,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        overwrite: bool = False,
        onnx: bool = False,
    ) -> Path:
        """Write the model as a Hugging Face / sentence-transformers folder for the app.

        Args:
            export_dir: folder to create (refused if it exists, unless ``overwrite``).
            ckpt_path: checkpoint whose weights to export; without it the untouched base model
                is exported (useful as a baseline).
            overwrite: replace an existing ``export_dir``.
            onnx: a reranker's folder also gets ``onnx/model.onnx`` and an int8 quantisation
                of it, for fast CPU inference (``lightning_modules.inference``; needs the
                ``onnx`` extra).
        """
        if onnx and "onnx" not in inspect.signature(model.export).parameters:
            raise ValueError(f"--onnx: {type(model).__name__} has no ONNX export")
        if ckpt_path is not None:
            load_weights(model, ckpt_path)
        else:
            logging.getLogger(__name__).warning("No --ckpt_path: exporting the untouched model")
        extra = {"onnx": True} if onnx else {}
        target = model.export(export_dir, datamodule=datamodule, overwrite=overwrite, **extra)
        print(f"Exported {type(model).__name__} to {target}")
        return target

    def promote(
        self,
        model: L.LightningModule,
        candidate: str,
        deployment: str,
        datamodule: L.LightningDataModule | None = None,
        metric: str | None = None,
        margin: float = 0.0,
        max_p_value: float | None = None,
        n_resamples: int = 1000,
        seed: int = 0,
        report_dir: str | None = None,
        canary_files: list[str] | None = None,
        canary_margin: float = 0.01,
    ):
        """Deploy ``candidate`` only if it beats the deployed model on held-out feedback.

        Args:
            candidate: an exported model folder (``main.py export`` or a fit's ``export/``).
            deployment: the path the app loads; a link to versioned copies that this command
                switches atomically (see :mod:`deployment.gate`).
            metric: the gate's metric: ``ndcg@10`` (default), ``mrr@10`` or ``ips_dcg@10`` (the
                picks' position-debiased estimate) for a reranker, ``bleu`` (default),
                ``exact_match`` or ``coverage@10`` (the share of the user's selected sources
                the rewrite's BM25 top 10 finds among the log's sources: pairs mined from app
                records) for a rewriter.
            margin: the least improvement of ``metric`` that promotes (its own scale: NDCG
                0-1, BLEU 0-100).
            max_p_value: also require the paired bootstrap's p-value to be at most this.
            n_resamples: bootstrap resamples.
            seed: bootstrap seed.
            report_dir: where the JSON and Markdown reports go (default
                ``logs/promote/<time>``).
            canary_files: a labelled set that is not feedback (e.g.
                ``training_data/wikiqa_dev_canary.json``); a candidate that loses more than
                ``canary_margin`` of the task's first metric there is refused.
            canary_margin: the largest loss on the canary that still promotes.
        """
        from deployment.gate import run_gate

        if datamodule is None:
            raise ValueError("promote needs the data module that holds the held-out feedback")
        return run_gate(
            self,
            model,
            datamodule,
            candidate,
            deployment,
            metric=metric,
            margin=margin,
            max_p_value=max_p_value,
            n_resamples=n_resamples,
            seed=seed,
            report_dir=report_dir,
            canary_files=canary_files,
            canary_margin=canary_margin,
        )


class SaveAndLogConfig(SaveConfigCallback):
    """Writes ``config.yaml`` next to the logs (Lightning's default) and sends the same full,
    resolved config to every W&B run, so that a dashboard can filter and group by any knob.

    A trainer without loggers (``logger: false``; the promotion gate scores with its loggers
    off) has no log folder: Lightning would write ``config.yaml`` into ``default_root_dir``,
    the working directory, replacing any file of that name there. Nothing is written then."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.loggers:
            return
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        config.pop("config", None)  # the paths of the YAML files, not a setting
        choice = getattr(trainer, "precision_choice", None)
        if choice is not None:  # what `precision: auto` became on this machine, and why
            config["resolved_precision"] = {
                "precision": str(choice.precision),
                "device": choice.device,
                "reason": choice.reason,
                "cpu": describe_cpu(),
            }
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(config, allow_val_change=True)


# Commands that need no model, data or trainer; handled before LightningCLI (see main()).
TOOL_COMMANDS = {
    "compare": "a table of finished runs: best metric, baseline, lift, config differences",
    "rollback": "point a deployment back at its previous version",
}


class FeedbackCLI(LightningCLI):
    """LightningCLI with ``export`` and ``promote`` next to fit/validate/test/predict, the tool
    commands (``compare``, ``rollback``) listed in its help, and W&B runs described by their
    config."""

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        tools = "; ".join(f"{name}: {text}" for name, text in TOOL_COMMANDS.items())
        epilog = f"Tool commands (python main.py <command> --help) -- {tools}."
        main_kwargs = {**main_kwargs, "epilog": epilog}
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "export": {"model", "datamodule"},
            "promote": {"model", "datamodule"},
        }

    def add_arguments_to_parser(self, parser) -> None:
        # The data module tokenises with the model's tokenizer (the one init_from may have
        # replaced): handed over once both are built, so data code never reaches into the model.
        parser.link_arguments(
            "model",
            "data.init_args.input_encoder",
            compute_fn=_input_encoder,
            apply_on="instantiate",
        )

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        wandb_loggers = [
            logger
            for logger in getattr(self.trainer, "loggers", [])
            if isinstance(logger, FeedbackWandbLogger)
        ]
        if not wandb_loggers:
            return
        config = self.config[self.subcommand] if self.subcommand else self.config
        config_files = [str(path) for path in (config.get("config") or [])]
        description = describe_run(config.as_dict(), config_files)
        for logger in wandb_loggers:
            logger.describe(description, job_type=self.subcommand)


JOB_KEYS = ("seed_everything", "trainer", "model", "data")


def resolved_config(*config_files: str | Path, subcommand: str = "fit") -> dict[str, Any]:
    """The job the CLI builds from stacked ``--config`` files: pieces read, overlays applied,
    defaults filled in, as a plain dict (``seed_everything``, ``trainer``, ``model``,
    ``data``). The CLI's own parser does it (``--print_config``), so tools and tests that edit
    a shipped job see exactly what ``main.py`` would run."""
    import contextlib
    import io

    args = [subcommand, *(a for f in config_files for a in ("--config", str(f)))]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            main([*args, "--print_config"])
        except SystemExit as exit_info:  # --print_config prints, then exits 0
            if exit_info.code not in (0, None):
                raise ValueError(f"{' '.join(args)}: the config does not parse") from exit_info
    config = yaml.safe_load(printed.getvalue())
    return {key: config[key] for key in JOB_KEYS if key in config}


def _input_encoder(model: L.LightningModule) -> Any:
    return model.input_encoder()


def main(args: list[str] | None = None) -> FeedbackCLI | int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["compare"]:  # reads finished runs' logs: no model, no trainer
        from deployment.compare import main as compare

        return compare(argv[1:])
    if argv[:1] == ["rollback"]:  # switches a deployment link back: no model, no trainer
        from deployment.versions import rollback_main

        return rollback_main(argv[1:])
    # Called from Python (a notebook, a benchmark) with its own arguments, the CLI must not also
    # look at the calling program's command line.
    calling_argv = sys.argv
    if args is not None:
        sys.argv = sys.argv[:1]
    try:
        cli = FeedbackCLI(
            trainer_class=FeedbackTrainer,
            save_config_callback=SaveAndLogConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except BaseException:
        _finish_wandb_run(exit_code=1)
        raise
    finally:
        sys.argv = calling_argv
    _finish_wandb_run(exit_code=0)
    return cli


def _finish_wandb_run(exit_code: int) -> None:
    """Close the W&B run this command opened, so that the next command in the same process
    (a notebook, a test) starts its own run instead of appending to this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


if __name__ == "__main__":
    result = main()
    if isinstance(result, int):
        sys.exit(result)
