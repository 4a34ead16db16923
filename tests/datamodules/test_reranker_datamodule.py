"""Listwise batches: split by query, shapes and masks, sampling, truncation, tokenisation."""

from __future__ import annotations

import json

import torch

from datamodules.reranker import RerankerDataModule
from datamodules.split import normalise_query
from lightning_modules.encoding import BiEncoderInputs, CrossEncoderInputs, unchunk


def make_datamodule(files, tokenizer, *, cross=True, **kwargs) -> RerankerDataModule:
    dm = RerankerDataModule(train_files=[str(f) for f in files], **kwargs)
    encoder_type = CrossEncoderInputs if cross else BiEncoderInputs
    dm.input_encoder = encoder_type(tokenizer, max_length=48, max_query_length=16, chunk_size=4)
    return dm


def test_split_is_by_query_and_deterministic(feedback_file, tokenizer, tmp_path, make_record):
    dm = make_datamodule([feedback_file], tokenizer, validation_fraction=0.3)
    dm.setup("fit")
    train = {normalise_query(r.query) for r in dm.train_records}
    val = {normalise_query(r.query) for r in dm.val_records}
    assert train and val and not train & val
    again = make_datamodule([feedback_file], tokenizer, validation_fraction=0.3)
    again.setup("fit")
    assert [r.query for r in again.val_records] == [r.query for r in dm.val_records]

    # More data later: every old validation query is still in validation.
    grown = tmp_path / "more.json"
    grown.write_text(json.dumps({"reranker_data": [make_record(i) for i in range(100, 160)]}))
    bigger = make_datamodule([feedback_file, grown], tokenizer, validation_fraction=0.3)
    bigger.setup("fit")
    assert val <= {normalise_query(r.query) for r in bigger.val_records}


def test_training_keeps_only_lists_with_contrast(feedback_file, tokenizer):
    dm = make_datamodule([feedback_file], tokenizer, validation_fraction=0.0)
    dm.setup("fit")
    assert all(r.has_contrast for r in dm.train_records)
    assert len(dm.train_records) == 40  # the record without a pick is left out of training
    keep_all = make_datamodule(
        [feedback_file], tokenizer, validation_fraction=0.0, train_on_uniform_lists=True
    )
    keep_all.setup("fit")
    assert len(keep_all.train_records) == 41


def test_explicit_validation_files_remove_leaking_queries(feedback_file, tokenizer, tmp_path):
    records = json.loads(feedback_file.read_text())["reranker_data"]
    val_file = tmp_path / "val.json"
    val_file.write_text(json.dumps({"reranker_data": records[:5]}))
    dm = make_datamodule([feedback_file], tokenizer, val_files=[str(val_file)])
    dm.setup("fit")
    assert len(dm.val_records) == 5
    held_out = {r["query"] for r in records[:5]}
    assert not held_out & {r.query for r in dm.train_records}


def test_validation_batches_keep_whole_lists(feedback_file, tokenizer):
    dm = make_datamodule([feedback_file], tokenizer, validation_fraction=0.5, eval_batch_size=4)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    assert sum(b.labels.shape[0] for b in batches) == len(dm.val_records)
    for batch in batches:
        rows = [dm.val_records[i] for i in batch.record_index.tolist()]
        widths = [len(r.sources) for r in rows]
        assert batch.labels.shape == batch.mask.shape == (len(rows), max(widths))
        assert batch.mask.sum(1).tolist() == widths
        for row, record in enumerate(rows):
            n = len(record.sources)
            assert batch.labels[row, :n].tolist() == list(record.grades)
            assert batch.display_rank[row, :n].tolist() == list(range(n))
            assert not batch.labels[row, n:].any()
        # Only real (query, source) pairs are encoded: no padding documents.
        pairs = batch.inputs["pairs"]
        assert sum(c["input_ids"].shape[0] for c in pairs["chunks"]) == int(batch.mask.sum())
        assert sorted(pairs["order"].tolist()) == list(range(int(batch.mask.sum())))


def test_training_lists_keep_every_positive_and_sample_negatives(tmp_path, tokenizer, make_record):
    records = [make_record(i, n_sources=12, picks=(0, 5, 11)) for i in range(6)]
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"reranker_data": records}))
    dm = make_datamodule([path], tokenizer, validation_fraction=0.0, max_docs_per_query=5)
    dm.setup("fit")
    torch.manual_seed(0)
    seen_negatives = set()
    for _ in range(5):
        for batch in dm.train_dataloader():
            assert batch.labels.shape[1] == 5 and bool(batch.mask.all())
            assert (batch.labels.sum(1) == 3).all()  # all three picks are always there
            for row in range(batch.labels.shape[0]):
                ranks = batch.display_rank[row].tolist()
                assert ranks == sorted(ranks)  # kept in display order
                seen_negatives.update(r for r in ranks if r not in (0, 5, 11))
    assert len(seen_negatives) > 4  # negatives are sampled, not always the same


