"""Resume: a fit killed mid-epoch and resumed with ``--ckpt_path`` ends with the same metrics as
the same fit left alone (same seed), for both models."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import yaml

import main
from tests.conftest import write_reranker_config, write_rewriter_config

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow


class SimulatedCrash(RuntimeError):
    pass


class CrashAfterStep(L.Callback):
    """Kills the fit after ``step`` optimizer steps (before any later checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SimulatedCrash(f"killed after step {self.step}")


def add_step_checkpoints(config_path: Path, folder: Path) -> None:
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["callbacks"].append(
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(folder), "every_n_train_steps": 3, "save_last": True},
        }
    )
    config["trainer"]["max_epochs"] = 2
    config["trainer"]["logger"] = [
        c for c in config["trainer"]["logger"] if "CSV" in c["class_path"]
    ]
    config_path.write_text(yaml.safe_dump(config))


def final_validation(log_dir: Path, names: tuple[str, ...]) -> dict[str, float]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(names[0])]
    return {name: float(rows[-1][name]) for name in names}


def step_losses(log_dir: Path) -> list[tuple[int, float]]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        return [
            (int(r["step"]), float(r["train/loss"]))
            for r in csv.DictReader(handle)
            if r.get("train/loss")
        ]


def fit_killed_and_resumed(config: Path, tmp_path: Path, crash_step: int, names):
    """(uninterrupted, resumed) final validation figures; each run checkpoints apart."""
    whole_config = tmp_path / "whole.yaml"
    whole_config.write_text(config.read_text())
    add_step_checkpoints(whole_config, tmp_path / "whole_steps")
    add_step_checkpoints(config, tmp_path / "steps")
    whole = main.main(["fit", "--config", str(whole_config)])
    expected = final_validation(Path(whole.trainer.log_dir), names)
    with pytest.raises(SimulatedCrash):
        main.main(
            [
                "fit",
                "--config",
                str(config),
                f"--trainer.callbacks+={__name__}.CrashAfterStep",
                f"--trainer.callbacks.step={crash_step}",
            ]
        )
    checkpoint = tmp_path / "steps" / "last.ckpt"
    assert checkpoint.exists()
    resumed = main.main(["fit", "--config", str(config), "--ckpt_path", str(checkpoint)])
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == whole.trainer.global_step
    # the resumed run trains exactly the steps the uninterrupted one trained after the checkpoint
    after = [(s, loss) for s, loss in step_losses(Path(whole.trainer.log_dir)) if s >= 3]
    again = step_losses(Path(resumed.trainer.log_dir))
    assert [s for s, _ in again] == [s for s, _ in after]
    assert [loss for _, loss in again] == pytest.approx([loss for _, loss in after], abs=1e-6)
    return expected, final_validation(Path(resumed.trainer.log_dir), names)


def test_reranker_resumed_mid_epoch_ends_like_the_uninterrupted_run(
    tmp_path, tiny_backbone, feedback_file
):
    config = write_reranker_config(tmp_path, tiny_backbone, feedback_file, "bi")
    # 28 training lists in batches of 4: 7 steps an epoch; killed at step 5, last saved at 3
    names = ("val/ndcg@10", "val/mrr@10", "val/loss", "val/recall@3")
    expected, resumed = fit_killed_and_resumed(config, tmp_path, 5, names)
    assert resumed == pytest.approx(expected, abs=1e-6)


def test_rewriter_resumed_mid_epoch_ends_like_the_uninterrupted_run(
    tmp_path,
    tiny_backbone,
    rewriting_data_files,  # noqa: F811
):
    app, pairs = rewriting_data_files
    config = write_rewriter_config(tmp_path, tiny_backbone, [app, pairs])
    names = ("val/loss", "val/bleu", "val/exact_match")
    expected, resumed = fit_killed_and_resumed(config, tmp_path, 4, names)
    assert resumed == pytest.approx(expected, abs=1e-6)
