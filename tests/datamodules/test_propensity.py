"""`python -m datamodules.propensity` on a simulated log: the JSON and the plot it writes."""

from __future__ import annotations

import json

from datamodules.propensity import main
from simulation.display import Alternating, FileOrder, RandomOrder
from simulation.simulator import simulate, write_feedback
from simulation.users import PositionBasedUser
from tests.simulation.test_simulator import make_list


def test_the_command_writes_the_estimate_and_its_plot(tmp_path):
    lists = [make_list(5, {i % 5}, f"q{i}") for i in range(40)]
    user = PositionBasedUser(eta=1.0, relevant_pick=1.0, irrelevant_pick=0.0)
    records = simulate(
        lists, Alternating([FileOrder(), RandomOrder(seed=3)]), user, n_impressions=1200
    )
    log = write_feedback(records, tmp_path / "log.json")
    out, plot = tmp_path / "p.json", tmp_path / "p.png"
    report = main([str(log), "--ranks", "5", "--output", str(out), "--plot", str(plot)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    assert written["propensities"][0] == 1.0 and written["records"] == 1200
    assert written["propensities"][4] < written["propensities"][1] < 1.0  # falls with rank
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