def test_cross_encoder_truncation_keeps_the_query(tokenizer):
    encoder = CrossEncoderInputs(tokenizer, max_length=24, max_query_length=8, chunk_size=2)
    long_doc = "the cost of sales " * 40
    inputs = encoder(["what is the cost of sales"], [[long_doc, "short page"]])
    pairs = inputs["pairs"]
    ids = unchunk([c["input_ids"] for c in pairs["chunks"]], pairs["order"])
    first = tokenizer.decode(ids[0], skip_special_tokens=False)
    assert first.startswith("[CLS] what is the cost of sales [SEP]")
    assert ids.shape[1] == 24
    # A query longer than its budget is cut, the pair still fits and still has a document part.
    inputs = encoder(["cost " * 50], [[long_doc]])
    ids = inputs["pairs"]["chunks"][0]["input_ids"][0]
    assert len(ids) == 24 and (ids == tokenizer.sep_token_id).sum() == 2


def test_chunks_pad_to_their_own_length_and_restore_order(tokenizer):
    encoder = BiEncoderInputs(tokenizer, max_length=64, max_query_length=16, chunk_size=2)
    docs = [["a", "the cost of sales " * 10], ["red", "the fruit is red and yellow", "dog"]]
    inputs = encoder(["q one", "q two"], docs)
    chunked = inputs["documents"]
    lengths = [c["input_ids"].shape[1] for c in chunked["chunks"]]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    ids = [c["input_ids"] for c in chunked["chunks"]]
    width = max(lengths)
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ids]
    restored = unchunk(padded, chunked["order"])
    flat = [d for row in docs for d in row]
    for i, text in enumerate(flat):
        assert tokenizer.decode(restored[i], skip_special_tokens=True) == text.strip()
    assert inputs["documents_per_query"].tolist() == [2, 3]


def test_chunk_rows_caps_rows_and_padded_tokens():
    from lightning_modules.encoding import chunk_rows

    lengths = [100, 10, 30, 250, 12, 90, 95, 11]
    # rows only: length-sorted runs of 3
    assert chunk_rows(lengths, 3, None) == [[1, 7, 4], [2, 5, 6], [0, 3]]
    # a token budget of 200: a chunk grows while rows x its longest stays within it, and a row
    # longer than the budget is a chunk of its own
    chunks = chunk_rows(lengths, 16, 200)
    assert chunks == [[1, 7, 4, 2], [5, 6], [0], [3]]
    for rows in chunks:
        assert len(rows) == 1 or len(rows) * max(lengths[i] for i in rows) <= 200
    assert sorted(i for rows in chunks for i in rows) == list(range(len(lengths)))


def test_token_budget_chunks_restore_the_same_inputs(tokenizer):
    docs = [["a", "the cost of sales " * 10], ["red", "the fruit is red and yellow", "dog"]]
    capped = BiEncoderInputs(tokenizer, max_length=64, chunk_size=8, chunk_tokens=24)
    inputs = capped(["q one", "q two"], docs)
    chunks = inputs["documents"]["chunks"]
    assert len(chunks) > 1
    for chunk in chunks:  # (one long document alone may exceed the budget)
        assert chunk["input_ids"].numel() <= 24 or len(chunk["input_ids"]) == 1
    ids = [c["input_ids"] for c in chunks]
    width = max(t.shape[1] for t in ids)
    restored = unchunk(
        [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ids],
        inputs["documents"]["order"],
    )
    flat = [d for row in docs for d in row]
    for i, text in enumerate(flat):
        assert tokenizer.decode(restored[i], skip_special_tokens=True) == text.strip()


def test_unjudged_sources_are_evaluated_but_never_trained_on(tmp_path, tokenizer, make_record):
    raw = make_record(0, n_sources=6, picks=(1,))
    raw["negative_sources"] = [raw["all_sources"][0]["url"]]  # skipped above the click
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps({"reranker_data": [raw] * 4}))
    dm = make_datamodule([path], tokenizer, validation_fraction=0.0)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        assert batch.mask.sum(1).tolist() == [2] * batch.mask.shape[0]
        assert batch.display_rank[:, :2].tolist() == [[0, 1]] * batch.mask.shape[0]
    dm.val_records = dm.train_records
    batch = next(iter(dm.val_dataloader()))
    assert batch.mask.sum(1).tolist() == [6] * batch.mask.shape[0]


def test_sampled_training_lists_keep_their_contrast_when_picks_crowd_the_cap(make_record):
    from datamodules.reranker import RerankListDataset
    from datamodules.reranker_records import parse_reranker_record

    many_picks = parse_reranker_record(make_record(0, n_sources=40, picks=range(30)), "f.json", 0)
    few_negatives = parse_reranker_record(make_record(1, n_sources=20, picks=range(17)), "f", 1)
    few_picks = parse_reranker_record(make_record(2, n_sources=40, picks=(3, 9)), "f.json", 2)
    lists = RerankListDataset(
        [many_picks, few_negatives, few_picks], "{title}", max_docs=16, sample=True, seed=0
    )
    for epoch in range(5):
        crowded, short, sparse = (lists[(i, epoch)].grades for i in range(3))
        assert len(crowded) == 16 and crowded.count(1.0) == 8  # half the list left to negatives
        assert len(short) == 16 and short.count(0.0) == 3  # every negative there is
        assert len(sparse) == 16 and sparse.count(1.0) == 2  # every pick, when they fit
