"""The resumable training order: a function of (seed, epoch), able to start part-way."""

from __future__ import annotations

from datamodules.reranker import RerankListDataset
from datamodules.reranker_records import parse_reranker_record
from datamodules.resumable import ResumableTrainingData, ShuffleSampler
from tests.conftest import make_record


def test_order_depends_on_seed_and_epoch_only():
    a, b = ShuffleSampler(50, seed=3), ShuffleSampler(50, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(1)
    assert list(b) != list(a)
    assert list(ShuffleSampler(50, seed=4)) != list(a)


def test_resume_skips_what_was_trained_in_that_epoch_only():
    data = ResumableTrainingData()
    sampler = ShuffleSampler(20, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    data.load_state_dict({"epoch": 2, "batches": 3})  # may arrive before the loader exists
    loader = data.resumable_loader(list(range(20)), sampler, batch_size=4)
    assert [i for batch in loader for i in batch.tolist()] == full[12:]  # 3 batches of 4 done
    assert list(sampler) == full  # the next pass is a whole epoch again
    data.load_state_dict({"epoch": 1, "batches": 3})  # ...or after it
    assert list(sampler) == full  # a state for another epoch does not apply
    assert data.state_dict() == {}  # nothing to record outside training


def test_negative_sampling_is_a_function_of_item_and_epoch():
    record = parse_reranker_record(make_record(1, n_sources=40, picks=(3,)), "f.json", 0)
    dataset = RerankListDataset([record], "{title}", max_docs=6, sample=True, seed=9)
    first = dataset[(0, 0)].positions
    assert dataset[(0, 0)].positions == first and 3 in first
    assert any(dataset[(0, epoch)].positions != first for epoch in range(1, 5))
    assert list(ShuffleSampler(1, seed=9, with_epoch=True)) == [(0, 0)]
