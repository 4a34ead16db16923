"""benchmarks/onnx_batching.py on a tiny export and a feedback file: every planner is timed in
one run beside the one-batch baseline, and gives the baseline's scores (timings not checked)."""

from __future__ import annotations

import json

import pytest

from benchmarks import onnx_batching
from lightning_modules.onnx_export import missing_onnx_dependencies
from lightning_modules.reranker import BiEncoderReranker

pytestmark = [
    pytest.mark.slow,  # a benchmark run
    pytest.mark.skipif(bool(missing_onnx_dependencies()), reason="the onnx extra is not installed"),
]


def test_every_planner_is_timed_beside_the_baseline_with_its_scores(
    tmp_path, tiny_backbone, feedback_file
):
    export = BiEncoderReranker(model_name_or_path=str(tiny_backbone), max_length=48).eval()
    folder = export.export(tmp_path / "export", onnx=True)
    out = tmp_path / "batching.json"
    result = onnx_batching.main(
        [
            "--export",
            str(folder),
            "--requests-file",
            str(feedback_file),
            "--requests",
            "6",
            "--rounds",
            "1",
            "--call-costs",
            "0",
            "64",
            "--output-json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    names = [row["planner"] for row in result["rows"]]
    assert names == [onnx_batching.WHOLE, "call cost 0 tokens", "call cost 64 tokens"]
    assert result["rows"][0]["speedup_p50"] == 1.0 and result["cpu"]
    for row in result["rows"]:
        assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"]
        assert row["max_abs_score_diff_vs_baseline"] < 1e-5  # padding never changes a score
    with pytest.raises(SystemExit):  # never overwrites a result
        onnx_batching.main(["--export", str(folder), "--output-json", str(out)])
