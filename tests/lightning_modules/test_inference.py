"""The app's loader (ExportedReranker) and the ONNX files of an export, on tiny random models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_modules import onnx_export
from lightning_modules.callbacks import ExportBestModel
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.hardware import cpu_capability, describe_cpu
from lightning_modules.inference import ExportedReranker
from lightning_modules.reranker import BiEncoderReranker, CrossEncoderReranker
from tests.conftest import reranker_predict_scores

REPO = Path(__file__).resolve().parents[2]
MODULES = {"bi": BiEncoderReranker, "cross": CrossEncoderReranker}
TEMPLATE = "{title} | {snippet}"
HAS_ONNX = not onnx_export.missing_onnx_dependencies()
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the onnx extra is not installed")


def build(kind: str, backbone: Path):
    torch.manual_seed(0)  # the cross-encoder's fresh head
    module = MODULES[kind](model_name_or_path=str(backbone), max_length=48, max_query_length=16)
    if kind == "cross":  # a fresh head scores every pair almost alike: spread the scores
        with torch.no_grad():
            module.model.bert.pooler.dense.weight.mul_(50.0)
            module.model.classifier.weight.mul_(50.0)
    return module.eval()


def assert_same_order(got: np.ndarray, want: np.ndarray, tolerance: float) -> None:
    """Every pair of sources that ``want`` tells apart by more than ``tolerance`` is in the same
    order in ``got`` (a tie within float noise may go either way)."""
    for i in range(len(want)):
        for j in range(i + 1, len(want)):
            if abs(want[i] - want[j]) > tolerance:
                assert (want[i] - want[j]) * (got[i] - got[j]) > 0, (i, j, got, want)


@pytest.fixture(scope="module")
def exports(tiny_backbone, tmp_path_factory) -> dict[str, tuple]:
    """Each kind of reranker, and its export with the ONNX files when the extra is installed."""
    data = SimpleNamespace(document_template=TEMPLATE, max_text_chars=4096)
    out = {}
    for kind in MODULES:
        module = build(kind, tiny_backbone)
        folder = tmp_path_factory.mktemp(f"export_{kind}") / "export"
        module.export(folder, datamodule=data, onnx=HAS_ONNX)
        out[kind] = (module, folder)
    return out


def module_scores(module, feedback: Path) -> tuple[list, list[np.ndarray]]:
    """Scores of each record's sources through the training code path (score_batch)."""
    records, scores = reranker_predict_scores(module, feedback, TEMPLATE)
    n = 12  # enough lists (4-8 sources each) to compare rankings; each call costs time
    return records[:n], scores[:n]


def app_sources(record) -> list[dict]:
    return [{"title": s.title, "url": s.url, "snippet": s.snippet} for s in record.sources]


@pytest.mark.parametrize("kind", ["bi", "cross"])
def test_torch_backend_scores_and_ranks_like_the_fine_tuned_module(exports, feedback_file, kind):
    module, folder = exports[kind]
    reranker = ExportedReranker.load(folder, backend="torch")
    assert reranker.architecture == {"bi": "bi-encoder", "cross": "cross-encoder"}[kind]
    assert reranker.document_template == TEMPLATE and reranker.max_text_chars == 4096
    # The bi-encoder's export scores by cosine; the module divides it by its temperature.
    scale = float(module.log_temperature.detach().exp()) if kind == "bi" else 1.0
    records, expected = module_scores(module, feedback_file)
    for record, want in zip(records, expected, strict=True):
        sources = app_sources(record)
        got = reranker.score_sources(record.query, sources)
        np.testing.assert_allclose(got / scale, want, atol=1e-4)
        assert_same_order(got / scale, want, 1e-5)
        ranking = reranker.rank(record.query, sources)
        assert [s for _, s in ranking] == sorted(got.tolist(), reverse=True)
        assert sorted(i for i, _ in ranking) == list(range(len(sources)))


