"""The query rewriter through the CLI with a tiny T5: fit -> export -> reload -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import main
from datamodules.query_rewriting import QueryRewritingDataModule, RewriteInputFormat
from lightning_modules.callbacks import load_weights
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.query_rewriter import ExportedQueryRewriter, QueryRewriter
from tests.conftest import generated_ids, point_loggers_at, quiet_short_trainer

REPO = Path(__file__).resolve().parents[1]
TINY_T5 = {
    "d_model": 32,
    "d_ff": 64,
    "d_kv": 8,
    "num_heads": 4,
    "num_layers": 2,
    "num_decoder_layers": 2,
}
TOPICS = ["france", "germany", "apple", "banana", "music", "film", "river", "city"]


def app_record(i: int) -> dict:
    """The rewrite that adds the topic finds two of the user's picks; the original finds one."""
    topic = TOPICS[i % len(TOPICS)]
    original = f"what is the capital {i}"
    better = f"what is the capital of {topic} {i}"
    urls = [f"https://example.org/{i}/{k}" for k in range(6)]
    return {
        "original_query": original,
        "selected_sources": urls[:3],
        "query_source_mapping": {
            "original query": {"query": original, "reasoning": "user", "sources": urls[2:]},
            "rewrite 1": {
                "query": better,
                "reasoning": "t5",
                "sources": [{"url": u, "title": "t", "snippet": "s"} for u in urls[:2]],
            },
        },
        "query_generator": "t5",
        "timestamp": "2025-07-19T10:00:00",
    }


@pytest.fixture()
def data_files(tmp_path) -> tuple[Path, Path]:
    app = tmp_path / "query_rewriting_training_data.json"
    app.write_text(json.dumps({"query_rewriting_data": [app_record(i) for i in range(24)]}))
    pairs = tmp_path / "pairs.jsonl"
    lines = [
        {
            "source": f"when did it win {i}",
            "target": f"when did the band win {i}",
            "history": ["the band", f"song {i}"],
        }
        for i in range(16)
    ]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return app, pairs


def write_config(tmp_path: Path, backbone: Path, files: list[Path]) -> Path:
    config = main.resolved_config(REPO / "configs" / "query_rewriting_offline.yaml")
    quiet_short_trainer(config, default_root_dir=str(tmp_path))
    point_loggers_at(config, tmp_path / "logs")
    config["model"]["init_args"] = {
        "model_name_or_path": str(backbone),
        "init": "t5_config",
        "t5_config": TINY_T5,
        "learning_rate": 3e-3,
        "num_beams": 2,
        "max_new_tokens": 12,
        "num_return_sequences": 3,
    }
    config["data"]["init_args"].update(
        train_files=[str(f) for f in files],
        validation_fraction=0.3,
        batch_size=8,
        task_prefix="rewrite : ",
        max_source_tokens=48,
    )
    path = tmp_path / "rewriter.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args):
    return main.main([str(a) for a in args])


