"""Tests of lightning_modules.losses against independent plain-Python/numpy references.

The references below loop over lists, pairs and permutations; they share no code with the torch
implementations. Batches are built with padding interleaved between the real items and filled
with garbage (huge scores, random labels, and in some tests inf/nan) that must not matter.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from lightning_modules.losses import (
    LAMBDA_WEIGHTINGS,
    LambdaLoss,
    ListMLELoss,
    ListNetLoss,
    PointwiseBCELoss,
    RankingLoss,
    RankNetLoss,
    SoftmaxCrossEntropyLoss,
)

List = tuple[list[float], list[float]]  # (scores, labels) of the real items of one list

# --------------------------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------------------------

CASES: dict[str, list[List]] = {
    "binary": [
        ([2.0, -1.0, 0.5, 0.3], [1, 0, 0, 0]),
        ([0.1, 0.7, -0.4], [0, 1, 0]),
        ([1.5, -0.2, 0.9, 0.4, -1.1], [1, 0, 1, 0, 0]),
    ],
    "graded": [
        ([0.3, 1.2, -0.5, 0.8], [3, 2, 0, 1]),
        ([2.2, 0.1, -0.7, 1.4, 0.6], [1, 3, 0, 2, 4]),
    ],
    "label_ties": [
        ([0.4, -0.3, 1.1, 0.2, 0.9], [2, 1, 1, 0, 0]),
        ([1.0, 0.5, -0.5], [1, 1, 0]),
    ],
    "score_ties": [
        ([0.5, 0.5, -0.2, 0.5], [1, 0, 0, 2]),
        ([1.0, 1.0, 1.0], [0, 1, 0]),
        ([0.3, 0.3, 0.3, 0.3, -0.1], [0, 1, 2, 1, 0]),
    ],
    "degenerate": [
        ([0.3, -0.8, 1.7], [0, 0, 0]),  # all negative: no contrast
        ([2.5], [1]),  # one item: no pair
        ([0.2, 0.9], [2, 2]),  # graded but all equal: no contrast
        ([], []),  # no real item at all
        ([1.3, -0.4, 0.1], [0, 1, 0]),  # the only qualifying list
    ],
}

NOTHING_QUALIFIES: list[List] = [
    ([0.3, -0.8, 1.7], [0, 0, 0]),
    ([2.5], [1]),
    ([0.2, 0.9], [2, 2]),
    ([], []),
]


def to_batch(
    lists: list[List],
    *,
    length: int | None = None,
    layout: str = "interleaved",
    padding: str = "large",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad ``lists`` into ``(scores, labels, mask)``; scores require grad.

    ``layout="interleaved"`` scatters the real items (in order) among the padding slots,
    ``layout="end"`` puts them first. ``padding="large"`` fills padded slots with huge finite
    scores and random labels, ``padding="extreme"`` with inf/-inf/nan/huge values.
    """
    rng = np.random.default_rng(seed)
    if length is None:
        length = max(len(s) for s, _ in lists) + 3
    scores = np.zeros((len(lists), length))
    labels = np.zeros((len(lists), length))
    mask = np.zeros((len(lists), length), dtype=bool)
    for b, (s, y) in enumerate(lists):
        assert len(s) == len(y) <= length
        if layout == "end":
            pos = np.arange(len(s))
        else:
            pos = np.sort(rng.choice(length, size=len(s), replace=False))
        mask[b, pos] = True
        scores[b, pos] = s
        labels[b, pos] = y
    n_pad = int((~mask).sum())
    if padding == "large":
        pad_scores = rng.choice([1e4, -1e4, 1e30, -1e30], n_pad) * rng.uniform(0.5, 1.0, n_pad)
        pad_labels = rng.integers(0, 5, n_pad).astype(float)
    elif padding == "extreme":
        pad_scores = rng.choice([np.inf, -np.inf, np.nan, 1e38, -1e38], n_pad)
        pad_labels = rng.choice([np.inf, np.nan, -1.0, 7.0], n_pad)
    else:
        raise ValueError(padding)
    scores[~mask] = pad_scores
    labels[~mask] = pad_labels
    return (
        torch.tensor(scores, dtype=dtype, requires_grad=True),
        torch.tensor(labels, dtype=dtype),
        torch.tensor(mask),
    )


