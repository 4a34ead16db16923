"""Several processes (DDP over gloo on the CPU, as Lightning launches it): training runs, and
validation scores every query once, whole, so its figures equal a single process's on the same
weights (the way to several GPUs or nodes with Lightning's own launchers)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_reranker_config

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
METRICS = ("val/ndcg@10", "val/mrr@10", "val/display/ndcg@10", "val/recall@3", "val/ndcg@3")


def run_main(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def last_validation(log_dir: Path) -> dict[str, float]:
    with open(log_dir / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/ndcg@10")]
    return {name: float(rows[-1][name]) for name in METRICS}


def versions(logs: Path) -> list[Path]:
    return sorted((logs / "reranker").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


@pytest.fixture
def ddp_config(tmp_path, tiny_backbone, feedback_file) -> Path:
    path = write_reranker_config(tmp_path, tiny_backbone, feedback_file, "bi")
    config = yaml.safe_load(path.read_text())
    config["trainer"]["max_epochs"] = 1
    # W&B stays out of the subprocesses (it is tested elsewhere)
    config["trainer"]["logger"] = [
        c for c in config["trainer"]["logger"] if "CSV" in c["class_path"]
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def run_cpu(subcommand: str, config: Path, *extra: str, processes: int = 1) -> None:
    """``main.py <subcommand>`` on the CPU, in ``processes`` DDP processes (gloo) if > 1."""
    ddp = ["--trainer.strategy=ddp", f"--trainer.devices={processes}"] if processes > 1 else []
    run_main(
        subcommand,
        "--config",
        str(config),
        "--trainer.accelerator=cpu",
        *ddp,
        *extra,
        cwd=config.parent,
    )


def test_two_processes_validate_exactly_like_one(tmp_path, ddp_config):
    run_cpu("validate", ddp_config)
    run_cpu("validate", ddp_config, processes=2)
    single, double = (last_validation(v) for v in versions(tmp_path / "logs"))
    assert single == pytest.approx(double, abs=1e-6)


def test_two_processes_train_and_their_validation_matches_one_on_the_same_weights(
    tmp_path, ddp_config
):
    run_cpu("fit", ddp_config, processes=2)
    (fit_dir,) = versions(tmp_path / "logs")
    ddp_figures = last_validation(fit_dir)
    checkpoint = fit_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.exists() and (fit_dir / "export").exists()  # written once, by rank 0
    run_cpu("validate", ddp_config, "--ckpt_path", str(checkpoint))
    single = last_validation(versions(tmp_path / "logs")[-1])
    assert ddp_figures == pytest.approx(single, abs=1e-6)
