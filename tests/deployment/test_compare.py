"""``python main.py compare`` on hand-made run folders: best rows, baselines, config differences."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import main
from deployment.compare import find_runs, flatten, table
from lightning_modules.metrics import baseline_name


def write_run(folder: Path, loss: str, rows: list[dict], *, mode: str = "max", seed: int = 1):
    folder.mkdir(parents=True)
    config = {
        "seed_everything": seed,
        "trainer": {
            "logger": {"init_args": {"save_dir": str(folder)}},
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/ndcg@10", "mode": mode},
                }
            ],
        },
        "model": {"init_args": {"loss": {"class_path": loss}, "learning_rate": 2e-5}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    columns = ["epoch", "step", "train/loss", "val/ndcg@10", "val/display/ndcg@10"]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(str(row.get(c, "")) for c in columns))
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_best_row_baseline_lift_and_only_differing_keys(tmp_path):
    write_run(
        tmp_path / "a",
        "ListNetLoss",
        [
            {"epoch": 0, "step": 9, "train/loss": 1.0},
            {"epoch": 0, "step": 10, "val/ndcg@10": 0.60, "val/display/ndcg@10": 0.55},
            {"epoch": 1, "step": 20, "val/ndcg@10": 0.70, "val/display/ndcg@10": 0.55},
            {"epoch": 2, "step": 30, "val/ndcg@10": 0.65, "val/display/ndcg@10": 0.55},
        ],
    )
    write_run(
        tmp_path / "b",
        "RankNetLoss",
        [{"epoch": 0, "step": 10, "val/ndcg@10": 0.50, "val/display/ndcg@10": 0.55}],
        seed=2,
    )
    write_run(tmp_path / "never_validated", "X", [{"epoch": 0, "step": 9, "train/loss": 1.0}])
    runs = {r.folder.name: r for r in find_runs([tmp_path])}
    assert set(runs) == {"a", "b"}
    assert runs["a"].metric("val/ndcg@10") == pytest.approx(0.70)  # best, not last
    assert runs["a"].epochs == 3
    text = table(list(runs.values()))
    header, _, first, second = text.splitlines()
    # Only what differs: the loss and the seed, not the learning rate or the logger folder.
    assert "model.init_args.loss.class_path" in header and "seed_everything" in header
    assert "learning_rate" not in header and "logger" not in header
    assert "| 0.7000 | 0.5500 | 0.1500 |" in first and "ListNetLoss" in first  # best run first
    assert "| 0.5000 | 0.5500 | -0.0500 |" in second


def test_min_mode_picks_the_lowest(tmp_path):
    write_run(
        tmp_path / "a",
        "L",
        [{"epoch": 0, "step": 1, "val/ndcg@10": 0.3}, {"epoch": 1, "step": 2, "val/ndcg@10": 0.2}],
        mode="min",
    )
    (run,) = find_runs([tmp_path])
    assert run.metric("val/ndcg@10") == pytest.approx(0.2)


def test_helpers():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 3}]}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "d[0].e": 3,
    }
    assert baseline_name("val/ndcg@10") == "val/display/ndcg@10"
    assert baseline_name("val/bleu") == "val/copy/bleu"


def test_main_compare_subcommand(tmp_path, capsys):
    assert main.main(["compare", str(tmp_path)]) == 1  # nothing there yet
    write_run(tmp_path / "a", "L", [{"epoch": 0, "step": 1, "val/ndcg@10": 0.4}])
    assert main.main(["compare", str(tmp_path)]) == 0
    assert "val/ndcg@10" in capsys.readouterr().out
