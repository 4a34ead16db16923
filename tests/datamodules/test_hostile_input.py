"""Hostile input, property-based (hypothesis): random JSON and mutated app records must either
parse or fail with the project's own FeedbackError naming the file and the record; nothing else
(KeyError, TypeError, a crash in the tokenizer...) may escape. Plus the caps that keep a
pathological record from costing more than a normal one."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.feedback import FeedbackError, RecordFiltered
from datamodules.reranker import RerankerDataModule
from datamodules.reranker_records import load_reranker_feedback, parse_reranker_record
from datamodules.rewrite_feedback import RewritePair, _parse_any, load_rewriting_data
from datamodules.rewrite_inputs import RewriteCollator, RewriteInputFormat
from lightning_modules.encoding import CrossEncoderInputs
from tests.conftest import make_record

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def app_rewriting_record() -> dict:
    urls = [f"https://example.org/{k}" for k in range(4)]
    return {
        "original_query": "cogs meaning",
        "selected_sources": urls[:2],
        "query_source_mapping": {
            "original query": {"query": "cogs meaning", "sources": urls[1:]},
            "rewrite 1": {
                "query": "what is cost of goods sold",
                "sources": [{"url": u} for u in urls[:3]],
            },
        },
        "query_generator": "t5",
        "timestamp": "2025-07-19T10:00:00",
    }


@st.composite
def mutated(draw, base: dict) -> dict:
    """A valid record with a few random edits: keys deleted, values replaced (anywhere in the
    tree) by random JSON, lists emptied or grown."""
    record = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 4))):
        # walk to a random container
        node = record
        for _ in range(draw(st.integers(0, 3))):
            children = list(node.values()) if isinstance(node, dict) else list(node)
            containers = [c for c in children if isinstance(c, (dict, list)) and c]
            if not containers:
                break
            node = draw(st.sampled_from(containers))
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            continue
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["delete", "replace", "empty", "duplicate"]))
        if action == "delete":
            del node[key]
        elif action == "replace":
            node[key] = draw(json_values)
        elif action == "empty" and isinstance(node[key], (list, dict, str)):
            node[key] = type(node[key])()
        elif action == "duplicate" and isinstance(node, list):
            node.append(node[key])
    return record


def check_reranker(raw) -> None:
    try:
        record = parse_reranker_record(raw, "feedback.json", 7, require_timestamp=True)
    except FeedbackError as error:
        assert str(error).startswith("feedback.json: record 7"), str(error)
        assert error.reason
        return
    # whatever parses is internally consistent
    assert len(record.sources) == len(record.grades) == len(record.judged) > 0
    assert all(g >= 0 for g in record.grades)


def check_rewriter(raw) -> None:
    try:
        pair = _parse_any(raw, "rewrites.json", 3, keep_unchanged=True)
    except RecordFiltered:
        return
    except FeedbackError as error:
        assert str(error).startswith("rewrites.json: record 3"), str(error)
        return
    assert isinstance(pair.source, str) and pair.source.strip()
    assert isinstance(pair.target, str)


@SETTINGS
@given(json_values)
def test_random_json_is_parsed_or_refused_with_a_feedback_error(value):
    check_reranker(value)
    check_rewriter(value)


@SETTINGS
@given(mutated(make_record(3, n_sources=5, picks=(0, 2))))
def test_mutated_reranker_records(record):
    check_reranker(record)


@SETTINGS
@given(mutated(app_rewriting_record()))
def test_mutated_rewriting_records(record):
    check_rewriter(record)


@SETTINGS
@given(mutated({"source": "who won", "target": "who won the cup", "history": ["the cup", "2018"]}))
def test_mutated_pairs(record):
    check_rewriter(record)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([".json", ".jsonl"]))
def test_random_bytes_files_are_reported_not_crashed_on(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"feedback{suffix}"
    path.write_bytes(data)
    for load in (load_reranker_feedback, load_rewriting_data):
        try:
            load(path, on_invalid="skip")
        except FeedbackError as error:
            assert str(path) in str(error)


def test_non_utf8_file_is_named_with_the_offending_byte(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(
        json.dumps({"reranker_data": [make_record(1)]})
        .replace("france", "française é")
        .encode("latin-1")
    )
    with pytest.raises(FeedbackError, match="not UTF-8 text") as caught:
        load_reranker_feedback(path)
    assert str(path) in str(caught.value)


# -- caps -------------------------------------------------------------------------------------


class CountingTokenizer:
    """Wraps a tokenizer and records the longest text it was ever given."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.longest = 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, text, *args, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        if args and not isinstance(args[0], (int, bool)):
            texts += [args[0]] if isinstance(args[0], str) else list(args[0])
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self.tokenizer(text, *args, **kwargs)


def test_huge_snippets_are_clipped_before_tokenisation_and_long_lists_capped(tmp_path, tokenizer):
    record = make_record(1, n_sources=3000, picks=(0, 2500))
    record["all_sources"][1]["snippet"] = "cost " * 2_000_000  # 10 MB
    record["query"] = "what is the cost of sales " * 5000
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(record) + "\n")
    counting = CountingTokenizer(tokenizer)
    dm = RerankerDataModule(val_files=[str(path)], predict_files=[str(path)], eval_batch_size=1)
    dm.input_encoder = CrossEncoderInputs(counting, max_length=48, max_query_length=16)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch.mask.shape == (1, 100)  # the first 100 sources shown
    # each field (title, snippet) is clipped: the 10 MB snippet reaches the tokenizer as 8 KB
    assert counting.longest <= 2 * dm.max_text_chars + len(dm.document_template)
    assert batch.inputs["pairs"]["chunks"][0]["input_ids"].shape[-1] <= 48
    # training samples 16 of them, every positive kept
    dm.setup("predict")
    whole = next(iter(dm.predict_dataloader()))
    assert whole.mask.shape == (1, 3000)  # prediction ranks the whole list


def test_rewriter_clips_huge_texts_and_endless_histories(tokenizer):
    counting = CountingTokenizer(tokenizer)
    collate = RewriteCollator(
        counting, RewriteInputFormat(max_source_tokens=32), 8, max_text_chars=1000
    )
    pair = RewritePair(
        "what is the capital " * 100_000,
        "what is the capital of france",
        history=tuple(f"turn {i} about paris" for i in range(20_000)),
    )
    batch = collate([(0, pair)])
    assert counting.longest <= 1000
    assert batch.input_ids.shape[-1] <= 32