# --------------------------------------------------------------------------------------------
# Independent references (plain loops, float64)
# --------------------------------------------------------------------------------------------


def log_sigmoid(x: float) -> float:
    return -float(np.logaddexp(0.0, -x))


def logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def mean_or_zero(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else 0.0


def has_contrast(y: list[float]) -> bool:
    return len(y) > 0 and max(y) > min(y)


def ref_bce(lists: list[List], pos_weight: float | None = None) -> float:
    pw = 1.0 if pos_weight is None else pos_weight
    total, count = 0.0, 0
    for s, y in lists:
        for x, label in zip(s, y, strict=True):
            t = 1.0 if label > 0 else 0.0
            total += -(pw * t * log_sigmoid(x) + (1.0 - t) * log_sigmoid(-x))
            count += 1
    return total / count if count else 0.0


def ref_ranknet_list(s: list[float], y: list[float], sigma: float) -> float | None:
    terms = [
        -log_sigmoid(sigma * (s[i] - s[j]))
        for i in range(len(s))
        for j in range(len(s))
        if y[i] > y[j]
    ]
    return sum(terms) / len(terms) if terms else None


def ref_listnet_list(s: list[float], y: list[float], temperature: float) -> float | None:
    if not has_contrast(y):
        return None
    z_y = logsumexp(list(y))
    z_s = logsumexp([x / temperature for x in s])
    return -sum(math.exp(yi - z_y) * (si / temperature - z_s) for si, yi in zip(s, y, strict=True))


def ref_softmax_ce_list(s: list[float], y: list[float], temperature: float) -> float | None:
    if not has_contrast(y) or sum(y) <= 0:
        return None
    z_s = logsumexp([x / temperature for x in s])
    total = sum(y)
    return -sum((yi / total) * (si / temperature - z_s) for si, yi in zip(s, y, strict=True))


def plackett_luce_nll(s: list[float], perm: tuple[int, ...]) -> float:
    return sum(logsumexp([s[p] for p in perm[k:]]) - s[perm[k]] for k in range(len(perm)))


def tie_consistent_perms(y: list[float]) -> list[tuple[int, ...]]:
    """Every permutation that lists the items by label, descending (any order within ties)."""
    return [
        perm
        for perm in itertools.permutations(range(len(y)))
        if all(y[perm[k]] >= y[perm[k + 1]] for k in range(len(perm) - 1))
    ]


def ref_listmle_options(lists: list[List]) -> list[tuple[float, tuple]]:
    """(batch value, chosen permutation per qualifying list) for every tie-consistent choice."""
    qualifying = [(s, y) for s, y in lists if has_contrast(y)]
    if not qualifying:
        return [(0.0, ())]
    per_list = [tie_consistent_perms(y) for _, y in qualifying]
    options = []
    for choice in itertools.product(*per_list):
        values = [
            plackett_luce_nll(s, perm) for (s, _), perm in zip(qualifying, choice, strict=True)
        ]
        options.append((sum(values) / len(values), choice))
    return options


def ref_listmle_fixed(lists: list[List], choice: tuple) -> float:
    qualifying = [s for s, y in lists if has_contrast(y)]
    if not qualifying:
        return 0.0
    values = [plackett_luce_nll(s, perm) for s, perm in zip(qualifying, choice, strict=True)]
    return sum(values) / len(values)


def ref_lambda_list(
    s: list[float],
    y: list[float],
    weighting: str,
    k: int | None = None,
    sigma: float = 1.0,
    mu: float = 10.0,
    eps: float = 1e-10,
) -> float | None:
    n = len(s)
    if not has_contrast(y):
        return None
    order = sorted(range(n), key=lambda i: (-s[i], i))  # score ties: earlier position first
    rank = [0] * n
    for position, item in enumerate(order):
        rank[item] = position + 1
    gain = [2.0**v - 1.0 for v in y]
    ideal = sorted(gain, reverse=True)
    cutoff = n if k is None else min(k, n)
    idcg = sum(ideal[p] / math.log2(p + 2) for p in range(cutoff))
    g = [x / idcg for x in gain]
    d = [math.log2(1 + r) for r in rank]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if k is not None and rank[i] > k and rank[j] > k:
                continue
            if weighting == "ndcg_loss1":
                w = g[i] / d[i]  # every ordered pair, i == j included
            else:
                if not y[i] > y[j]:
                    continue
                gap = abs(rank[i] - rank[j])
                lambdarank = abs(1 / d[i] - 1 / d[j]) * abs(g[i] - g[j])
                ndcg2 = abs(1 / math.log2(1 + gap) - 1 / math.log2(2 + gap)) * abs(g[i] - g[j])
                w = {
                    "lambdarank": lambdarank,
                    "ndcg_loss2": ndcg2,
                    "ndcg_loss2pp": mu * ndcg2 + lambdarank,
                }[weighting]
            p = 1.0 / (1.0 + math.exp(-sigma * (s[i] - s[j])))
            total -= w * math.log2(max(p, eps))
    return total


def per_list_mean(fn: Callable[[list[float], list[float]], float | None]):
    def batch(lists: list[List]) -> list[float]:
        return [mean_or_zero([fn(list(s), list(y)) for s, y in lists])]

    return batch


# name -> (factory, reference returning the candidate batch values)
SPECS: dict[str, tuple[Callable[[], RankingLoss], Callable[[list[List]], list[float]]]] = {
    "bce": (PointwiseBCELoss, lambda lists: [ref_bce(lists)]),
    "bce_pos_weight": (
        lambda: PointwiseBCELoss(pos_weight=3.0),
        lambda lists: [ref_bce(lists, 3.0)],
    ),
    "ranknet": (RankNetLoss, per_list_mean(lambda s, y: ref_ranknet_list(s, y, 1.0))),
    "ranknet_sigma2": (
        lambda: RankNetLoss(sigma=2.0),
        per_list_mean(lambda s, y: ref_ranknet_list(s, y, 2.0)),
    ),
    "listnet": (ListNetLoss, per_list_mean(lambda s, y: ref_listnet_list(s, y, 1.0))),
    "listnet_t05": (
        lambda: ListNetLoss(temperature=0.5),
        per_list_mean(lambda s, y: ref_listnet_list(s, y, 0.5)),
    ),
    "softmax_ce": (
        SoftmaxCrossEntropyLoss,
        per_list_mean(lambda s, y: ref_softmax_ce_list(s, y, 1.0)),
    ),
    "softmax_ce_t2": (
        lambda: SoftmaxCrossEntropyLoss(temperature=2.0),
        per_list_mean(lambda s, y: ref_softmax_ce_list(s, y, 2.0)),
    ),
    "listmle": (ListMLELoss, lambda lists: [v for v, _ in ref_listmle_options(lists)]),
}
for _w in LAMBDA_WEIGHTINGS:
    SPECS[f"lambda_{_w}"] = (
        lambda w=_w: LambdaLoss(weighting=w),
        per_list_mean(lambda s, y, w=_w: ref_lambda_list(s, y, w)),
    )
    SPECS[f"lambda_{_w}_k2_sigma2"] = (
        lambda w=_w: LambdaLoss(weighting=w, k=2, sigma=2.0, mu=5.0),
        per_list_mean(lambda s, y, w=_w: ref_lambda_list(s, y, w, k=2, sigma=2.0, mu=5.0)),
    )
SPECS["lambda_ndcg_loss2pp_k1"] = (
    lambda: LambdaLoss(k=1),
    per_list_mean(lambda s, y: ref_lambda_list(s, y, "ndcg_loss2pp", k=1)),
)
SPECS["lambda_lambdarank_k10"] = (
    lambda: LambdaLoss(weighting="lambdarank", k=10),
    per_list_mean(lambda s, y: ref_lambda_list(s, y, "lambdarank", k=10)),
)

RANKING_SPECS = [name for name in SPECS if not name.startswith("bce")]


def assert_matches_one(value: float, candidates: list[float]) -> None:
    close = [c for c in candidates if math.isclose(value, c, rel_tol=1e-9, abs_tol=1e-12)]
    assert close, f"{value!r} matches none of {candidates!r}"


def check_grad(scores: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Gradients must be finite everywhere and exactly zero on padding; returns them."""
    assert scores.grad is not None
    grad = scores.grad.detach().numpy()
    assert np.isfinite(grad).all()
    assert (grad[~mask.numpy()] == 0).all()
    return grad


def finite_difference(fn: Callable[[list[List]], float], lists: list[List]) -> list[np.ndarray]:
    h = 1e-6
    grads = []
    for b, (s, y) in enumerate(lists):
        g = np.zeros(len(s))
        for i in range(len(s)):
            up = [list(x) for x in lists]
            down = [list(x) for x in lists]
            up[b] = ([*s[:i], s[i] + h, *s[i + 1 :]], y)
            down[b] = ([*s[:i], s[i] - h, *s[i + 1 :]], y)
            g[i] = (fn(up) - fn(down)) / (2 * h)
        grads.append(g)
    return grads


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_value_matches_reference(name: str, case: str) -> None:
    factory, reference = SPECS[name]
    lists = CASES[case]
    scores, labels, mask = to_batch(lists)
    torch.manual_seed(0)
    loss = factory()(scores, labels, mask)
    assert loss.dim() == 0
    assert loss.dtype == torch.float64
    assert torch.isfinite(loss)
    assert_matches_one(loss.item(), reference(lists))
    loss.backward()
    check_grad(scores, mask)


# ListMLE's reference is a single value only when no tie remains among the labels that matter.
FD_CASES = {
    name: ["graded"] if name == "listmle" else ["binary", "graded", "label_ties", "degenerate"]
    for name in SPECS
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradient_matches_finite_differences_of_reference(name: str) -> None:
    factory, reference = SPECS[name]
    for case in FD_CASES[name]:
        lists = CASES[case]
        scores, labels, mask = to_batch(lists, padding="extreme", seed=3)
        factory()(scores, labels, mask).backward()
        grad = check_grad(scores, mask)

        def ref(ls: list[List]) -> float:
            (value,) = reference(ls)
            return value

        expected = finite_difference(ref, lists)
        mask_np = mask.numpy()
        for b, g in enumerate(expected):
            np.testing.assert_allclose(grad[b, mask_np[b]], g, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_padding_does_not_change_the_value(name: str) -> None:
    """Each list alone, unpadded, against the same list inside garbage padding."""
    factory, _ = SPECS[name]
    loss_fn = factory()
    cases = ["graded"] if name == "listmle" else sorted(CASES)  # ListMLE: no random tie-break
    for case in cases:
        for s, y in CASES[case]:
            if not s:
                continue
            plain = to_batch([(s, y)], length=len(s), layout="end")
            torch.manual_seed(0)
            expected = loss_fn(*plain)
            for padding, seed in [("large", 1), ("extreme", 2), ("extreme", 5)]:
                padded = to_batch([(s, y)], length=len(s) + 4, padding=padding, seed=seed)
                torch.manual_seed(0)
                value = loss_fn(*padded)
                np.testing.assert_allclose(value.item(), expected.item(), rtol=1e-12, atol=1e-14)
                value.backward()
                check_grad(padded[0], padded[2])


@pytest.mark.parametrize("padding", ["large", "extreme"])
@pytest.mark.parametrize("name", RANKING_SPECS)
def test_nothing_qualifies_returns_zero_with_graph(name: str, padding: str) -> None:
    factory, _ = SPECS[name]
    scores, labels, mask = to_batch(NOTHING_QUALIFIES, padding=padding)
    loss = factory()(scores, labels, mask)
    assert loss.dim() == 0
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert (scores.grad == 0).all()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_empty_batches(name: str) -> None:
    factory, _ = SPECS[name]
    # Every slot padded (with garbage) and a zero-length list dimension.
    for scores, labels, mask in [
        to_batch([([], []), ([], [])], padding="extreme"),
        to_batch([([], [])], length=0),
    ]:
        loss = factory()(scores, labels, mask)
        assert loss.dim() == 0 and loss.item() == 0.0
        loss.backward()
        assert scores.grad is not None and (scores.grad == 0).all()


def test_bce_counts_one_item_and_all_negative_lists() -> None:
    lists = [([2.5], [1]), ([0.3, -0.8], [0, 0])]
    scores, labels, mask = to_batch(lists, padding="extreme")
    value = PointwiseBCELoss()(scores, labels, mask).item()
    np.testing.assert_allclose(value, ref_bce(lists), rtol=1e-12)
    assert value > 0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_perfect_ranking_beats_reversed(name: str) -> None:
    factory, _ = SPECS[name]
    loss_fn = factory()
    for labels in ([1, 0, 0, 0, 0], [3, 2, 1, 0], [2, 1, 1, 0, 0]):
        perfect = [float(len(labels) - i) for i in range(len(labels))]
        reversed_ = perfect[::-1]
        values = {}
        for key, s in (("perfect", perfect), ("reversed", reversed_)):
            batch = to_batch([(s, labels)])
            # ListMLE breaks ties at random: compare averages over the same seeds.
            n_seeds = 20 if name == "listmle" else 1
            total = 0.0
            for seed in range(n_seeds):
                torch.manual_seed(seed)
                total += loss_fn(*batch).item()
            values[key] = total / n_seeds
        assert values["perfect"] < values["reversed"], (labels, values)


def test_float32_matches_float64() -> None:
    lists = CASES["graded"] + CASES["degenerate"]
    for name, (factory, _) in SPECS.items():
        loss_fn = factory()
        torch.manual_seed(0)
        v64 = loss_fn(*to_batch(lists, dtype=torch.float64))
        torch.manual_seed(0)
        s32, y32, m32 = to_batch(lists, dtype=torch.float32, padding="extreme")
        v32 = loss_fn(s32, y32, m32)
        assert v32.dtype == torch.float32, name
        np.testing.assert_allclose(v32.item(), v64.item(), rtol=1e-5, err_msg=name)
        v32.backward()
        check_grad(s32, m32)


def test_listmle_tie_break_is_uniform_over_tie_consistent_permutations() -> None:
    """Every call's value is the reference for one tie-consistent permutation per list; over
    many calls all of them occur, about equally often (chi-square), and the gradient is that
    of the permutation observed."""
    lists = CASES["label_ties"]  # 2 x 2 tie orders in the first list, 2 in the second: 8
    options = ref_listmle_options(lists)
    values = np.array([v for v, _ in options])
    assert len(options) == 8
    assert np.min(np.diff(np.sort(values))) > 1e-6  # a value identifies its permutations
    scores, labels, mask = to_batch(lists)
    loss_fn = ListMLELoss()
    torch.manual_seed(1234)
    n_draws = 400
    counts = np.zeros(len(options))
    for draw in range(n_draws):
        loss = loss_fn(scores, labels, mask)
        matches = np.flatnonzero(np.isclose(values, loss.item(), rtol=1e-10, atol=1e-12))
        assert len(matches) == 1, loss.item()
        counts[matches[0]] += 1
        if draw < 3:
            scores.grad = None
            loss.backward()
            grad = check_grad(scores, mask)
            choice = options[matches[0]][1]
            expected = finite_difference(lambda ls, c=choice: ref_listmle_fixed(ls, c), lists)
            for b, g in enumerate(expected):
                np.testing.assert_allclose(grad[b, mask[b].numpy()], g, rtol=1e-6, atol=1e-8)
    assert (counts > 0).all()
    expected_count = n_draws / len(options)
    chi2 = float(((counts - expected_count) ** 2 / expected_count).sum())
    assert chi2 < 24.32, (chi2, counts)  # 99.9% quantile of chi-square with 7 dof


def test_listmle_tie_break_ignores_display_order() -> None:
    """Two tied positives: each must be ranked first about half the time, wherever it sits."""
    lists = [([2.0, 0.0, -1.0], [1, 1, 0])]
    scores, labels, mask = to_batch(lists, layout="end", length=3)
    first = plackett_luce_nll(lists[0][0], (0, 1, 2))
    second = plackett_luce_nll(lists[0][0], (1, 0, 2))
    torch.manual_seed(7)
    draws = np.array([ListMLELoss()(scores, labels, mask).item() for _ in range(200)])
    assert np.all(np.isclose(draws, first) | np.isclose(draws, second))
    share = np.isclose(draws, first).mean()
    assert 0.35 < share < 0.65, share


def test_ndcg_loss2pp_is_mu_ndcg_loss2_plus_lambdarank() -> None:
    lists = CASES["graded"] + CASES["label_ties"] + CASES["degenerate"]
    batch = to_batch(lists)
    for k in (None, 2):
        pp = LambdaLoss("ndcg_loss2pp", k=k, mu=3.0)(*batch)
        two = LambdaLoss("ndcg_loss2", k=k)(*batch)
        lr = LambdaLoss("lambdarank", k=k)(*batch)
        np.testing.assert_allclose(pp.item(), 3.0 * two.item() + lr.item(), rtol=1e-12)


def test_lambda_k_truncation_drops_pairs_outside_top_k() -> None:
    # Relevant items ranked 3rd and 4th; with k=1 only pairs involving the top item remain.
    lists = [([3.0, 2.0, 1.0, 0.0], [0, 0, 1, 2])]
    batch = to_batch(lists)
    full = LambdaLoss("lambdarank")(*batch).item()
    top1 = LambdaLoss("lambdarank", k=1)(*batch).item()
    np.testing.assert_allclose(top1, ref_lambda_list(*lists[0], "lambdarank", k=1), rtol=1e-12)
    assert 0 < top1 < full


def test_listnet_and_softmax_ce_agree_on_one_positive() -> None:
    """Sanity link between references: with one positive, the softmax CE is -log p(positive),
    and ListNet's target is softmax of 0/1 labels rather than one-hot."""
    s, y = [1.0, 0.2, -0.5], [1, 0, 0]
    batch = to_batch([(s, y)])
    ce = SoftmaxCrossEntropyLoss()(*batch).item()
    np.testing.assert_allclose(ce, logsumexp(s) - s[0], rtol=1e-12)
    assert ListNetLoss()(*batch).item() > ce


@pytest.mark.parametrize(
    "factory",
    [
        lambda: LambdaLoss(weighting="ndcg"),
        lambda: LambdaLoss(k=0),
        lambda: ListNetLoss(temperature=0.0),
        lambda: SoftmaxCrossEntropyLoss(temperature=-1.0),
    ],
)
def test_invalid_arguments(factory: Callable[[], RankingLoss]) -> None:
    with pytest.raises(ValueError):
        factory()


def test_shape_mismatch_raises() -> None:
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        RankNetLoss()(scores, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        RankNetLoss()(torch.zeros(6), torch.zeros(6), torch.ones(6, dtype=torch.bool))


def test_listwise_distillation_matches_numpy_kl():
    from lightning_modules.losses import listwise_distillation

    student = torch.tensor([[1.0, 0.5, -0.2, 9.0], [0.3, 0.1, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.2, 0.9, -1.0, -9.0], [0.0, 2.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)

    def kl(s, t):
        p = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
        q = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        return float((p * (np.log(p) - np.log(q))).sum())

    expected = np.mean(
        [
            kl(student[0, :3].numpy(), teacher[0, :3].numpy()),
            kl(student[1, :2].numpy(), teacher[1, :2].numpy()),
        ]
    )  # 1-item list: out
    value = listwise_distillation(student.requires_grad_(), teacher, mask)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-5)
    value.backward()
    assert torch.all(student.grad[~mask] == 0)
    same = listwise_distillation(teacher, teacher, mask)
    assert abs(same.item()) < 1e-6
