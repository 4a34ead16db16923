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
from datamodules.query_rewriting import QueryRewritingDataModule
from datamodules.rewrite_inputs import RewriteInputFormat
from lightning_modules.callbacks import load_weights
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.query_rewriter import QueryRewriter
from lightning_modules.rewriter_inference import ExportedQueryRewriter
from tests.conftest import TOPICS, generated_ids, write_rewriter_config

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return main.main([str(a) for a in args])


def fit_one_epoch(config, *extra):
    return run_cli("fit", "--config", config, "--trainer.max_epochs", "1", *extra)


def test_fit_logs_bleu_and_copy_baseline_then_export_reloads_identically(
    tmp_path, tiny_backbone, rewriting_data_files, caplog, capsys
):
    app, pairs = rewriting_data_files
    before = {p: p.read_bytes() for p in (app, pairs)}
    config = write_rewriter_config(tmp_path, tiny_backbone, [app, pairs])
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
    # What each system's query finds (the retrieval judge over the log's sources), for the
    # validation pairs mined from app records; pairs lines have no record to be judged on.
    from lightning_modules.retrieval_judge import RetrievalJudge

    records = [p.record for p in [*cli.datamodule.train_pairs, *val] if p.record is not None]
    judge = RetrievalJudge(records)
    judged = [p for p in val if p.record is not None]
    assert judged and len(judged) < len(val)
    for system, query in (("copy/", lambda p: p.source), ("target/", lambda p: p.target)):
        want = sum(judge.coverage(query(p), p.record) for p in judged) / len(judged)
        assert float(logged[f"val/{system}coverage@10"]) == pytest.approx(want, abs=1e-6)
    assert float(logged["val/lift/coverage@10"]) == pytest.approx(
        float(logged["val/coverage@10"] - logged["val/copy/coverage@10"]), abs=1e-6
    )
    # the union of the first n variations, n = 1, 3, 5: n = 1 is the best rewrite alone, and
    # more variations find at least what fewer found
    union = [float(logged[f"val/union{n}_coverage@10"]) for n in (1, 3, 5)]
    assert union[0] == pytest.approx(float(logged["val/coverage@10"]), abs=1e-6)
    assert union[0] <= union[1] + 1e-6 <= union[2] + 2e-6
    assert float(logged["val/lift/union3_coverage@10"]) == pytest.approx(
        float(logged["val/union3_coverage@10"] - logged["val/copy/coverage@10"]), abs=1e-6
    )
    # the mined target is the candidate that found the most picks: the judge agrees here
    assert float(logged["val/target/coverage@10"]) > float(logged["val/copy/coverage@10"])
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


def test_bad_record_is_named_and_skip_mode_counts_it(tmp_path, tiny_backbone, rewriting_data_files):
    app, pairs = rewriting_data_files
    data = json.loads(app.read_text())
    data["query_rewriting_data"][3]["query_source_mapping"]["rewrite 1"]["query"] = 7
    app.write_text(json.dumps(data))
    config = write_rewriter_config(tmp_path, tiny_backbone, [app, pairs])
    with pytest.raises(Exception, match=r"record 3: field 'query_source_mapping\['rewrite 1'\]"):
        fit_one_epoch(config)
    cli = fit_one_epoch(config, "--data.init_args.on_invalid", "skip")
    report = cli.datamodule.reports["train"]
    assert (report.read, report.kept, report.n_dropped) == (40, 39, 1)


def test_a_fit_learns_from_every_logged_candidate_when_asked(
    tmp_path, tiny_backbone, rewriting_data_files
):
    app, pairs = rewriting_data_files
    config = write_rewriter_config(tmp_path, tiny_backbone, [app, pairs])
    loss = "lightning_modules.losses.SoftmaxCrossEntropyLoss"
    cli = fit_one_epoch(config, "--model.init_args.candidate_loss", loss)
    logged = cli.trainer.callback_metrics
    assert {"train/candidate_loss", "train/target_loss", "val/coverage@10"} <= set(logged)
    total = logged["train/target_loss"] + logged["train/candidate_loss"]  # weight 1
    assert float(logged["train/loss"]) == pytest.approx(float(total), rel=1e-4)
    metadata = json.loads((Path(cli.trainer.log_dir) / "export" / EXPORT_METADATA_FILE).read_text())
    assert "over the logged candidates" in metadata["training"]["loss"]
