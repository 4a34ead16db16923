"""benchmarks/learning_curve.py: each method's command line is one the CLI accepts, and builds
the position model (or display prior) it names (the fits themselves run in the benchmark, not
here)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import pytest
import yaml

import main
from simulation.display import Alternating, FileOrder, RandomOrder
from simulation.simulator import simulate, write_feedback
from simulation.users import PositionBasedUser
from tests.conftest import REPO_ROOT
from tests.simulation.test_simulator import make_list

spec = importlib.util.spec_from_file_location(
    "learning_curve", REPO_ROOT / "benchmarks" / "learning_curve.py"
)
learning_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning_curve)

EXPECTED = {
    "naive": None,
    "oracle": None,
    "additive": "AdditivePositionBias",
    "ips": "InversePropensityWeighting",
    "ips_estimated": "InversePropensityWeighting",
    "skip_above": "SkipAbove",
    "no_display_prior": None,
}


@pytest.mark.parametrize("method", learning_curve.METHODS)
def test_each_method_is_a_command_line_the_cli_accepts(method, tmp_path):
    lists = [make_list(5, {i % 5}, f"q{i}") for i in range(20)]
    display = Alternating([FileOrder(), RandomOrder(seed=1)])
    log = write_feedback(
        simulate(lists, display, PositionBasedUser(), n_impressions=400), tmp_path / "log.json"
    )
    extra = learning_curve.method_arguments(method, 1.0, log)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as done:
        main.main(
            [
                "fit",
                "--config",
                str(REPO_ROOT / "configs" / "reranker.yaml"),
                *extra,
                "--print_config",
            ]
        )
    assert done.value.code in (0, None)
    model = yaml.safe_load(printed.getvalue())["model"]["init_args"]
    assert (model["display_prior_weights"] is None) == (method == "no_display_prior")
    assert model["eval_propensity_eta"] == (0.0 if method == "oracle" else 1.0)
    position_bias = model["position_bias"]
    if EXPECTED[method] is None:
        assert position_bias is None
    else:
        assert position_bias["class_path"].endswith(EXPECTED[method])
    if method == "ips_estimated":
        propensities = position_bias["init_args"]["propensities"]
        assert propensities[0] == 1.0 and all(0 < p <= 1 for p in propensities)
    assert json.dumps(extra)  # plain strings
