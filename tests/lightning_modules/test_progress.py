"""Progress as log lines when output is redirected."""

from __future__ import annotations

import io
import re
import sys

import pytest
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

import main
from lightning_modules.progress import LogProgress, format_duration


def test_format_duration():
    assert format_duration(5) == "0:05"
    assert format_duration(65.4) == "1:05"
    assert format_duration(3 * 3600 + 62) == "3:01:02"
    assert format_duration(float("inf")) == "?"


def test_fit_writes_lines_for_every_stage(tiny_backbone, feedback_file, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py"])
    stream = io.StringIO()
    progress = LogProgress(every_n_seconds=0, stream=stream)
    args = [
        "--config",
        "configs/reranker.yaml",
        f"--model.init_args.model_name_or_path={tiny_backbone}",
        f"--data.init_args.train_files=[{feedback_file}]",
        "--data.init_args.batch_size=4",
        "--trainer.max_epochs=2",
        "--trainer.precision=32-true",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
    ]
    cli = main.FeedbackCLI(
        trainer_class=main.FeedbackTrainer, args=args, run=False, save_config_callback=None
    )
    cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, ProgressBar)]
    cli.trainer.callbacks.append(progress)
    assert cli.trainer.progress_bar_callback is progress
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lines = stream.getvalue().splitlines()
    steps = cli.trainer.num_training_batches
    train = [line for line in lines if line.startswith("[train] epoch")]
    assert len(train) == 2 * steps  # every_n_seconds=0: a line per batch
    assert re.fullmatch(
        rf"\[train\] epoch 1/2 step 1 batch 1/{steps} \(\d+%\) .*train/loss=[\d.]+.* "
        r"elapsed \d+:\d\d remaining ~\d+:\d\d \(fit \d+:\d\d\)",
        train[0],
    ), train[0]
    assert train[-1].startswith(f"[train] epoch 2/2 step {2 * steps} batch {steps}/{steps} (100%)")
    assert "remaining" not in train[-1]  # nothing left
    done = [line for line in lines if line.startswith("[validate] done")]
    assert len(done) == 2 and "val/ndcg@10=" in done[0]
    assert lines[-1].startswith(f"[train] finished: epoch 2, step {2 * steps}")


def test_lines_are_spaced_in_time(tiny_backbone, feedback_file):
    stream = io.StringIO()
    trainer = main.FeedbackTrainer(
        accelerator="cpu",
        precision="32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[LogProgress(every_n_seconds=3600, stream=stream)],
    )
    from datamodules.reranker import RerankerDataModule
    from lightning_modules.reranker import BiEncoderReranker

    model = BiEncoderReranker(model_name_or_path=str(tiny_backbone))
    data = RerankerDataModule(
        train_files=[str(feedback_file)], batch_size=2, input_encoder=model.input_encoder()
    )
    trainer.fit(model, datamodule=data)
    train = [line for line in stream.getvalue().splitlines() if line.startswith("[train] epoch")]
    assert [line.split(" batch ")[1].split(" ")[0] for line in train] == [
        f"1/{trainer.num_training_batches}",
        f"{trainer.num_training_batches}/{trainer.num_training_batches}",
    ]  # the first and the last batch only


@pytest.mark.parametrize("interactive", [False, True])
def test_trainer_chooses_lines_when_output_is_redirected(monkeypatch, interactive):
    monkeypatch.setattr(main, "is_interactive", lambda: interactive)
    trainer = main.FeedbackTrainer(accelerator="cpu", precision="32-true", logger=False)
    # on a terminal, Lightning's own bar (TQDM, or Rich where it is installed)
    assert isinstance(trainer.progress_bar_callback, ProgressBar)
    assert isinstance(trainer.progress_bar_callback, LogProgress) is not interactive
    # a configured progress bar, or none, is left as it is
    bar = TQDMProgressBar(refresh_rate=5)
    trainer = main.FeedbackTrainer(accelerator="cpu", logger=False, callbacks=[bar])
    assert trainer.progress_bar_callback is bar
    trainer = main.FeedbackTrainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert trainer.progress_bar_callback is None
