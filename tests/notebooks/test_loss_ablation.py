"""The loss-ablation notebook: paired with its script, and executed end to end on a tiny budget
(every loss, two seeds, a tiny model, two training batches per run)."""

from __future__ import annotations

import pytest

import json
import math
import re
from pathlib import Path

import jupytext
import nbformat
import papermill

from lightning_modules.losses import RankingLoss

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "loss_ablation.ipynb"
SCRIPT = REPO / "notebooks" / "loss_ablation.py"


def public_losses(base: type) -> list[str]:
    """Every public ranking loss of lightning_modules/losses.py, in definition order."""
    found = []
    for cls in base.__subclasses__():
        found += ([] if cls.__name__.startswith("_") else [cls.__name__]) + public_losses(cls)
    return found


# The ablation covers every loss the project has: a new loss must join the notebook.
LOSSES = public_losses(RankingLoss)


def cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_notebook_and_script_are_paired():
    """Reviewers diff the script; the notebook must say the same (`jupytext --sync`)."""
    assert cells(jupytext.read(SCRIPT)) == cells(nbformat.read(NOTEBOOK, as_version=4))


def test_committed_full_run_shows_every_loss_with_several_seeds():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    tables = [
        output["data"]["text/markdown"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "text/markdown" in output.get("data", {})
    ]
    assert tables, "the committed notebook has no results table: run it before committing"
    rows = {line.split("|")[1].strip(): line for line in tables[-1].splitlines()[2:]}
    for loss in LOSSES:
        seeds = int(rows[loss].split("|")[2])
        assert seeds > 1, loss
        assert re.search(r"\d\.\d{4} ± \d\.\d{4}", rows[loss])
    assert any(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    ), "the committed notebook has no plot"


def test_notebook_runs_end_to_end_on_a_tiny_budget(tmp_path, tiny_backbone, feedback_file):
    output_dir = tmp_path / "ablation"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        parameters={
            "SEEDS": [1, 2],
            "LIMIT_TRAIN_BATCHES": 2,
            "BACKBONE": str(tiny_backbone),
            "TRAIN_FILES": [str(feedback_file)],
            "PRECISION": "32-true",
            "MAX_LENGTH": 48,
            "OUTPUT_DIR": str(output_dir),
        },
        cwd=str(REPO),
        kernel_name="python3",
        progress_bar=False,
    )
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["budget"]["seeds"] == [1, 2]
    assert list(summary["per_loss"]) == LOSSES
    for loss, metrics in summary["per_loss"].items():
        for name, values in metrics.items():
            assert len(values) == 2 and all(math.isfinite(v) for v in values), (loss, name)
        # the lift is the model minus the display order, run by run
        display = summary["display_order"]["ndcg@10"]
        for value, lift in zip(metrics["val/ndcg@10"], metrics["val/lift/ndcg@10"], strict=True):
            assert abs(value - display - lift) < 1e-6
    # Every run was its own, read from its own log folder.
    folders = set(summary["runs"].values())
    assert len(folders) == len(LOSSES) * 2
    assert all((Path(folder) / "metrics.csv").exists() for folder in folders)
    assert (output_dir / "loss_ablation.png").stat().st_size > 0
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    assert not [
        output
        for cell in executed.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
