"""benchmarks/gpu_check.py runs its phases end to end (on the CPU here, with a tiny model), so
that the prepared GPU check is known to work before a GPU machine is at hand."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu_check import run

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow


def test_gpu_check_script_runs_every_phase_on_cpu(tmp_path, tiny_backbone, capsys):
    out = tmp_path / "gpu.json"
    code = run(
        [
            "--accelerator",
            "cpu",
            "--precision",
            "32-true",
            "--steps",
            "6",
            "--batch-size",
            "4",
            "--limit-eval-batches",
            "5",
            "--max-length",
            "64",
            "--backbone",
            str(tiny_backbone),
            "--output-dir",
            str(tmp_path / "logs"),
            "--output-json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    phases = {p["phase"]: p for p in result["phases"]}
    assert set(phases) == {"reranker fit", "reranker predict", "rewriter fit"}
    for phase in phases.values():
        assert phase["batches_timed"] > 0 and phase["pairs_per_second"] > 0
    assert "train/loss" in phases["reranker fit"]["metrics"]
    assert "| phase | wall s | pairs/s | peak GiB |" in capsys.readouterr().out


def test_without_a_gpu_it_says_so_and_exits_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the no-GPU path cannot be taken")
    assert run([]) == 2
    assert "No CUDA GPU" in capsys.readouterr().out