@needs_onnx
@pytest.mark.parametrize("kind", ["bi", "cross"])
def test_onnx_backends_match_torch(exports, feedback_file, kind):
    _, folder = exports[kind]
    metadata = json.loads((folder / EXPORT_METADATA_FILE).read_text())
    files = metadata["onnx"]["files"]
    assert files == {"onnx": "onnx/model.onnx", "onnx-int8": "onnx/model_quint8_avx2.onnx"}
    assert all((folder / f).is_file() for f in files.values())
    assert metadata["onnx"]["quantization"]["config"] == "avx2"
    assert metadata["onnx"]["check"]["max_abs_diff_vs_torch"]["onnx"] < 1e-4

    torch_reranker = ExportedReranker.load(folder, backend="torch")
    fp32 = ExportedReranker.load(folder, backend="onnx", threads=1)
    int8 = ExportedReranker.load(folder, backend="onnx-int8", threads=1)
    records, _ = module_scores(exports[kind][0], feedback_file)
    agreeing = total = 0
    for record in records:
        sources = app_sources(record)
        want = torch_reranker.score_sources(record.query, sources)
        got = fp32.score_sources(record.query, sources)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert_same_order(got, want, 1e-5)
        got = int8.score_sources(record.query, sources, batch_size=3)  # several batches
        np.testing.assert_allclose(got, want, atol=0.05 * max(1.0, np.abs(want).max()))
        # Pairwise order agreement (as Kendall's tau counts it)
        for i in range(len(want)):
            for j in range(i + 1, len(want)):
                total += 1
                agreeing += (want[i] - want[j]) * (got[i] - got[j]) > 0
    # A random 32-wide cross-encoder spreads a list's logits (about 0.01) less than int8 moves
    # them; how much ranking quality int8 costs on a real model is benchmarks/latency.py's
    # measurement (NDCG@10 on TREC DL). The bi-encoder's cosines are spread enough to check.
    if kind == "bi":
        assert agreeing / total > 0.9


@needs_onnx
def test_sentence_transformers_still_loads_an_onnx_export(exports):
    from sentence_transformers import SentenceTransformer

    _, folder = exports["bi"]
    model = SentenceTransformer(str(folder), device="cpu")  # the onnx/ folder is beside it
    assert model.encode(["red fruit"]).shape == (1, 32)


def test_rank_renders_sources_as_the_export_says_and_keeps_ties_in_display_order(tmp_path):
    metadata = {
        "architecture": "cross-encoder",
        "document_template": "{title} - {snippet}",
        "max_length": 16,
        "max_text_chars": 5,
    }
    (tmp_path / EXPORT_METADATA_FILE).write_text(json.dumps(metadata))

    class Engine:
        def score(self, query, documents, batch_size):
            self.seen = (query, documents)
            return np.array([1.0, 2.0, 1.0, 2.0])

    engine = Engine()
    reranker = ExportedReranker(tmp_path, "torch", metadata, engine)
    sources = [
        {"title": "a", "url": "u", "snippet": "long snippet"},
        {"url": "u2"},  # missing fields are empty
        SimpleNamespace(title="c", url="u3", snippet="s"),
        {"title": None, "snippet": "d"},
    ]
    assert reranker.rank("a long query", sources) == [(1, 2.0), (3, 2.0), (0, 1.0), (2, 1.0)]
    assert engine.seen == ("a lon", ["a - long", "-", "c - s", "- d"])
    assert reranker.rank("q", []) == []


def test_onnx_backend_of_an_export_without_onnx_files_says_how_to_get_them(exports, tmp_path):
    metadata = {"architecture": "bi-encoder", "document_template": "{title}", "max_length": 8}
    (tmp_path / EXPORT_METADATA_FILE).write_text(json.dumps(metadata))
    pytest.importorskip("onnxruntime")
    with pytest.raises(FileNotFoundError, match="--onnx true"):
        ExportedReranker.load(tmp_path, backend="onnx")
    with pytest.raises(ValueError, match="backend"):
        ExportedReranker.load(tmp_path, backend="openvino")
    with pytest.raises(FileNotFoundError, match=EXPORT_METADATA_FILE):
        ExportedReranker.load(tmp_path / "nowhere")


