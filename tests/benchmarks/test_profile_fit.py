"""benchmarks/profile_fit.py takes a step of the shipped config apart (tiny model here)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import profile_fit

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow


def test_profile_reports_every_part_of_a_step_and_the_data(
    tiny_backbone, feedback_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["profile_fit.py"])
    out = tmp_path / "profile.json"
    result = profile_fit.main(
        [
            "--precision",
            "32-true",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--output-json",
            str(out),
            "--",
            f"--model.init_args.model_name_or_path={tiny_backbone}",
            f"--data.init_args.train_files=[{feedback_file}]",
            "--data.init_args.batch_size=4",
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["precision"] == "32-true" and result["machine"]["cpu"]
    parts = {"data", "forward (model)", "forward (anchor)", "backward", "optimizer", "step"}
    for step in (result["step_seconds"], result["step_seconds_warm_cache"]):
        assert parts <= step.keys()
        assert step["pairs_per_step"] > 0
    tokens = result["tokens"]
    assert 0 < tokens["real_token_share_in_chunks"] <= 1
    assert tokens["tokens_p50"] <= tokens["tokens_p90"] <= tokens["tokens_p99"]
    assert result["validation"]["pairs"] > 0
    assert result["steps_per_epoch"] > 0 and result["epochs"] == 2  # the shipped config's
    # the estimate: a first epoch at the cold step, later ones at the warm step, each + validation
    cold, warm = result["step_seconds"]["step"], result["step_seconds_warm_cache"]["step"]
    expected = result["steps_per_epoch"] * (cold + warm) + 2 * result["validation"]["seconds"]
    expected += result["anchor_once_seconds"]  # every training text embedded once, first
    assert result["anchor_once_seconds"] > 0
    assert abs(result["estimated_fit_minutes"] - expected / 60) <= 0.051
    assert set(result["peak_rss"]) == {
        "after_setup_gib",
        "after_anchor_gib",
        "after_steps_gib",
        "after_validation_gib",
    }
