"""Experiment tracking end to end: a default fit leaves an offline W&B run described by its
config; with W&B disabled the same fit still runs and logs to CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import main
from lightning_modules.loggers import data_content_hash
from tests.conftest import point_loggers_at, quiet_short_trainer

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, backbone: Path, feedback: Path, stem: str = "ablation") -> Path:
    """configs/reranker.yaml (W&B + CSV loggers as shipped) on a tiny model and file."""
    config = main.resolved_config(REPO / "configs" / "reranker.yaml")
    quiet_short_trainer(config)
    point_loggers_at(config, tmp_path / "logs")
    config["model"]["init_args"].update(
        model_name_or_path=str(backbone), max_length=48, max_query_length=16
    )
    config["data"]["init_args"].update(
        train_files=[str(feedback)], batch_size=4, validation_fraction=0.3
    )
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def the_run_file(logs: Path) -> Path:
    runs = sorted((logs / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    return runs[0]


def test_default_fit_leaves_an_offline_run_named_tagged_and_grouped_by_its_config(
    tmp_path, tiny_backbone, feedback_file, read_wandb_run, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE")  # the shipped default, for a user who never logged in
    config = write_config(tmp_path, tiny_backbone, feedback_file)
    main.main(["fit", "--config", str(config), "--seed_everything", "7"])

    run = read_wandb_run(the_run_file(tmp_path / "logs"))
    digest = data_content_hash([feedback_file])
    assert run["project"] == "feedback-finetuning"
    assert run["group"] == "ablation"  # the experiment: the config file it came from
    assert run["job_type"] == "fit"
    assert run["name"] == f"reranker-SoftmaxCrossEntropy-{tiny_backbone.name}-{digest}-s7"
    assert set(run["tags"]) == {
        "reranker",
        f"model:{tiny_backbone.name}",
        "loss:SoftmaxCrossEntropy",
        f"data:{digest}",
        "seed:7",
    }
    # The full resolved config, as written to config.yaml, including the command-line seed.
    config_logged = run["config"]
    assert config_logged["seed_everything"] == 7
    assert config_logged["model"]["init_args"]["loss"]["class_path"].endswith(
        "SoftmaxCrossEntropyLoss"
    )
    assert config_logged["data"]["init_args"]["train_files"] == [str(feedback_file)]
    assert config_logged["trainer"]["max_epochs"] == 2

    # Validation metrics with the display-order baseline and the lift, once per epoch.
    validations = [row for row in run["history"] if "val/ndcg@10" in row]
    assert len(validations) == 2
    for row in validations:
        assert {"val/display/ndcg@10", "val/lift/ndcg@10", "val/mrr@10"} <= row.keys()
        lift = row["val/ndcg@10"] - row["val/display/ndcg@10"]
        assert row["val/lift/ndcg@10"] == pytest.approx(lift, abs=1e-6)
    # The examples table: one per validation epoch in W&B, and as JSON Lines next to the CSV.
    tables = [row["val/examples"] for row in run["history"] if "val/examples" in row]
    assert len(tables) == 2 and all(t["_type"] == "table-file" for t in tables)
    csv_run = tmp_path / "logs" / "reranker" / "version_0"
    assert (csv_run / "metrics.csv").exists()
    example_files = sorted((csv_run / "samples").glob("val_examples_*.jsonl"))
    assert len(example_files) == 2
    rows = [json.loads(line) for line in example_files[-1].read_text().splitlines()]
    assert tables[-1]["nrows"] == len(rows) and tables[-1]["ncols"] == len(rows[0])
    queries = list(dict.fromkeys(row["query"] for row in rows))
    assert len(queries) == 3  # num_logged_examples
    for query in queries:
        ranked = [row for row in rows if row["query"] == query]
        assert [row["rank"] for row in ranked] == list(range(1, len(ranked) + 1))
        scores = [row["score"] for row in ranked]
        assert scores == sorted(scores, reverse=True)
        assert sorted(row["shown_rank"] for row in ranked) == list(range(1, len(ranked) + 1))
        assert {row["picked"] for row in ranked} <= {"✓", ""}
    assert any(row["picked"] == "✓" for row in rows)


def test_disabled_wandb_still_trains_and_logs_csv(tmp_path, tiny_backbone, feedback_file):
    # WANDB_MODE=disabled comes from the sandbox fixture, as in CI.
    config = write_config(tmp_path, tiny_backbone, feedback_file)
    cli = main.main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    assert "val/ndcg@10" in cli.trainer.callback_metrics
    assert not (tmp_path / "logs" / "wandb").exists()
    assert (tmp_path / "logs" / "reranker" / "version_0" / "metrics.csv").exists()


def test_csv_only_is_one_line_away(tmp_path, tiny_backbone, feedback_file, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    config = write_config(tmp_path, tiny_backbone, feedback_file)
    cli = main.main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs",
            "1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'csv_only'}",
        ]
    )
    assert "val/ndcg@10" in cli.trainer.callback_metrics
    assert not (tmp_path / "logs" / "wandb").exists()
    assert list((tmp_path / "csv_only").rglob("metrics.csv"))


def test_two_fits_in_one_process_are_two_runs(
    tmp_path, tiny_backbone, feedback_file, read_wandb_run, monkeypatch
):
    """A notebook or a sweep runs many fits in one process: each must be its own W&B run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = write_config(tmp_path, tiny_backbone, feedback_file)
    for seed in (1, 2):
        main.main(
            [
                "fit",
                "--config",
                str(config),
                "--trainer.max_epochs",
                "1",
                "--seed_everything",
                str(seed),
            ]
        )
    runs = sorted((tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    seeds = sorted(read_wandb_run(run)["config"]["seed_everything"] for run in runs)
    assert seeds == [1, 2]
