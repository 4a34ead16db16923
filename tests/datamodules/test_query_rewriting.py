"""Input formatting, history truncation, collation and the split of the query-rewriting data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.query_rewriting import QueryRewritingDataModule
from datamodules.resumable import LengthGroupedSampler
from datamodules.rewrite_feedback import RewritePair
from datamodules.rewrite_inputs import RewriteCollator, RewriteInputFormat, target_end_token_id
from datamodules.split import is_validation_query


def word_counter(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_question_first_layout_puts_newest_turn_next_to_the_question():
    fmt = RewriteInputFormat(task_prefix="rewrite: ", history_separator=" | ")
    history = fmt.select_history("q", ["t1", "t2", "t3"], word_counter)
    assert history == ["t1", "t2", "t3"]
    assert fmt.join("q", history) == "rewrite: q | t3 | t2 | t1"


def test_chronological_layout_ends_with_the_question():
    fmt = RewriteInputFormat(history_separator=" ||| ", history_order="chronological")
    assert fmt.join("q", ["t1", "t2"]) == "t1 ||| t2 ||| q"


def test_max_history_turns_keeps_the_newest():
    fmt = RewriteInputFormat(max_history_turns=2)
    assert fmt.select_history("q", ["t1", "t2", "t3"], word_counter) == ["t2", "t3"]
    assert RewriteInputFormat(max_history_turns=0).select_history("q", ["t1"], word_counter) == []


def test_token_budget_drops_oldest_whole_turns_and_keeps_the_question():
    # budget 12 - 2 spare = 10 tokens: question 3, each separator 1.
    fmt = RewriteInputFormat(max_source_tokens=12, history_separator=" | ")
    question = "a b c"
    history = ["old old old old", "mid mid", "new new new"]
    kept = fmt.select_history(question, history, word_counter)
    # new (3+1) + mid (2+1) = 7 <= 7 left; old (4+1) does not fit.
    assert kept == ["mid mid", "new new new"]
    assert fmt.join(question, kept).startswith(question)


def test_a_turn_that_does_not_fit_stops_older_ones_too():
    # Older turns never jump over a newer one that did not fit: context stays contiguous.
    fmt = RewriteInputFormat(max_source_tokens=10, history_separator=" | ")
    kept = fmt.select_history("q", ["x", "too long for the budget here", "y"], word_counter)
    assert kept == ["y"]


def test_blank_turns_are_ignored():
    fmt = RewriteInputFormat()
    assert fmt.select_history("q", ["  ", "t"], word_counter) == ["t"]


@pytest.mark.parametrize(
    "kwargs",
    [{"history_order": "sideways"}, {"max_history_turns": -1}, {"max_source_tokens": 0}],
)
def test_bad_input_format_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RewriteInputFormat(**kwargs)


def test_collator_pads_labels_with_minus_100_and_ends_targets(tokenizer):
    collate = RewriteCollator(tokenizer, RewriteInputFormat(task_prefix="rewrite : "), 8)
    pairs = [
        RewritePair("what is the capital", "what is the capital of france", ("france",)),
        RewritePair("who", "who is the president", ()),
    ]
    batch = collate(list(enumerate(pairs)))
    end = target_end_token_id(tokenizer)
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert batch.input_ids.shape[0] == 2
    # Dynamic padding: as long as the longest input, no longer.
    assert batch.attention_mask.sum(1).max() == batch.input_ids.shape[1]
    first = tokenizer.decode(batch.input_ids[0], skip_special_tokens=True)
    assert first.startswith("rewrite : what is the capital")
    assert first.endswith("france")
    for row, pair in enumerate(pairs):
        labels = batch.labels[row]
        real = labels[labels != -100].tolist()
        expected = tokenizer(pair.target, add_special_tokens=False)["input_ids"] + [end]
        assert real == expected
        assert (labels[len(real) :] == -100).all()
    assert batch.sources == ["what is the capital", "who"]
    assert batch.indices == [0, 1]


def test_collator_truncates_long_targets_but_keeps_the_end_token(tokenizer):
    collate = RewriteCollator(tokenizer, RewriteInputFormat(), max_target_tokens=4)
    batch = collate([(0, RewritePair("q", "the a of and to in is what"))])
    assert batch.labels.shape == (1, 4)
    assert batch.labels[0, -1].item() == target_end_token_id(tokenizer)


def test_collator_without_targets_gives_no_labels(tokenizer):
    collate = RewriteCollator(tokenizer, RewriteInputFormat(), 8)
    batch = collate([(0, RewritePair("what", None))])
    assert batch.labels is None


def test_length_grouped_sampler_is_a_permutation_with_similar_lengths_together():
    lengths = [(i * 37) % 100 for i in range(200)]
    sampler = LengthGroupedSampler(lengths, batch_size=10, window_batches=20)
    order = list(sampler)
    assert sorted(order) == list(range(200))
    spreads = [
        max(lengths[i] for i in order[k : k + 10]) - min(lengths[i] for i in order[k : k + 10])
        for k in range(0, 200, 10)
    ]
    assert max(spreads) < 20  # a random batch spans ~90
    sampler.set_epoch(1)  # Lightning calls this at every epoch start
    assert list(sampler) != order  # reshuffled every epoch
    sampler.set_epoch(0)
    assert list(sampler) == order  # ...as a function of (seed, epoch) only


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def test_split_is_by_question_hash_and_val_subset_is_stable(tmp_path, tokenizer):
    pairs = [{"source": f"question {i}", "target": f"rewrite {i}"} for i in range(300)]
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)

    def setup(**kwargs):
        dm = QueryRewritingDataModule(train_files=[str(path)], validation_fraction=0.3, **kwargs)
        dm.input_encoder = tokenizer
        dm.setup("fit")
        return dm

    dm = setup()
    val = {p.source for p in dm.val_pairs}
    assert val == {p["source"] for p in pairs if is_validation_query(p["source"], 0.3)}
    assert not val & {p.source for p in dm.train_pairs}
    assert len(dm.train_pairs) + len(dm.val_pairs) == 300
    capped = setup(max_val_pairs=20)
    assert len(capped.val_pairs) == 20
    assert {p.source for p in capped.val_pairs} <= val
    assert [p.source for p in setup(max_val_pairs=20).val_pairs] == [
        p.source for p in capped.val_pairs
    ]
    batch = next(iter(dm.train_dataloader()))
    assert batch.labels is not None


def test_explicit_val_files_remove_their_questions_from_training(tmp_path, tokenizer):
    train = write_pairs(
        tmp_path / "train.jsonl",
        [{"source": "Shared Question", "target": "t"}, {"source": "only train", "target": "t"}],
    )
    val = write_pairs(tmp_path / "val.jsonl", [{"source": "shared  question", "target": "t"}])
    dm = QueryRewritingDataModule(train_files=[str(train)], val_files=[str(val)])
    dm.input_encoder = tokenizer
    dm.setup("fit")
    assert [p.source for p in dm.train_pairs] == ["only train"]
    assert [p.source for p in dm.val_pairs] == ["shared  question"]


def test_predict_reads_questions_without_targets(tmp_path, tokenizer):
    path = write_pairs(
        tmp_path / "ask.jsonl", [{"source": "who", "history": ["a"]}, {"source": "what"}]
    )
    dm = QueryRewritingDataModule(predict_files=[str(path)])
    dm.input_encoder = tokenizer
    dm.setup("predict")
    assert [(p.source, p.target, p.history) for p in dm.predict_pairs] == [
        ("who", None, ("a",)),
        ("what", None, ()),
    ]


def test_datamodule_without_a_model_tokenizer_says_what_is_missing():
    dm = QueryRewritingDataModule(train_files=["x.jsonl"])
    with pytest.raises(RuntimeError, match="tokenizer"):
        dm.setup("fit")


def test_a_session_stays_on_one_side_of_the_split(tmp_path, tokenizer):
    pairs = [
        {"source": f"question {i}", "target": f"rewrite {i}", "session_id": f"s{i // 5}"}
        for i in range(200)
    ]
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    dm = QueryRewritingDataModule(train_files=[str(path)], validation_fraction=0.3)
    dm.input_encoder = tokenizer
    dm.setup("fit")
    val_sessions = {p.session_id for p in dm.val_pairs}
    train_sessions = {p.session_id for p in dm.train_pairs}
    assert val_sessions and train_sessions and not val_sessions & train_sessions
    assert len(val_sessions) + len(train_sessions) == 40
