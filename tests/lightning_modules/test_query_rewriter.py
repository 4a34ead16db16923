"""The seq2seq rewriter: metrics against sacrebleu, models built offline, export round trips."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import sacrebleu
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5ForConditionalGeneration

from datamodules.rewrite_feedback import RewritePair
from datamodules.rewrite_inputs import RewriteCollator, RewriteInputFormat
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.query_rewriter import QueryRewriter, RewriteMetrics
from lightning_modules.rewriter_inference import (
    ExportedQueryRewriter,
    RewriteVariations,
    content_terms,
    select_variations,
)
from tests.conftest import TINY_T5, generated_ids

HYPOTHESES = [
    "when did Frank Zappa disband the Mothers of Invention?",
    "what kind of music did they play",
    "Why did the band break up?",
    "who produced the album",
]
REFERENCES = [
    "When did Frank Zappa disband the Mothers of Invention?",
    "What kind of music did the Mothers of Invention play?",
    "Why did the band break up?",
    "Who produced the album Hot Rats?",
]


def test_bleu_and_chrf_match_sacrebleu_on_a_hand_made_corpus():
    metrics = RewriteMetrics()
    metrics.update(HYPOTHESES[:2], REFERENCES[:2])  # corpus statistics accumulate over batches
    metrics.update(HYPOTHESES[2:], REFERENCES[2:])
    values = metrics.compute()
    bleu = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    chrf = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score
    assert values["bleu"].item() == pytest.approx(bleu, abs=1e-3)
    assert values["chrf"].item() == pytest.approx(chrf, abs=1e-2)  # float32 statistics
    # Exact match ignores case and spacing only: 2 of 4 ("When..." and "Why...").
    assert values["exact_match"].item() == pytest.approx(0.5)


def test_bleu_is_cased_like_sacrebleu_default():
    # (Every n-gram order matches at least once here, as on any real validation set; sacrebleu's
    # default "exp" smoothing only changes corpora without a single matching 4-gram.)
    hypothesis = "who produced the album and who sang on hot rats"
    reference = "Who produced the album and who sang on Hot Rats"
    metrics = RewriteMetrics()
    metrics.update([hypothesis], [reference])
    cased = sacrebleu.corpus_bleu([hypothesis], [[reference]]).score
    assert metrics.compute()["bleu"].item() == pytest.approx(cased, abs=1e-3)
    assert cased < sacrebleu.corpus_bleu([hypothesis], [[reference]], lowercase=True).score


def test_reset_forgets_the_previous_epoch():
    metrics = RewriteMetrics()
    metrics.update(["a b c d e"], ["x y z w v"])
    metrics.reset()
    metrics.update(["a b c d e"], ["a b c d e"])
    assert metrics.compute()["bleu"].item() == pytest.approx(100.0)


def tiny_t5(backbone, **kwargs) -> QueryRewriter:
    torch.manual_seed(0)
    return QueryRewriter(
        model_name_or_path=str(backbone),
        init="t5_config",
        t5_config=TINY_T5,
        **{"num_beams": 2, "max_new_tokens": 12, **kwargs},
    )


def batch_of(module: QueryRewriter, pairs: list[RewritePair]):
    collate = RewriteCollator(module.tokenizer, RewriteInputFormat(max_source_tokens=32), 16)
    return collate(list(enumerate(pairs)))


PAIRS = [
    RewritePair("what is the capital", "what is the capital of france", ("france",)),
    RewritePair("who is the president", "who is the president of germany", ("germany",)),
]


def test_t5_from_config_uses_the_tokenizer_and_learns_a_batch(tiny_backbone):
    module = tiny_t5(tiny_backbone, learning_rate=1e-2)
    assert isinstance(module.model, T5ForConditionalGeneration)
    assert module.model.config.vocab_size == len(module.tokenizer)
    batch = batch_of(module, PAIRS)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    first = module(batch).item()
    for _ in range(60):
        optimizer.zero_grad()
        module(batch).backward()
        optimizer.step()
    assert module(batch).item() < 0.1 * first
    module.eval()
    assert module.rewrite(batch) == [p.target for p in PAIRS]


@pytest.mark.parametrize("init", ["t5_config", "encoder_decoder"])
def test_loss_is_the_models_own_cross_entropy(tiny_backbone, init):
    # The module builds decoder inputs itself; the loss must equal transformers' own.
    torch.manual_seed(0)
    module = QueryRewriter(
        model_name_or_path=str(tiny_backbone),
        init=init,
        t5_config=TINY_T5 if init == "t5_config" else None,
    ).eval()
    batch = batch_of(module, PAIRS)
    reference = module.model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
    ).loss
    assert module(batch).item() == pytest.approx(reference.item(), rel=1e-5)


def test_vocab_smaller_than_the_tokenizer_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="vocab_size"):
        QueryRewriter(
            model_name_or_path=str(tiny_backbone),
            init="t5_config",
            t5_config={**TINY_T5, "vocab_size": 10},
        )


def test_encoder_decoder_warm_starts_both_sides_from_the_backbone(tiny_backbone):
    from transformers import AutoModel

    module = QueryRewriter(
        model_name_or_path=str(tiny_backbone), init="encoder_decoder", decoder_num_layers=1
    )
    backbone = AutoModel.from_pretrained(tiny_backbone)
    encoder = module.model.encoder
    assert torch.equal(
        encoder.embeddings.word_embeddings.weight, backbone.embeddings.word_embeddings.weight
    )
    decoder_layers = module.model.decoder.bert.encoder.layer
    assert len(decoder_layers) == 1
    assert torch.equal(
        decoder_layers[0].attention.self.query.weight,
        backbone.encoder.layer[0].attention.self.query.weight,
    )
    assert module.model.config.decoder_start_token_id == module.tokenizer.cls_token_id
    # Cross-attention starts as the layer's own pretrained self-attention, not random.
    layer = decoder_layers[0]
    for name, value in layer.attention.state_dict().items():
        assert torch.equal(layer.crossattention.state_dict()[name], value), name
    loss = module(batch_of(module, PAIRS))
    assert torch.isfinite(loss)


def test_random_cross_attention_is_left_as_transformers_makes_it(tiny_backbone):
    module = QueryRewriter(
        model_name_or_path=str(tiny_backbone),
        init="encoder_decoder",
        cross_attention_init="random",
    )
    layer = module.model.decoder.bert.encoder.layer[0]
    assert not torch.equal(
        layer.crossattention.self.query.weight, layer.attention.self.query.weight
    )


@pytest.mark.parametrize("init", ["t5_config", "encoder_decoder"])
def test_export_reloads_with_auto_classes_and_generates_the_same_text(
    tmp_path, tiny_backbone, init
):
    torch.manual_seed(0)
    module = QueryRewriter(
        model_name_or_path=str(tiny_backbone),
        init=init,
        t5_config=TINY_T5 if init == "t5_config" else None,
        num_beams=3,
        max_new_tokens=10,
        repetition_penalty=1.3,
        union_sizes=(1, 3),  # no more variations than beams: the beams stay as configured
        variation_method="beams",
    ).eval()
    batch = batch_of(module, PAIRS)
    expected = generated_ids(module, batch)
    folder = module.export(tmp_path / "export")

    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.generation_config.num_beams == 3
    assert model.generation_config.repetition_penalty == pytest.approx(1.3)
    inputs = tokenizer(
        [RewriteInputFormat().join(p.source, list(p.history)) for p in PAIRS],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        reloaded = model.generate(**inputs)  # the saved generation config, nothing passed
    assert reloaded.tolist() == expected
    metadata = json.loads((folder / EXPORT_METADATA_FILE).read_text())
    assert metadata["init"] == init
    assert metadata["postprocess"] == "restore_surface"  # the tiny tokenizer lowercases


def test_export_refuses_to_replace_an_existing_folder(tmp_path, tiny_backbone):
    module = tiny_t5(tiny_backbone)
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        module.export(target)
    assert (target / "keep.txt").read_text() == "user data"


def test_predict_returns_distinct_rewrites_best_first(tiny_backbone):
    module = tiny_t5(
        tiny_backbone, num_return_sequences=3, num_beams=3, variation_method="beams"
    ).eval()
    batch = batch_of(module, PAIRS)
    out = module.predict_step(batch, 0)
    assert [o["index"] for o in out] == [0, 1]
    # one beam search serves every n validation judges (union_sizes up to 5): 5 beams
    width = module.model.generation_config.num_beams
    assert width == 5
    # Best first: beam search returns its beams by score, and the rewrites keep that order.
    scored = module.model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        num_beams=width,
        num_return_sequences=width,
        output_scores=True,
        return_dict_in_generate=True,
    )
    scores = scored.sequences_scores.view(len(PAIRS), width)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for row, item in enumerate(out):
        assert 1 <= len(item["rewrites"]) <= 3
        assert len(set(item["rewrites"])) == len(item["rewrites"])
        beams = [
            module.restorer.restore(ids, batch.histories[row], batch.sources[row])
            for ids in scored.sequences[row * width : (row + 1) * width].tolist()
        ]
        # the best beam (the question where it is empty), then the next distinct ones
        best = beams[0] or batch.sources[row]
        expected = [best] + [b for b in dict.fromkeys(beams[1:]) if b and b != best]
        assert item["rewrites"] == expected[:3]
        # the first n variations are a prefix of the first n + 1
        assert module.rewrites(batch, 5)[row][:3] == item["rewrites"]
    # the best rewrite does not depend on how many are asked for (validation's BLEU and the
    # app's first variation are the same text)
    assert [r[0] for r in module.rewrites(batch, 3)] == module.rewrite(batch)


@pytest.mark.parametrize("history_order", ["question_first", "chronological"])
def test_exported_rewriter_gives_exactly_what_predict_gives(tmp_path, tiny_backbone, history_order):
    """The app's loader and ``predict`` share one path: the same inputs (format, history budget,
    clipping of long texts) and the same decoding and respelling, so the same rewrites."""
    module = tiny_t5(tiny_backbone, num_return_sequences=3, num_beams=3).eval()
    input_format = RewriteInputFormat(
        task_prefix="rewrite : ", history_order=history_order, max_source_tokens=24
    )
    # A short clip: the long question and turn are cut before tokenisation, on both sides.
    data = SimpleNamespace(input_format=input_format, max_text_chars=30)
    pairs = [
        *PAIRS,
        RewritePair("what about the Mothers of Invention band", None, ("Frank Zappa", "music")),
        RewritePair("why " * 40 + "did they split", None, ("the Beatles " * 20, "Abbey Road")),
        RewritePair("and the capital?", None, ()),
    ]
    collate = RewriteCollator(module.tokenizer, input_format, 16, max_text_chars=30)
    expected = [o["rewrites"] for o in module.predict_step(collate(list(enumerate(pairs))), 0)]
    folder = module.export(tmp_path / "export", datamodule=data)

    card = (folder / "README.md").read_text()  # the model card
    assert "ExportedQueryRewriter" in card and '"task_prefix": "rewrite : "' in card
    assert "token cross-entropy" in card and "not recorded" in card

    rewriter = ExportedQueryRewriter(folder)
    questions = [p.source for p in pairs]
    histories = [list(p.history) for p in pairs]
    assert rewriter.rewrite(questions, histories, n=3, batch_size=2) == expected
    assert rewriter.input_text(questions[3], histories[3]) == collate.source_text(pairs[3])
    assert len(rewriter.input_text(questions[3], histories[3])) < 120  # clipped
    with pytest.raises(ValueError, match="5 questions but 1 histories"):
        rewriter.rewrite(questions, histories[:1])


@pytest.mark.parametrize(
    ("init", "dropout", "expected"),
    [
        ("encoder_decoder", None, False),  # from_pretrained: eval mode, as transformers leaves it
        ("encoder_decoder", True, True),
        ("t5_config", None, True),  # built from a config: train mode
        ("t5_config", False, False),
    ],
)
def test_dropout_mode_in_training(tiny_backbone, init, dropout, expected):
    module = QueryRewriter(
        model_name_or_path=str(tiny_backbone),
        init=init,
        t5_config=TINY_T5 if init == "t5_config" else None,
        dropout=dropout,
    )
    modes = {m.training for m in module.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert modes == {expected}


def test_unused_encoder_pooler_is_frozen(tiny_backbone):
    """DDP refuses parameters without gradients: the BERT pooler feeds nothing here."""
    module = QueryRewriter(model_name_or_path=str(tiny_backbone), init="encoder_decoder")
    assert not any(p.requires_grad for p in module.model.encoder.pooler.parameters())
    batch = batch_of(module, PAIRS)
    module(batch).backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [
        n for n, p in trainable if p.grad is None
    ]


def test_a_rewriter_below_copying_is_flagged(tiny_backbone, caplog):
    module = tiny_t5(tiny_backbone)
    module.metrics["val_model"].update(["a b"], ["the capital of france is paris"])
    module.metrics["val_copy"].update(["the capital of france"], ["the capital of france is paris"])
    with caplog.at_level("WARNING"):
        module.evaluation_epoch_end("val")
    assert "below the copy baseline" in caplog.text


def test_nothing_usable_generated_falls_back_to_the_question(tiny_backbone):
    module = tiny_t5(tiny_backbone, max_new_tokens=1).eval()
    # One new token at most, and it is the end token: every rewrite would be empty.
    module.model.generation_config.forced_eos_token_id = module.model.generation_config.eos_token_id
    module.model.generation_config.max_new_tokens = 1
    batch = batch_of(module, PAIRS)
    assert module.rewrite(batch) == [p.source for p in PAIRS]


def test_the_apps_rewriter_loader_needs_no_lightning():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; import lightning_modules.rewriter_inference; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def candidate_record(index: int, original: str, better: str):
    """An app record where ``better`` found two of the three picks and ``original`` one."""
    from datamodules.rewrite_feedback import parse_rewriting_record

    urls = [f"u/{index}/{k}" for k in range(4)]
    raw = {
        "original_query": original,
        "selected_sources": urls[:3],
        "query_source_mapping": {
            "original query": {"query": original, "sources": [urls[2], urls[3]]},
            "rewrite 1": {"query": better, "sources": urls[:2]},
            "again": {"query": better.upper(), "sources": []},  # the same query: kept once
        },
    }
    return parse_rewriting_record(raw, "log.json", index)


def candidate_pairs() -> list[RewritePair]:
    records = [
        candidate_record(0, "what is the capital", "what is the capital of france"),
        candidate_record(1, "who is the president", "who is the president of germany"),
    ]
    out = [RewritePair(r.original_query, r.candidates[1].query, record=r) for r in records]
    return [*out, RewritePair("plain pair", "a plain pair")]  # no record: its target alone


def test_candidates_are_each_records_queries_graded_by_the_picks_they_found(tiny_backbone):
    from datamodules.rewrite_feedback import candidate_coverages

    record = candidate_pairs()[0].record
    assert candidate_coverages(record) == [
        ("what is the capital", 1),
        ("what is the capital of france", 2),
    ]
    module = tiny_t5(tiny_backbone)
    collate = RewriteCollator(
        module.tokenizer, RewriteInputFormat(max_source_tokens=32), 16, with_candidates=True
    )
    batch = collate(list(enumerate(candidate_pairs())))
    assert batch.candidate_labels.shape[:2] == (3, 2)
    assert batch.candidate_mask.tolist() == [[True, True], [True, True], [True, False]]
    assert batch.candidate_grades.tolist() == [[1.0, 2.0], [1.0, 2.0], [1.0, 0.0]]
    # each candidate's labels are what the target labels of that text would be
    alone = collate.labels(["what is the capital of france"])[0]
    row = batch.candidate_labels[0, 1]
    assert torch.equal(row[row != -100], alone[alone != -100])
    # evaluation batches (no with_candidates) carry none
    assert batch_of(module, PAIRS).candidate_labels is None


def test_candidate_scores_are_the_models_own_mean_token_log_likelihood(tiny_backbone):
    module = tiny_t5(tiny_backbone).eval()
    collate = RewriteCollator(
        module.tokenizer, RewriteInputFormat(max_source_tokens=32), 16, with_candidates=True
    )
    batch = collate(list(enumerate(candidate_pairs())))
    with torch.no_grad():
        scores = module.candidate_scores(batch)
        for row in range(3):
            for slot in range(2):
                if not batch.candidate_mask[row, slot]:
                    continue
                labels = batch.candidate_labels[row, slot]
                labels = labels[labels != -100].unsqueeze(0)
                reference = module.model(  # transformers' own loss: mean token cross-entropy
                    input_ids=batch.input_ids[row : row + 1],
                    attention_mask=batch.attention_mask[row : row + 1],
                    labels=labels,
                ).loss
                assert scores[row, slot].item() == pytest.approx(-reference.item(), abs=1e-5)


def test_the_candidate_loss_teaches_the_better_candidate(tiny_backbone):
    """The mined target is the *worse* candidate here (the question itself): trained on it
    alone, the model learns to prefer it; the candidate loss pulls towards the better one."""
    from lightning_modules.losses import SoftmaxCrossEntropyLoss

    pairs = [RewritePair(p.source, p.source, record=p.record) for p in candidate_pairs()[:2]]

    def margin_after_training(**kwargs) -> float:
        module = tiny_t5(tiny_backbone, **kwargs)
        collate = RewriteCollator(
            module.tokenizer, RewriteInputFormat(max_source_tokens=32), 16, with_candidates=True
        )
        batch = collate(list(enumerate(pairs)))
        optimizer = torch.optim.Adam(module.model.parameters(), lr=3e-3)
        module.train()
        for _ in range(30):
            optimizer.zero_grad()
            module.training_step(batch, 0).backward()
            optimizer.step()
        module.eval()
        with torch.no_grad():
            scores = module.candidate_scores(batch)
        return float((scores[:, 1] - scores[:, 0]).mean())  # better minus worse

    target_only = margin_after_training()
    with_candidates = margin_after_training(
        candidate_loss=SoftmaxCrossEntropyLoss(), candidate_loss_weight=5.0
    )
    assert target_only < 0  # it learnt the mined target
    assert with_candidates > target_only + 0.5
    module = tiny_t5(tiny_backbone, candidate_loss=SoftmaxCrossEntropyLoss())
    assert "SoftmaxCrossEntropyLoss over the logged candidates" in module.loss_name()


# -- several variations (the app searches with each) ---------------------------------------


def test_content_terms_leave_out_function_words():
    assert content_terms("What is the Capital of France?") == {"capital", "france"}


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        # the next distinct non-empty beams
        ("beams", ["capital of france", "the capital of france", "capital city of france"]),
        # each next one adds the most new content words: "city" (1, the better beam of a tie
        # with "paris"), then "paris" (1; "the capital of france" adds none)
        ("novel_terms", ["capital of france", "capital city of france", "paris france capital"]),
    ],
)
def test_variations_are_chosen_as_the_method_says(method, expected):
    texts = [
        "capital of france",
        "the capital of france",
        "",
        "capital of france",
        "capital city of france",
        "paris france capital",
    ]
    assert select_variations(texts, "question", 3, method) == expected
    assert select_variations(texts, "question", 1, method) == ["capital of france"]
    # an empty best beam: the question itself is the first variation
    assert select_variations(["", "a b"], "the question", 2, method) == ["the question", "a b"]


def test_bad_variation_settings_are_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        RewriteVariations("diverse")
    with pytest.raises(ValueError, match="top_p"):
        RewriteVariations("sampling", top_p=0.0)


def test_novel_term_variations_come_from_one_wider_beam_search(tiny_backbone):
    module = tiny_t5(
        tiny_backbone, num_beams=2, variation_method="novel_terms", variation_pool=6
    ).eval()
    assert module.model.generation_config.num_beams == 6
    batch = batch_of(module, PAIRS)
    five = module.rewrites(batch, 5)
    generated = module.model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, num_return_sequences=6
    )
    for row, rewrites in enumerate(five):
        beams = [
            module.restorer.restore(ids, batch.histories[row], batch.sources[row])
            for ids in generated[row * 6 : (row + 1) * 6].tolist()
        ]
        assert rewrites == select_variations(beams, batch.sources[row], 5, "novel_terms")
        assert module.rewrites(batch, 2)[row] == rewrites[:2]


def test_sampled_variations_are_seeded_and_leave_the_random_state_alone(tiny_backbone):
    module = tiny_t5(tiny_backbone, variation_method="sampling", variation_pool=8).eval()
    batch = batch_of(module, PAIRS)
    state = torch.get_rng_state()
    first = module.rewrites(batch, 4)
    assert torch.equal(torch.get_rng_state(), state)  # training's random draws are unchanged
    assert module.rewrites(batch, 4) == first  # the same rewrites on every call
    # the first is the best beam, whatever the samples
    assert [r[0] for r in first] == module.rewrite(batch)
    beams_only = tiny_t5(tiny_backbone, variation_method="beams").eval()
    assert [r[0] for r in first] == beams_only.rewrite(batch)
    assert any(len(r) > 1 for r in first)


@pytest.mark.parametrize("method", ["novel_terms", "sampling"])
def test_the_apps_loader_chooses_variations_as_training_did(tmp_path, tiny_backbone, method):
    module = tiny_t5(
        tiny_backbone, variation_method=method, variation_pool=6, num_return_sequences=4
    ).eval()
    batch = batch_of(module, PAIRS)
    expected = module.rewrites(batch, 4)
    folder = module.export(tmp_path / "export", datamodule=None)
    rewriter = ExportedQueryRewriter(folder)
    assert rewriter.variations == module.variations
    questions, histories = [p.source for p in PAIRS], [list(p.history) for p in PAIRS]
    got = rewriter.rewrite(questions, histories, n=None)  # the export's num_return_sequences
    assert got == expected
