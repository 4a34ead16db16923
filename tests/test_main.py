"""The command line end to end with a tiny model: fit -> validate -> export -> reload -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import main
from datamodules.feedback import render_document
from datamodules.reranker_records import load_reranker_feedback
from lightning_modules.callbacks import load_weights
from lightning_modules.export import EXPORT_METADATA_FILE, MODEL_CARD_FILE
from lightning_modules.loggers import data_content_hash
from lightning_modules.reranker import BiEncoderReranker
from tests.conftest import (
    RERANKER_MODULES,
    point_loggers_at,
    reranker_predict_scores,
    write_reranker_config,
)

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str):
    return main.main([str(a) for a in args])


def checkpoint_of(tmp_path: Path) -> Path:
    (best,) = [p for p in (tmp_path / "logs").rglob("*.ckpt") if p.name != "last.ckpt"]
    return best


def module_scores(kind: str, config: Path, ckpt: Path, feedback: Path):
    """Scores from the checkpoint through the training code path, per query."""
    cfg = yaml.safe_load(config.read_text())
    module = RERANKER_MODULES[kind](
        **{k: v for k, v in cfg["model"]["init_args"].items() if k != "loss"}
    )
    load_weights(module, ckpt)
    module.eval()
    template = cfg["data"]["init_args"]["document_template"]
    records, scores = reranker_predict_scores(module, feedback, template)
    return module, records, scores


@pytest.mark.slow  # end-to-end fit through the CLI
@pytest.mark.parametrize("kind", ["cross", "bi"])
def test_fit_validate_export_reload_predict(tmp_path, tiny_backbone, feedback_file, kind):
    config = write_reranker_config(tmp_path, tiny_backbone, feedback_file, kind)
    cli = run_cli("fit", "--config", config)
    assert cli.trainer.current_epoch == 2
    logged = cli.trainer.callback_metrics
    for name in (
        "val/ndcg@10",
        "val/display/ndcg@10",
        "val/lift/ndcg@10",
        "val/mrr@10",
        "val/recall@3",
        "val/ndcg@1",
        "val/ndcg@3",
        "val/ndcg@5",
    ):
        assert name in logged, name
    lift = logged["val/ndcg@10"] - logged["val/display/ndcg@10"]
    assert float(logged["val/lift/ndcg@10"]) == pytest.approx(float(lift), abs=1e-6)
    ckpt = checkpoint_of(tmp_path)
    # The fit exported its best checkpoint into its log folder.
    auto_export = Path(cli.trainer.log_dir) / "export"
    assert (auto_export / EXPORT_METADATA_FILE).exists()

    validated = run_cli("validate", "--config", config, "--ckpt_path", ckpt)
    assert "val/ndcg@10" in validated.trainer.callback_metrics

    export_dir = tmp_path / "exported"
    run_cli("export", "--config", config, "--ckpt_path", ckpt, "--export_dir", export_dir)
    metadata = json.loads((export_dir / EXPORT_METADATA_FILE).read_text())

    # The fit's own export, written when that checkpoint became the best, holds its weights...
    def weights(folder: Path) -> dict:
        from safetensors.torch import load_file

        (path,) = folder.rglob("*.safetensors")
        return load_file(path)

    fit_weights, ckpt_weights = weights(auto_export), weights(export_dir)
    assert fit_weights.keys() == ckpt_weights.keys()
    assert all(torch.equal(fit_weights[k], ckpt_weights[k]) for k in fit_weights)
    # ... and a model card with that epoch's validation metric beside the display order's.
    best = cli.trainer.checkpoint_callback.best_model_score
    fit_metadata = json.loads((auto_export / EXPORT_METADATA_FILE).read_text())
    validation = fit_metadata["training"]["validation"]
    assert validation["metric"] == "val/ndcg@10"
    assert validation["value"] == pytest.approx(float(best), abs=1e-6)
    assert validation["lift"] == pytest.approx(validation["value"] - validation["baseline"])
    assert fit_metadata["training"]["data"]["content_hash"] == data_content_hash([feedback_file])
    assert fit_metadata["training"]["loss"].startswith("RankNetLoss")
    card = (auto_export / MODEL_CARD_FILE).read_text()
    assert f"{validation['value']:.4f} against {validation['baseline']:.4f}" in card
    assert "ExportedReranker.load" in card and str(tiny_backbone) in card
    # exported outside a fit: the card says no validation was recorded
    assert "not recorded" in (export_dir / MODEL_CARD_FILE).read_text()
    assert metadata["architecture"] == {"cross": "cross-encoder", "bi": "bi-encoder"}[kind]
    assert metadata["document_template"] == "{title} | {snippet}"
    assert (export_dir / "model.safetensors").exists() or any(export_dir.rglob("*.safetensors"))

    # Never over an existing folder unless asked; the old one stays intact when refused.
    before = {p: p.read_bytes() for p in export_dir.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError):
        run_cli("export", "--config", config, "--ckpt_path", ckpt, "--export_dir", export_dir)
    assert before == {p: p.read_bytes() for p in export_dir.rglob("*") if p.is_file()}
    run_cli(
        "export",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--export_dir",
        export_dir,
        "--overwrite",
        "true",
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]

    # Reloaded with the standard libraries, the export scores exactly like the checkpoint.
    module, records, expected = module_scores(kind, config, ckpt, feedback_file)
    template = metadata["document_template"]
    if kind == "cross":
        from sentence_transformers import CrossEncoder
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        hf = AutoModelForSequenceClassification.from_pretrained(export_dir).eval()
        tok = AutoTokenizer.from_pretrained(export_dir)
        st = CrossEncoder(str(export_dir), device="cpu")
        for record, want in zip(records, expected, strict=True):
            docs = [render_document(template, s) for s in record.sources]
            with torch.no_grad():
                enc = tok(
                    [record.query] * len(docs),
                    docs,
                    truncation=True,
                    padding=True,
                    return_tensors="pt",
                )
                hf_scores = hf(**enc).logits.squeeze(-1).numpy()
            st_scores = st.predict(
                [(record.query, d) for d in docs], activation_fn=torch.nn.Identity()
            )
            np.testing.assert_allclose(hf_scores, want, atol=1e-5)
            np.testing.assert_allclose(st_scores, want, atol=1e-5)
    else:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(export_dir), device="cpu")
        temperature = float(module.log_temperature.exp())
        for record, want in zip(records, expected, strict=True):
            docs = [render_document(template, s) for s in record.sources]
            q = st.encode([record.query], convert_to_tensor=True)
            d = st.encode(docs, convert_to_tensor=True)
            cosine = (q @ d.T).squeeze(0).numpy()
            np.testing.assert_allclose(cosine / temperature, want, atol=1e-4)

    # predict: reranked JSON in the app's format and a TREC run, best first.
    out_dir = tmp_path / "predictions"
    config_data = yaml.safe_load(config.read_text())
    for callback in config_data["trainer"]["callbacks"]:
        if callback["class_path"].endswith("RerankingWriter"):
            callback["init_args"] = {"output_dir": str(out_dir), "tag": "test-run"}
    config.write_text(yaml.safe_dump(config_data))
    run_cli(
        "predict",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--data.init_args.predict_files",
        f"[{feedback_file}]",
    )
    reranked = json.loads((out_dir / "reranked.json").read_text())["reranker_data"]
    assert len(reranked) == len(records)
    run_lines = (out_dir / "run.trec").read_text().splitlines()
    assert len(run_lines) == sum(len(r.sources) for r in records)
    for entry, record, want in zip(reranked, records, expected, strict=True):
        scores = [s["score"] for s in entry["all_sources"]]
        assert scores == sorted(scores, reverse=True)
        positions = [s["display_position"] for s in entry["all_sources"]]
        assert sorted(positions) == list(range(len(record.sources)))
        np.testing.assert_allclose(scores, want[positions], atol=1e-5)
    qid, q0, docid, rank, score, tag = run_lines[0].split()
    assert (qid, q0, rank, tag) == (records[0].query_id, "Q0", "1", "test-run")
    assert docid == reranked[0]["all_sources"][0]["url"]
    # The user's feedback file is untouched.
    assert load_reranker_feedback(feedback_file)[1].kept == len(records)


# Every job the configs ship, as the README runs them: a job, then any overlays stacked on it.
JOBS = [
    ("reranker.yaml",),
    ("reranker.yaml", "reranker_full.yaml"),
    ("reranker.yaml", "reranker_cross_encoder.yaml"),
    ("reranker.yaml", "reranker_jina.yaml"),
    ("reranker.yaml", "fast.yaml"),
    ("reranker.yaml", "top_layers.yaml"),
    ("reranker.yaml", "position_additive.yaml"),
    ("reranker.yaml", "position_ips.yaml"),
    ("reranker.yaml", "position_skip_above.yaml"),
    ("reranker.yaml", "select_debiased.yaml"),
    ("reranker.yaml", "display_prior.yaml"),
    ("query_rewriting_offline.yaml",),
    ("query_rewriting_offline.yaml", "query_rewriting.yaml"),
]
HUB_MODELS = {"jinaai/jina-reranker-v1-turbo-en", "prhegde/t5-query-reformulation-RL"}


def test_every_config_file_is_part_of_a_shipped_job():
    used = set()
    for job in JOBS:
        for name in job:
            path = REPO / "configs" / name
            used.add(path)
            for value in yaml.safe_load(path.read_text()).values():  # its pieces
                if isinstance(value, str) and value.endswith(".yaml"):
                    used.add((path.parent / value).resolve())
    assert set((REPO / "configs").rglob("*.yaml")) == used


@pytest.mark.parametrize("job", JOBS, ids=lambda job: "+".join(Path(n).stem for n in job))
def test_every_config_builds_its_classes(job, tmp_path, tiny_backbone, tiny_t5_folder):
    """Each job parses and instantiates every class it names (trainer, loggers, callbacks, model,
    loss, data module). Hub models are swapped for tiny local ones of the same kind: no network."""
    config = main.resolved_config(*(REPO / "configs" / name for name in job))
    assert config["model"]["class_path"].startswith("lightning_modules.")
    assert config["data"]["class_path"].startswith("datamodules.")
    model_args = config["model"]["init_args"]
    if model_args["model_name_or_path"] in HUB_MODELS:
        seq2seq = config["model"]["class_path"].endswith("QueryRewriter")
        model_args["model_name_or_path"] = str(tiny_t5_folder if seq2seq else tiny_backbone)
    elif model_args.get("init") == "encoder_decoder" or "Reranker" in config["model"]["class_path"]:
        model_args["model_name_or_path"] = str(tiny_backbone)  # the packaged MiniLM: slow to load
    point_loggers_at(config, tmp_path / "logs")
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(config))
    cli = main.FeedbackCLI(
        trainer_class=main.FeedbackTrainer, args=["--config", str(config_file)], run=False
    )
    assert type(cli.model).__name__ == config["model"]["class_path"].rsplit(".", 1)[1]
    assert type(cli.datamodule).__name__ == config["data"]["class_path"].rsplit(".", 1)[1]
    assert cli.datamodule.input_encoder is not None  # linked from the model
    callbacks = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "EarlyStopping", "ExportBestModel"} <= callbacks
    assert len(cli.trainer.loggers) == 2
    if job[-1] == "fast.yaml":
        assert not cli.model.chunk_checkpointing and cli.model.chunk_tokens == 1024
    if job[-1] == "top_layers.yaml":  # layer-wise recomputation, never of the frozen layers
        assert cli.model.trained_layers == 3 and cli.model.gradient_checkpointing
        assert not cli.model.chunk_checkpointing


def test_code_defaults_are_the_shipped_recipes():
    """The model and data pieces of the default jobs only write out what the code already does:
    ``BiEncoderReranker()`` and ``QueryRewriter()`` are the recipes."""
    import inspect

    from datamodules.reranker import RerankerDataModule
    from lightning_modules.query_rewriter import QueryRewriter
    from lightning_modules.reranker import RerankerModule

    def defaults(*classes):
        out = {}
        for cls in classes:
            for name, p in inspect.signature(cls.__init__).parameters.items():
                if p.default is not inspect.Parameter.empty:
                    out.setdefault(name, p.default)
        return out

    for piece, classes in [
        ("model/bi_encoder.yaml", (BiEncoderReranker, RerankerModule)),
        ("model/t5_rewriter.yaml", (QueryRewriter,)),
        ("data/reranker_feedback.yaml", (RerankerDataModule,)),
    ]:
        init_args = yaml.safe_load((REPO / "configs" / piece).read_text())["init_args"]
        code = defaults(*classes)
        for name, value in init_args.items():
            if name == "loss":
                assert (
                    BiEncoderReranker.default_loss.__name__ == value["class_path"].rsplit(".")[-1]
                )
            elif name != "train_files":  # the shipped data, not a default
                default = code[name]  # (YAML has lists where the code has tuples)
                assert (list(default) if isinstance(default, tuple) else default) == value, (
                    piece,
                    name,
                )


@pytest.mark.slow  # end-to-end fit through the CLI
def test_fit_in_skip_mode_trains_and_reports_what_it_dropped(
    tmp_path, tiny_backbone, feedback_file
):
    data = json.loads(feedback_file.read_text())
    bad = dict(data["reranker_data"][0], positive_sources=["https://not-shown.example"])
    data["reranker_data"].append(bad)
    broken = tmp_path / "with_a_bad_record.json"
    broken.write_text(json.dumps(data))
    config = write_reranker_config(tmp_path, tiny_backbone, broken, "bi")
    with pytest.raises(Exception, match=r"record 41: field 'positive_sources\[0\]'"):
        run_cli("fit", "--config", config, "--trainer.max_epochs", "1")
    cli = run_cli(
        "fit",
        "--config",
        config,
        "--trainer.max_epochs",
        "1",
        "--data.init_args.on_invalid",
        "skip",
    )
    report = cli.datamodule.reports["train"]
    assert (report.read, report.kept, report.n_dropped) == (42, 41, 1)
    assert "val/ndcg@10" in cli.trainer.callback_metrics


@pytest.mark.slow  # end-to-end fit through the CLI
def test_a_fit_with_the_display_prior_exports_the_weight_of_its_best_checkpoint(
    tmp_path, tiny_backbone, feedback_file
):
    config = write_reranker_config(tmp_path, tiny_backbone, feedback_file, "bi")
    overlay = REPO / "configs" / "display_prior.yaml"
    grid = yaml.safe_load(overlay.read_text())["model"]["init_args"]["display_prior_weights"]
    cli = run_cli("fit", "--config", config, "--config", overlay, "--trainer.max_epochs", "2")
    logged = cli.trainer.callback_metrics
    assert float(logged["val/display_prior/weight"]) in grid
    # the mix at the chosen weight is at least as good on the debiased metric as the model
    # alone (weight 0 is a candidate), which is what it was chosen on
    assert float(logged["val/display_prior/ips_dcg@10"]) >= float(logged["val/ips_dcg@10"]) - 1e-6
    checkpoint = torch.load(checkpoint_of(tmp_path), map_location="cpu", weights_only=True)
    exported = json.loads(
        (Path(cli.trainer.log_dir) / "export" / EXPORT_METADATA_FILE).read_text()
    )["display_prior"]
    assert exported["weight"] == float(checkpoint["state_dict"]["display_prior_weight"])
    assert exported["grid"] == grid and exported["fitted_on"].startswith("val/ips_dcg@10")


@pytest.mark.slow  # end-to-end export through the CLI
def test_export_writes_onnx_files_beside_the_weights_when_asked(tmp_path, tiny_backbone):
    pytest.importorskip("onnxruntime")
    from lightning_modules.onnx_export import missing_onnx_dependencies

    if missing_onnx_dependencies():
        pytest.skip("the onnx extra is not installed")
    feedback = tmp_path / "feedback.json"
    feedback.write_text(json.dumps({"reranker_data": []}))
    config = write_reranker_config(tmp_path, tiny_backbone, feedback, "bi")
    export_dir = tmp_path / "exported"
    run_cli("export", "--config", config, "--export_dir", export_dir, "--onnx", "true")
    metadata = json.loads((export_dir / EXPORT_METADATA_FILE).read_text())
    assert metadata["document_template"] == "{title} | {snippet}"
    onnx = metadata["onnx"]
    assert onnx["files"] == {"onnx": "onnx/model.onnx", "onnx-int8": "onnx/model_quint8_avx2.onnx"}
    assert all((export_dir / path).is_file() for path in onnx["files"].values())
    assert onnx["output"] == "last_hidden_state" and onnx["quantization"]["config"] == "avx2"
    assert (export_dir / "model.safetensors").is_file()  # the Hugging Face folder as before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("kind", ["cross", "bi"])
def test_the_cli_hands_the_models_input_encoder_to_the_data_module(
    tmp_path, tiny_backbone, feedback_file, kind
):
    """``link_arguments``: the data module gets the model's encoder when both are built, and
    never reaches into the model (no trainer is attached here)."""
    config = write_reranker_config(tmp_path, tiny_backbone, feedback_file, kind)
    cli = main.FeedbackCLI(
        trainer_class=main.FeedbackTrainer, args=["--config", str(config)], run=False
    )
    encoder = cli.datamodule.input_encoder
    assert type(encoder) is type(cli.model.input_encoder())
    assert encoder.tokenizer is cli.model.tokenizer
    assert encoder.max_length == cli.model.max_length
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch.inputs


def test_a_data_module_without_an_encoder_says_what_it_needs(feedback_file):
    from datamodules.reranker import RerankerDataModule

    with pytest.raises(RuntimeError, match="needs an input_encoder"):
        RerankerDataModule(train_files=[str(feedback_file)]).setup("fit")
