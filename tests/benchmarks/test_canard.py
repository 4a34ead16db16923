"""Tests of benchmarks/canard.py on tiny hand-made data: no shared data, a tiny exported model."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch

from tests.conftest import load_benchmark

# end-to-end: whole fits, subprocesses or benchmark runs (the slow tier; CI runs every tier)
pytestmark = pytest.mark.slow

canard = load_benchmark("canard")

DEV = [
    {
        "History": ["Frank Zappa", "Disbandment", "What group disbanded?", "The Mothers"],
        "Question": "When did they disband?",
        "Rewrite": "When did the Mothers disband?",
    },
    {
        "History": ["Paris", "", "What is it?", "A city", "Where is it?", "France"],
        "Question": "How big is it?",
        "Rewrite": "How big is Paris?",
    },
]


def test_dev_history_modes():
    assert canard.dev_history(DEV[0], "title_questions") == ["Frank Zappa", "What group disbanded?"]
    assert canard.dev_history(DEV[0], "questions") == ["What group disbanded?"]
    assert canard.dev_history(DEV[0], "full") == DEV[0]["History"]
    # Empty section titles are dropped from the full history.
    assert canard.dev_history(DEV[1], "full") == [
        "Paris",
        "What is it?",
        "A city",
        "Where is it?",
        "France",
    ]
    assert canard.dev_history(DEV[1], "title_questions") == ["Paris", "What is it?", "Where is it?"]
    with pytest.raises(ValueError, match="unknown dev history"):
        canard.dev_history(DEV[0], "answers")


def test_corpus_scores_are_sacrebleu_and_normalised_exact_match():
    hyps = ["when did the mothers disband?", "How big is Paris?"]
    refs = [row["Rewrite"] for row in DEV]
    scores = canard.corpus_scores(hyps, refs)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=0.01)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=0.01)
    assert scores["exact_match"] == 1.0  # case-insensitive


def test_load_dev_names_a_missing_field(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([DEV[0], {"History": [], "Question": "q"}]))
    with pytest.raises(ValueError, match=r"record 1: field 'Rewrite'"):
        canard.load_dev(path)
    path.write_text(json.dumps(DEV))
    assert len(canard.load_dev(path, max_dev=1)) == 1


def test_evaluate_an_export_reports_the_copy_baseline_on_the_same_rows(tmp_path, tiny_backbone):
    from lightning_modules.query_rewriter import QueryRewriter

    torch.manual_seed(0)
    module = QueryRewriter(
        model_name_or_path=str(tiny_backbone),
        init="t5_config",
        t5_config={"d_model": 16, "d_ff": 32, "d_kv": 4, "num_heads": 2, "num_layers": 1},
        num_beams=1,
        max_new_tokens=6,
    )
    export = module.export(tmp_path / "export")
    results, samples = canard.evaluate(export, DEV, ["title_questions", "full"], batch_size=2)
    copy = sacrebleu.corpus_bleu([r["Question"] for r in DEV], [[r["Rewrite"] for r in DEV]])
    assert results["copy"]["bleu"] == pytest.approx(copy.score, abs=0.01)
    assert set(results) == {"copy", "title_questions", "full"}
    assert [s["question"] for s in samples["full"]] == [r["Question"] for r in DEV]


class EchoRewriter:
    """Rewrites a question as itself plus its history, so a test sees what history it got."""

    def __init__(self):
        self.calls = []

    def rewrite(self, questions, histories, batch_size=32):
        self.calls.append(len(questions))
        return [[f"{q} <{' / '.join(h)}>"] for q, h in zip(questions, histories, strict=True)]


def test_dialogs_are_rewritten_turn_by_turn_with_their_own_earlier_rewrites():
    rewriter = EchoRewriter()
    own = canard.rewrite_dialogs(rewriter, [(["Zappa"], ["q1", "q2"]), ([], ["r1"])], 8)
    assert own == [["q1 <Zappa>", "q2 <Zappa / q1 <Zappa>>"], ["r1 <>"]]
    assert rewriter.calls == [2, 1]  # turn 0 of both dialogs in one batch, then turn 1


def test_dev_dialogs_group_rows_in_turn_order():
    dev = [
        {"QuAC_dialog_id": "b", "Question_no": 2},
        {"QuAC_dialog_id": "a", "Question_no": 1},
        {"QuAC_dialog_id": "b", "Question_no": 1},
    ]
    assert canard.dev_dialogs(dev) == [[2, 0], [1]]
    assert canard.dev_history(DEV[0], "title_rewrites") == ["Frank Zappa"]


def test_held_out_train_dialogs_are_the_fits_validation_sessions():
    from datamodules.query_rewriting import QueryRewritingDataModule

    rows = [
        {"split": "train", "dialog_id": f"d{d}", "turn": t, "question": f"q{d} {t}",
         "rewrite": f"r{d} {t}", "prev_questions": [], "prev_rewrites": []}
        for d in range(60)
        for t in (1, 0)
    ]  # fmt: skip
    dialogs = canard.held_out_train_dialogs(rows, 0.2)
    assert dialogs and all([r["turn"] for r in d] == [0, 1] for d in dialogs)
    # the same sessions the data module holds out of the fit
    from datamodules.rewrite_feedback import RewritePair

    pairs = [RewritePair(r["question"], r["rewrite"], session_id=r["dialog_id"]) for r in rows]
    dm = QueryRewritingDataModule(train_files=[], validation_fraction=0.2)
    dm.split_fit(pairs)
    assert {p.session_id for p in dm.val_pairs} == {d[0]["dialog_id"] for d in dialogs}


def test_cast_is_scored_with_the_title_and_earlier_raw_utterances(tmp_path, monkeypatch):
    import lightning_modules.rewriter_inference as inference

    rows = [
        {"year": 2019, "raw": "what is it?", "rewrite": "what is a physician assistant?",
         "history_raw": [], "title": "Physician assistant"},
        {"year": 2021, "raw": "how much does it cost?", "rewrite": "how much does a PA cost?",
         "history_raw": ["what is a PA?"]},
    ]  # fmt: skip
    path = tmp_path / "cast.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    echo = EchoRewriter()
    monkeypatch.setattr(inference, "ExportedQueryRewriter", lambda folder: echo)
    out = canard.evaluate_cast(tmp_path, path, batch_size=4)
    raw, refs = [r["raw"] for r in rows], [[r["rewrite"] for r in rows]]
    assert out["copy"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(raw, refs).score, abs=0.01)
    hyps = ["what is it? <Physician assistant>", "how much does it cost? <what is a PA?>"]
    assert out["model"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, abs=0.01)
    assert set(out["by_year"]) == {"2019", "2021"} and out["utterances"] == 2
    path.write_text(json.dumps({"year": 2019, "raw": "x", "history_raw": []}) + "\n")
    with pytest.raises(ValueError, match="record 0: field 'rewrite'"):
        canard.evaluate_cast(tmp_path, path, batch_size=4)
