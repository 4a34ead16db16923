"""`main.py promote` / `rollback` end to end with tiny models: a worse (untrained) candidate is
refused and the deployment stays byte-identical; a better one is deployed and the old model is
kept for rollback. The reranker gate and the rewriter gate write the same report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import main
from tests.conftest import write_reranker_config, write_rewriter_config

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (through the deployment link) with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def promote(config: Path, candidate: Path, deployment: Path, report: Path, *extra: str) -> dict:
    main.main(
        [
            "promote",
            "--config",
            str(config),
            "--candidate",
            str(candidate),
            "--deployment",
            str(deployment),
            "--report_dir",
            str(report),
            "--n_resamples",
            "200",
            *extra,
        ]
    )
    markdown = (report / "promotion_report.md").read_text()
    assert "| metric | deployed | candidate | delta | 95% CI | p |" in markdown
    return json.loads((report / "promotion_report.json").read_text())


def test_reranker_gate_refuses_worse_accepts_better_and_rolls_back(
    tmp_path, tiny_backbone, feedback_file
):
    config = write_reranker_config(tmp_path, tiny_backbone, feedback_file, "bi")
    cli = main.main(["fit", "--config", str(config), "--trainer.max_epochs", "4"])
    trained = Path(cli.trainer.log_dir) / "export"
    untouched = tmp_path / "untouched"  # a candidate trained for zero steps
    main.main(["export", "--config", str(config), "--export_dir", str(untouched)])

    # Today the app runs the untouched model, copied there by hand.
    deployment = tmp_path / "deploy" / "reranker"
    shutil.copytree(untouched, deployment)
    before = snapshot(deployment)
    stat_before = os.stat(deployment)

    refused = promote(config, untouched, deployment, tmp_path / "r1")
    assert refused["promoted"] is False and refused["version"] is None
    assert "not an improvement" in refused["reason"]
    assert snapshot(deployment) == before and not deployment.is_symlink()
    assert os.stat(deployment).st_mtime == stat_before.st_mtime

    accepted = promote(config, trained, deployment, tmp_path / "r2")
    (gate,) = [c for c in accepted["comparisons"] if c["metric"] == "ndcg@10"]
    assert accepted["promoted"] is True, accepted["reason"]
    assert gate["candidate"] > gate["deployed"] and gate["delta"] > 0
    assert {c["metric"] for c in accepted["comparisons"]} == {"ndcg@10", "mrr@10", "ips_dcg@10"}
    assert accepted["baseline_name"] == "display order"
    assert deployment.is_symlink() and snapshot(deployment) == snapshot(trained)
    assert snapshot(trained)  # the candidate folder itself is untouched and still there

    # Now the trained model is deployed: the untrained one is refused, nothing moves.
    deployed_now = snapshot(deployment)
    link_before = os.readlink(deployment)
    again = promote(config, untouched, deployment, tmp_path / "r3")
    assert again["promoted"] is False
    assert os.readlink(deployment) == link_before and snapshot(deployment) == deployed_now

    # Rollback returns to the hand-made deployment, byte for byte.
    assert main.main(["rollback", str(deployment)]) == 0
    assert snapshot(deployment) == before


def test_rewriter_gate_uses_bleu_exact_match_and_coverage(
    tmp_path,
    tiny_backbone,
    rewriting_data_files,  # noqa: F811
):
    app, pairs = rewriting_data_files
    config = write_rewriter_config(tmp_path, tiny_backbone, [app, pairs])
    cli = main.main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs",
            "12",
            "--trainer.check_val_every_n_epoch",
            "12",
        ]
    )
    trained = Path(cli.trainer.log_dir) / "export"
    untouched = tmp_path / "untouched"
    main.main(["export", "--config", str(config), "--export_dir", str(untouched)])
    deployment = tmp_path / "deploy" / "rewriter"

    # Nothing deployed yet: the candidate is compared with the config's own (untouched) model.
    refused = promote(config, untouched, deployment, tmp_path / "r1")
    assert refused["promoted"] is False and not deployment.exists()
    assert {c["metric"] for c in refused["comparisons"]} == {"bleu", "exact_match", "coverage@10"}
    assert refused["primary_metric"] == "bleu"
    assert refused["baseline_name"] == "copy the question"
    # coverage: the retrieval judge's, over the held-out pairs mined from app records, the
    # copy baseline its questions' own (what validation logs as val/copy/coverage@10)
    validated = main.main(["validate", "--config", str(config)])
    copy_coverage = float(validated.trainer.callback_metrics["val/copy/coverage@10"])
    assert refused["baseline"]["coverage@10"] == pytest.approx(copy_coverage, abs=1e-6)

    elsewhere = tmp_path / "deploy" / "judged_by_coverage"
    on_coverage = promote(config, trained, elsewhere, tmp_path / "r0", "--metric", "coverage@10")
    assert on_coverage["primary_metric"] == "coverage@10"
    assert on_coverage["reason"].startswith("coverage@10")
    gate = next(c for c in on_coverage["comparisons"] if c["metric"] == "coverage@10")
    assert on_coverage["promoted"] == (gate["delta"] > 0) == elsewhere.exists()

    accepted = promote(config, trained, deployment, tmp_path / "r2")
    assert accepted["promoted"] is True, accepted["reason"]
    assert snapshot(deployment) == snapshot(trained)


def test_the_gate_measures_what_validate_measures_with_the_configs_precision(
    tmp_path, tiny_backbone, feedback_file, monkeypatch
):
    """The gate runs Lightning's validation loop: its figures are `validate`'s own, under the
    precision the command line gives."""
    config = write_reranker_config(tmp_path, tiny_backbone, feedback_file, "bi")
    cli = main.main(["fit", "--config", str(config), "--trainer.max_epochs", "2"])
    trained = Path(cli.trainer.log_dir) / "export"
    precisions = []
    validate = main.FeedbackTrainer.validate

    def recording_validate(self, *args, **kwargs):
        precisions.append(self.precision)
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(main.FeedbackTrainer, "validate", recording_validate)
    extra = ("--trainer.precision", "bf16-mixed")
    report = promote(config, trained, tmp_path / "deploy", tmp_path / "r", *extra)
    assert precisions == ["bf16-mixed", "bf16-mixed"]  # the config's model, then the candidate
    monkeypatch.setattr(main.FeedbackTrainer, "validate", validate)

    # `validate` of the same export, same precision: the gate's candidate NDCG@10 and MRR@10.
    validated = main.main(
        [
            "validate",
            "--config",
            str(config),
            "--model.init_args.init_from",
            str(trained),
            "--trainer.logger=false",
            *extra,
        ]
    )
    logged = validated.trainer.callback_metrics
    for comparison in report["comparisons"]:
        metric = comparison["metric"]
        assert comparison["candidate"] == pytest.approx(float(logged[f"val/{metric}"]), abs=1e-6)
    assert report["baseline"]["ndcg@10"] == pytest.approx(
        float(logged["val/display/ndcg@10"]), abs=1e-6
    )


def test_the_canary_refuses_a_candidate_that_forgets_and_must_not_be_trained_on(
    tmp_path, tiny_backbone, feedback_file, make_record
):
    """The canary is a second, labelled set: its verdict can refuse a candidate the feedback
    gate would promote, and a canary whose queries are in the training feedback is refused."""
    config = write_reranker_config(tmp_path, tiny_backbone, feedback_file, "bi")
    cli = main.main(["fit", "--config", str(config), "--trainer.max_epochs", "4"])
    trained = Path(cli.trainer.log_dir) / "export"
    canary = tmp_path / "canary.json"
    records = [make_record(1000 + i, n_sources=5, picks=(i % 5,)) for i in range(12)]
    for record in records:  # questions no training record asks
        record["query"] = f"canary question number {record['query'].split()[-1]}"
    canary.write_text(json.dumps({"reranker_data": records}))

    def gate(report: str, margin: str) -> dict:
        canary_args = ("--canary_files", json.dumps([str(canary)]), "--canary_margin", margin)
        return promote(
            config, trained, tmp_path / report / "deploy", tmp_path / report, *canary_args
        )

    # The same candidate, the same canary figures: only the allowed loss differs.
    lenient = gate("lenient", "1.0")  # any loss up to 1.0 NDCG@10 is allowed
    strict = gate("strict", "-1.0")  # it would have to gain 1.0 NDCG@10 on the canary
    assert lenient["promoted"] is True, lenient["reason"]
    assert strict["promoted"] is False and "canary" in strict["reason"]
    assert not (tmp_path / "strict" / "deploy").exists()  # nothing deployed
    for report in (lenient, strict):
        check = report["canary"]
        assert check["n_queries"] == 12 and check["metric"] == "ndcg@10"
        assert check["delta"] == pytest.approx(check["candidate"] - check["deployed"])
    assert lenient["canary"]["candidate"] == strict["canary"]["candidate"]
    # the gate scores with its loggers off: nothing lands in the run's root (the user's folder)
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "samples").exists()
    assert "Canary (" in (tmp_path / "strict" / "promotion_report.md").read_text()

    with pytest.raises(ValueError, match="in the training feedback"):
        promote(
            config,
            trained,
            tmp_path / "overlap" / "deploy",
            tmp_path / "overlap",
            "--canary_files",
            json.dumps([str(feedback_file)]),
        )