def test_a_failed_onnx_export_leaves_no_folder(tiny_backbone, tmp_path, monkeypatch):
    module = build("bi", tiny_backbone)

    def crash(folder, *args, **kwargs):
        (Path(folder) / "onnx").mkdir()
        (Path(folder) / "onnx" / "model.onnx").write_bytes(b"half a model")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(onnx_export, "missing_onnx_dependencies", lambda: [])
    monkeypatch.setattr(onnx_export, "write_onnx", crash)
    with pytest.raises(RuntimeError, match="mid-export"):
        module.export(tmp_path / "export", onnx=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_extra_is_refused_before_anything_is_written(
    tiny_backbone, tmp_path, monkeypatch
):
    monkeypatch.setattr(onnx_export, "missing_onnx_dependencies", lambda: ["onnxruntime"])
    with pytest.raises(ImportError, match=r"onnx extra"):
        build("cross", tiny_backbone).export(tmp_path / "export", onnx=True)
    assert list(tmp_path.iterdir()) == []

    # The callback refuses when the fit starts, not after it.
    with pytest.raises(ImportError, match=r"onnx extra"):
        ExportBestModel(onnx=True).on_fit_start(None, build("bi", tiny_backbone))

    class NoOnnx:
        def export(self, target, *, datamodule=None, overwrite=False): ...

    with pytest.raises(ValueError, match="no ONNX export"):
        ExportBestModel(onnx=True).on_fit_start(None, NoOnnx())
    ExportBestModel().on_fit_start(None, NoOnnx())  # off by default: nothing to check


def test_the_loader_imports_neither_lightning_nor_torch():
    code = (
        "import sys; import lightning_modules.inference; "
        "print(sorted(m for m in ('lightning', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_cpu_capability_names_the_flags_that_choose_kernels():
    info = cpu_capability()
    assert set(info) >= {"cpu_model", "machine", "kernels", "flags"}
    assert set(info["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}
    assert info["kernels"] == torch.backends.cpu.get_cpu_capability()
    assert f"{info['kernels']} kernels" in describe_cpu(info)


@needs_onnx
def test_export_best_model_callback_writes_the_onnx_files_when_asked(tiny_backbone, tmp_path):
    module = build("bi", tiny_backbone)
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        fast_dev_run=False,
        callbacks=[],  # no ModelCheckpoint: the module's weights as they are
        datamodule=SimpleNamespace(document_template=TEMPLATE),
    )
    callback = ExportBestModel(export_dir=str(tmp_path / "export"), onnx=True)
    callback.on_fit_start(trainer, module)
    callback.on_fit_end(trainer, module)
    metadata = json.loads((tmp_path / "export" / EXPORT_METADATA_FILE).read_text())
    assert all((tmp_path / "export" / f).is_file() for f in metadata["onnx"]["files"].values())
    reranker = ExportedReranker.load(tmp_path / "export", backend="onnx")
    assert len(reranker.rank("red fruit", [{"title": "apple"}, {"title": "car"}])) == 2


def test_plan_batches_finds_the_cheapest_cut_of_the_sorted_lengths():
    import itertools
    import random

    from lightning_modules.inference import plan_batches

    def cost(runs, lengths, call_cost):
        return sum(len(r) * max(lengths[i] for i in r) + call_cost for r in runs)

    # one long text among short ones: padded with them it would cost 4 x 200 tokens
    assert plan_batches([10, 12, 200, 11], 32, call_cost=64) == [[0, 3, 1], [2]]
    assert plan_batches([10, 12, 200, 11], 32, call_cost=1000) == [[0, 3, 1, 2]]
    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.randint(5, 256) for _ in range(rng.randint(1, 9))]
        max_rows, call_cost = rng.randint(1, 5), rng.choice([0, 16, 64, 256])
        runs = plan_batches(lengths, max_rows, call_cost)
        assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
        assert all(1 <= len(r) <= max_rows for r in runs)
        # brute force over every cut of the length-sorted rows
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = float("inf")
        for cuts in itertools.product([False, True], repeat=len(order) - 1):
            candidate, run = [], [order[0]]
            for i, cut in zip(order[1:], cuts, strict=True):
                if cut:
                    candidate.append(run)
                    run = []
                run.append(i)
            candidate.append(run)
            if all(len(r) <= max_rows for r in candidate):
                best = min(best, cost(candidate, lengths, call_cost))
        assert cost(runs, lengths, call_cost) == best
