"""benchmarks/learning_curve.py: each method's command line is one the CLI accepts, and builds
the position model (or display prior) it names (the fits themselves run in the benchmark, not
here)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from simulation.display import Alternating, FileOrder, RandomOrder
from simulation.simulator import simulate, write_feedback
from simulation.users import PositionBasedUser
from tests.conftest import REPO_ROOT, printed_model_args
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
    "display_prior": None,
}


@pytest.mark.parametrize("method", learning_curve.METHODS)
def test_each_method_is_a_command_line_the_cli_accepts(method, tmp_path):
    lists = [make_list(5, {i % 5}, f"q{i}") for i in range(20)]
    display = Alternating([FileOrder(), RandomOrder(seed=1)])
    log = write_feedback(
        simulate(lists, display, PositionBasedUser(), n_impressions=400), tmp_path / "log.json"
    )
    extra = learning_curve.method_arguments(method, 1.0, log)
    model = printed_model_args(*extra)
    assert (model["display_prior_weights"] is not None) == (method == "display_prior")
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


def test_the_curve_averages_seeds_per_method_and_n_and_later_reports_win(tmp_path):
    def run(method, n, seed, value, eta=1.0):
        return {
            "method": method,
            "n": n,
            "seed": seed,
            "eta": eta,
            "test": {"wikiqa_test": {"ndcg@10": value}},
        }

    baselines = {"untouched backbone": {"wikiqa_test": {"ndcg@10": 0.8}}}
    first = {
        "baselines": baselines,
        "runs": [
            run("naive", 300, 0, 0.7),
            run("naive", 100, 0, 0.6),
            run("naive", 300, 1, 0.9),
            run("oracle", 300, 0, 0.5),
            run("naive", 300, 2, 0.1, eta=2.0),
        ],
    }
    second = {"baselines": baselines, "runs": [run("oracle", 300, 0, 0.85)]}
    points, lines = learning_curve.curve_points([first, second], eta=1.0)
    assert points["naive"] == [(100, 0.6), (300, pytest.approx(0.8))]
    assert points["oracle"] == [(300, 0.85)]
    assert lines == {"untouched backbone": 0.8}
    path = tmp_path / "curve.png"
    learning_curve.plot_curve([first, second], path, eta=1.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_default_plan_is_the_curve_plus_one_point_of_each_other_axis():
    args = learning_curve.parse_args(["--output", "x.json"])
    points = learning_curve.plan(args)
    assert [p for p in points if p[0] == 1.0 and p[2] == 0] == [
        (1.0, n, 0) for n in (100, 300, 1000, 3000)
    ]
    assert {p[0] for p in points} == {0.5, 1.0, 2.0}
    assert {p[2] for p in points if p[1] == 1000 and p[0] == 1.0} == {0, 1, 2}
    assert len(points) * len(args.methods) == 24 and "oracle" in args.methods
    grid = learning_curve.plan(
        learning_curve.parse_args(["--n", "300", "--eta", "1", "2", "--output", "x.json"])
    )
    assert grid == [(1.0, 300, 0), (2.0, 300, 0)]
