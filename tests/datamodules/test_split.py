"""The hash split by query: deterministic, normalised, stable as data grows."""

from __future__ import annotations

from datamodules.split import is_validation_query, normalise_query, query_bucket


def test_normalisation_ignores_case_width_and_spacing():
    assert (
        normalise_query("  What IS  the\tCapital of ＦＲＡＮＣＥ ")
        == "what is the capital of france"
    )
    assert query_bucket("What is X?") == query_bucket("  what   is x?")


def test_same_query_same_side_and_salt_changes_the_split():
    queries = [f"query number {i}" for i in range(2000)]
    first = [is_validation_query(q, 0.2) for q in queries]
    assert first == [is_validation_query(q, 0.2) for q in queries]
    share = sum(first) / len(first)
    assert 0.17 < share < 0.23
    salted = [is_validation_query(q, 0.2, salt="other") for q in queries]
    assert salted != first


def test_sides_are_stable_as_data_grows():
    # A query's side depends only on the query, never on what else is in the data set.
    old = {q: is_validation_query(q, 0.3) for q in (f"old {i}" for i in range(300))}
    new = {q: is_validation_query(q, 0.3) for q in [*(f"new {i}" for i in range(500)), *old]}
    assert all(new[q] == side for q, side in old.items())


def test_bucket_is_in_unit_interval():
    buckets = [query_bucket(f"q{i}") for i in range(1000)]
    assert all(0.0 <= b < 1.0 for b in buckets)
