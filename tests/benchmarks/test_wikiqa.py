"""benchmarks/wikiqa.py: our systems' command lines are ones the CLI accepts and set what they
say (the fits themselves run in the benchmark, not here); the paired bootstrap."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, printed_model_args

spec = importlib.util.spec_from_file_location("wikiqa", REPO_ROOT / "benchmarks" / "wikiqa.py")
wikiqa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wikiqa)


@pytest.mark.parametrize("system", sorted(wikiqa.OURS))
def test_our_systems_fit_the_prior_on_plain_dcg_or_not_at_all(system):
    model = printed_model_args(*wikiqa.OURS[system])
    assert model["eval_propensity_eta"] == 0.0  # editorial labels
    if system == "ours+display-prior":
        assert model["display_prior_weights"][0] == 0.0 and len(model["display_prior_weights"]) > 1
    else:  # the default recipe: no prior
        assert model["display_prior_weights"] is None


def test_the_paired_bootstrap_is_centred_on_the_mean_difference():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a + 0.05 + 0.01 * rng.standard_normal(200)
    result = wikiqa.paired_bootstrap(a, b, n_resamples=2000, seed=0)
    assert result["delta"] == pytest.approx(float((b - a).mean()))
    low, high = result["ci95"]
    assert low < result["delta"] < high and low > 0.04 and high < 0.06
    same = wikiqa.paired_bootstrap(a, a, n_resamples=100, seed=0)
    assert same == {"delta": 0.0, "ci95": [0.0, 0.0]}