def test_fit_logs_bleu_and_copy_baseline_then_export_reloads_identically(
    tmp_path, tiny_backbone, data_files, caplog, capsys
):
    app, pairs = data_files
    before = {p: p.read_bytes() for p in (app, pairs)}
    config = write_config(tmp_path, tiny_backbone, [app, pairs])
    cli = run_cli("fit", "--config", config)
    logged = cli.trainer.callback_metrics
    for name in ("bleu", "chrf", "exact_match"):
        for prefix in ("val/", "val/copy/", "val/lift/"):
            assert prefix + name in logged, prefix + name
    assert float(logged["val/lift/bleu"]) == pytest.approx(
        float(logged["val/bleu"] - logged["val/copy/bleu"]), abs=1e-4
    )
    # The copy baseline is the validation questions scored against their targets.
    val = cli.datamodule.val_pairs
    assert val and any(not p.is_original for p in val)
    copy = sacrebleu.corpus_bleu([p.source for p in val], [[p.target for p in val]]).score
    assert float(logged["val/copy/bleu"]) == pytest.approx(copy, abs=1e-3)
    # A tiny model trained for two epochs is no better than not rewriting (where it generates
    # nothing usable, the question itself is its rewrite, as the app gets it).
    assert float(logged["val/bleu"]) <= copy + 1e-3
    # Mined targets: the rewrite that found more of the user's picks.
    assert {p.target for p in cli.datamodule.train_pairs} >= {
        f"what is the capital of {TOPICS[i % 8]} {i}"
        for i in range(24)
        if f"what is the capital {i}" in {p.source for p in cli.datamodule.train_pairs}
    }
    samples = list((Path(cli.trainer.log_dir) / "samples").glob("val_*.jsonl"))
    assert samples
    assert {"question", "rewrite", "target"} <= set(
        json.loads(samples[0].read_text().split("\n")[0])
    )
    assert (Path(cli.trainer.log_dir) / "export" / EXPORT_METADATA_FILE).exists()
    # The run's own logs are enough to compare it offline.
    capsys.readouterr()
    assert run_cli("compare", tmp_path / "logs") == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert "val/bleu" in row and f"{float(logged['val/copy/bleu']):.4f}" in row

    (ckpt,) = [p for p in (tmp_path / "logs").rglob("*.ckpt") if p.name != "last.ckpt"]
    export_dir = tmp_path / "exported"
    run_cli("export", "--config", config, "--ckpt_path", ckpt, "--export_dir", export_dir)
    metadata = json.loads((export_dir / EXPORT_METADATA_FILE).read_text())
    assert metadata["input_format"]["task_prefix"] == "rewrite : "

    # The checkpoint through the training code path ...
    cfg = yaml.safe_load(config.read_text())
    module = QueryRewriter(**cfg["model"]["init_args"])
    load_weights(module, ckpt)
    module.eval()
    dm = QueryRewritingDataModule(
        predict_files=[str(pairs)],
        eval_batch_size=4,
        **{k: cfg["data"]["init_args"][k] for k in ("task_prefix", "max_source_tokens")},
    )
    dm.input_encoder = module.input_encoder()
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    expected = generated_ids(module, batch)
    # ... and the export with the standard classes, inputs built from the saved format only.
    model = AutoModelForSeq2SeqLM.from_pretrained(export_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    fmt = RewriteInputFormat(**metadata["input_format"])
    texts = [fmt.join(p.source, list(p.history)) for p in dm.predict_pairs[:4]]
    with torch.no_grad():
        reloaded = model.generate(**tokenizer(texts, padding=True, return_tensors="pt"))
    assert tokenizer.batch_decode(reloaded, skip_special_tokens=True) == tokenizer.batch_decode(
        expected, skip_special_tokens=True
    )

    # predict: several distinct rewrites per question, in input order.
    out_dir = tmp_path / "predictions"
    run_cli(
        "predict",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--data.init_args.predict_files",
        f"[{app}]",
        "--trainer.callbacks+=lightning_modules.callbacks.RewriteWriter",
        "--trainer.callbacks.output_dir",
        out_dir,
    )
    lines = [json.loads(x) for x in (out_dir / "rewrites.jsonl").read_text().splitlines()]
    assert [x["question"] for x in lines] == [f"what is the capital {i}" for i in range(24)]
    assert all(1 <= len(x["rewrites"]) <= 3 for x in lines)
    assert all(len(set(x["rewrites"])) == len(x["rewrites"]) for x in lines)
    # The app's loader on the export of the same checkpoint: exactly what predict wrote.
    rewriter = ExportedQueryRewriter(export_dir)
    assert rewriter.rewrite([x["question"] for x in lines], n=3) == [x["rewrites"] for x in lines]
    assert before == {p: p.read_bytes() for p in (app, pairs)}


def test_bad_record_is_named_and_skip_mode_counts_it(tmp_path, tiny_backbone, data_files):
    app, pairs = data_files
    data = json.loads(app.read_text())
    data["query_rewriting_data"][3]["query_source_mapping"]["rewrite 1"]["query"] = 7
    app.write_text(json.dumps(data))
    config = write_config(tmp_path, tiny_backbone, [app, pairs])
    with pytest.raises(Exception, match=r"record 3: field 'query_source_mapping\['rewrite 1'\]"):
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
    assert (report.read, report.kept, report.n_dropped) == (40, 39, 1)
