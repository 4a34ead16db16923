"""benchmarks/latency.py on a tiny export and tiny TREC-format data: every variant is loaded,
timed and scored in one run, and the report holds the figures (their values, wall-clock ones
above all, are not checked: they come from the packaged MiniLM on a known machine)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import latency, trec_dl
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.onnx_export import missing_onnx_dependencies
from lightning_modules.reranker import BiEncoderReranker, CrossEncoderReranker

pytestmark = [
    pytest.mark.slow,  # a benchmark run
    pytest.mark.skipif(bool(missing_onnx_dependencies()), reason="the onnx extra is not installed"),
]

TOPICS = ["capital of france", "red fruit", "fast car", "civil war causes"]


def write_fake_trec_dl(folder: Path) -> Path:
    """Both years in the real files' formats: 3 judged queries of 12 BM25 hits, graded qrels."""
    folder.mkdir()
    for y, year in enumerate(trec_dl.YEARS):
        files = trec_dl.DATA_FILES[year]
        entries, run, qrels = [], [], []
        for q in range(3):
            qid = str(100 * (y + 1) + q)
            topic = TOPICS[(q + y) % len(TOPICS)]
            hits = []
            for rank in range(1, 13):
                docid = f"{qid}{rank:02d}"
                other = TOPICS[(q + y + rank) % len(TOPICS)]
                content = f"about {topic if rank % 3 == 0 else other} page {rank} information"
                score = 20.0 - rank
                hits.append(
                    {"content": content, "qid": qid, "docid": docid, "rank": rank, "score": score}
                )
                run.append(f"{qid} Q0 {docid} {rank} {score} bm25\n")
                if rank % 3 == 0 or rank < 3:
                    qrels.append(f"{qid} 0 {docid} {3 if rank % 3 == 0 else 0}\n")
            entries.append({"query": f"what is the {topic}", "hits": hits})
        (folder / files["retrieve"]).write_text(json.dumps(entries))
        (folder / files["trec_run"]).write_text("".join(run))
        (folder / files["qrels"]).write_text("".join(qrels))
    return folder


@pytest.mark.parametrize("kind", ["bi", "cross"])
def test_one_run_reports_every_variant_with_quality_next_to_the_baseline(
    tmp_path, tiny_backbone, kind, capsys
):
    module_class = {"bi": BiEncoderReranker, "cross": CrossEncoderReranker}[kind]
    module = module_class(model_name_or_path=str(tiny_backbone), max_length=48).eval()
    export = tmp_path / "export"
    module.export(export, datamodule=SimpleNamespace(document_template="{snippet}"))
    assert "onnx" not in json.loads((export / EXPORT_METADATA_FILE).read_text())
    before = sorted(p.relative_to(export) for p in export.rglob("*"))
    out = tmp_path / "latency.json"
    code = latency.main(
        [
            "--export",
            str(export),
            "--trec-dl-dir",
            str(write_fake_trec_dl(tmp_path / "trec_dl")),
            "--threads",
            "1",
            "--repeats",
            "4",
            "--warmup",
            "1",
            "--rounds",
            "2",
            "--batch-size",
            "5",
            "--throughput-queries",
            "2",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    # The folder given had no ONNX files: a temporary copy got them, the folder is untouched.
    assert sorted(p.relative_to(export) for p in export.rglob("*")) == before

    report = json.loads(out.read_text())
    assert report["complete"] is True
    assert report["settings"]["threads"] == 1 and report["settings"]["sources_per_request"] == 10
    assert report["settings"]["judged_queries"] == {"dl19": 3, "dl20": 3}
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["kernels"]
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"} <= set(machine["flags"])
    assert report["versions"]["onnxruntime"] and report["versions"]["torch"]
    assert report["export"]["metadata"]["onnx"]["quantization"]["config"] == "avx2"

    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == list(latency.VARIANTS)
    for name, variant in variants.items():
        if variant["status"] == "unavailable":  # only the peer that needs optimum may be
            assert name == "st-onnx" and variant["reason"]
            continue
        assert variant["status"] == "ok", name
        assert set(variant["latency_ms"]) == {"p50", "p95", "mean", "n"}
        assert variant["latency_ms"]["n"] == 4
        assert isinstance(variant["pairs_per_s"], float)
        for year in trec_dl.YEARS:
            scored = variant["quality"][year]
            assert scored["n_queries"] == 3
            assert 0.0 <= scored["ndcg@10"] <= 1.0
            assert set(scored) >= {"ndcg@10", "mrr@10", "recall@10"}
        assert isinstance(variant["within_bound"], bool)
        assert isinstance(variant["speedup_p50"], float)
    base = variants["torch"]
    assert base["ndcg@10_diff"] == {"dl19": 0.0, "dl20": 0.0} and base["within_bound"]
    # The same model through sentence-transformers ranks as our loader does: same quality.
    for year in trec_dl.YEARS:
        assert variants["st"]["quality"][year]["ndcg@10"] == pytest.approx(
            base["quality"][year]["ndcg@10"], abs=1e-9
        )
        assert variants["onnx"]["ndcg@10_diff"][year] == pytest.approx(0.0, abs=1e-9)
    summary = report["summary"]
    assert summary["baseline"] == "torch" and summary["quality_bound"] == 0.005
    assert summary["fastest_within_bound"] in variants
    assert variants[summary["fastest_within_bound"]]["within_bound"]
    assert isinstance(summary["meets_target"], bool)

    printed = capsys.readouterr().out
    assert "| `onnx-int8`: our loader, ONNX int8" in printed
    assert f"{machine['kernels']} kernels, " in printed  # beside the figures
    assert "Fastest within the bound" in printed


def test_the_baseline_is_always_run_and_bad_arguments_are_refused():
    args = latency.parse_args(["--variants", "onnx-int8,st"])
    assert args.variants == ["torch", "onnx-int8", "st"]
    with pytest.raises(SystemExit):
        latency.parse_args(["--variants", "openvino"])
    with pytest.raises(SystemExit):
        latency.parse_args(["--repeats", "0"])


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert latency.main(["--trec-dl-dir", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
