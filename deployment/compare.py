"""``python main.py compare``: a table of local runs, their best metrics and config differences.

Works from the files every run writes with the CSV logger (``<log dir>/config.yaml`` and
``metrics.csv``), so runs can be compared offline, without W&B, and in CI. For each run the
*monitored* metric (the ModelCheckpoint's ``monitor`` in its config; else ``val/ndcg@10`` or
``val/bleu``) is taken at its best validation, with the baseline the run logged next to it
(display order for rerankers, copy for rewriters) and the lift. Config keys are flattened
(``model.init_args.loss.class_path``) and only the keys whose values differ between the runs are
shown, minus paths that always differ (logger folders).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.metrics import baseline_name

DEFAULT_MONITORS = ("val/ndcg@10", "val/bleu")
# Keys that differ between any two runs without saying anything about the experiment.
IGNORED_KEYS = ("trainer.logger", "trainer.default_root_dir", "ckpt_path")


@dataclass
class Run:
    """One run folder: its flattened config and its best validation row."""

    folder: Path
    config: dict[str, Any]
    monitor: str
    mode: str
    best: dict[str, float] = field(default_factory=dict)
    epochs: int = 0

    def metric(self, name: str) -> float | None:
        return self.best.get(name)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists of scalars stay values, lists of objects
    (callbacks) are indexed."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _monitor_of(config: dict[str, Any], columns: Sequence[str]) -> tuple[str, str]:
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(
            "ModelCheckpoint"
        ):
            args = callback.get("init_args") or {}
            if args.get("monitor"):
                return str(args["monitor"]), str(args.get("mode", "min"))
    for name in DEFAULT_MONITORS:
        if name in columns:
            return name, "max"
    raise ValueError("no monitored metric: the config has no ModelCheckpoint monitor")


def read_run(folder: Path) -> Run | None:
    """The run in ``folder`` (``config.yaml`` + ``metrics.csv``), or None if it never validated."""
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    with open(folder / "metrics.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else []
    try:
        monitor, mode = _monitor_of(config, columns)
    except ValueError:
        return None
    validated = [r for r in rows if r.get(monitor) not in (None, "")]
    if not validated:
        return None
    sign = 1.0 if mode == "max" else -1.0
    best_row = max(validated, key=lambda r: sign * float(r[monitor]))
    best = {k: float(v) for k, v in best_row.items() if v not in (None, "") and _is_number(v)}
    epochs = 1 + max(int(float(r["epoch"])) for r in rows if r.get("epoch") not in (None, ""))
    return Run(folder, flatten(config), monitor, mode, best, epochs)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def find_runs(roots: Sequence[str | Path]) -> list[Run]:
    """Every run folder below ``roots`` that has both a config and validation metrics."""
    runs = []
    for root in roots:
        for config in sorted(Path(root).rglob("config.yaml")):
            if (config.parent / "metrics.csv").exists():
                run = read_run(config.parent)
                if run is not None:
                    runs.append(run)
    return runs


def differing_keys(runs: Sequence[Run]) -> list[str]:
    keys = sorted({k for run in runs for k in run.config})
    out = []
    for key in keys:
        if any(key == ignored or key.startswith(ignored + ".") for ignored in IGNORED_KEYS):
            continue
        values = {json.dumps(run.config.get(key), sort_keys=True, default=str) for run in runs}
        if len(values) > 1:
            out.append(key)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value).replace("|", "\\|").replace("\n", "\\n")
    return text if len(text) <= 40 else text[:37] + "..."


def table(runs: Sequence[Run]) -> str:
    """A Markdown table: one row a run, best monitored value, baseline, lift, config diffs."""
    keys = differing_keys(runs)
    header = ["run", "monitor", "best", "baseline", "lift", "epochs", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = sorted(runs, key=lambda r: (r.monitor, -(r.metric(r.monitor) or -math.inf)))
    for run in ordered:
        value = run.metric(run.monitor)
        baseline = run.metric(baseline_name(run.monitor) or "")
        lift = None if value is None or baseline is None else value - baseline
        cells = [str(run.folder), run.monitor, _fmt(value), _fmt(baseline), _fmt(lift),
                 str(run.epochs)]  # fmt: skip
        cells += [_fmt(run.config.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python main.py compare", description=__doc__)
    parser.add_argument("roots", nargs="*", default=["logs"], help="log folders (default: logs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    runs = find_runs(args.roots)
    if not runs:
        print(f"No run with validation metrics under {', '.join(args.roots)}")
        return 1
    if args.json:
        keys = differing_keys(runs)
        print(json.dumps([
            {"run": str(r.folder), "monitor": r.monitor, "best": r.best, "epochs": r.epochs,
             "config": {k: r.config.get(k) for k in keys}}
            for r in runs
        ], indent=2, default=str))  # fmt: skip
    else:
        print(table(runs))
    return 0
