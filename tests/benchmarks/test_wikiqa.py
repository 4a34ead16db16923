"""benchmarks/wikiqa.py: the display-prior system's command line is one the CLI accepts and sets
what it says (the fits themselves run in the benchmark, not here); the paired bootstrap."""

from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest
import yaml

import main
from tests.conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("wikiqa", REPO_ROOT / "benchmarks" / "wikiqa.py")
wikiqa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wikiqa)


def test_the_display_prior_system_fits_the_prior_on_plain_dcg():
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        main.main(
            [
                "fit",
                "--config",
                str(REPO_ROOT / "configs" / "reranker.yaml"),
                *wikiqa.DISPLAY_PRIOR,
                "--print_config",
            ]
        )
    assert done.value.code in (0, None)
    model = yaml.safe_load(printed.getvalue())["model"]["init_args"]
    assert model["display_prior_weights"][0] == 0.0 and len(model["display_prior_weights"]) > 1
    assert model["eval_propensity_eta"] == 0.0


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
