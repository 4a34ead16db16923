"""README.md's commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci.splitlines()
    main_job = next(c for c in commands if "main.py fit --config configs/reranker.yaml" in c)
    assert main_job.startswith("pip install torch==2.13.0 -e .")


def test_readme_names_every_config():
    readme = (REPO / "README.md").read_text()
    for config in (REPO / "configs").glob("*.yaml"):
        assert f"configs/{config.name}" in readme, config.name
