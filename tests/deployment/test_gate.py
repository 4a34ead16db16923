"""The promotion gate's parts: BLEU statistics against sacrebleu, the paired bootstrap, and the
versioned deployment link (atomic switch, rollback, nothing lost)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sacrebleu

from deployment.bootstrap import MetricComparison, SystemResult, compare_systems, paired_bootstrap
from deployment.gate import decide
from deployment.versions import Deployment
from lightning_modules.metrics import BleuStatistics

HYPOTHESES = [
    "when did Frank Zappa disband the Mothers of Invention?",
    "what kind of music did they play",
    "Why did the band break up?",
    "who produced the album",
    "where was the album Hot Rats recorded",
]
REFERENCES = [
    "When did Frank Zappa disband the Mothers of Invention?",
    "What kind of music did the Mothers of Invention play?",
    "Why did the band break up?",
    "Who produced the album Hot Rats?",
    "Where was the album Hot Rats recorded?",
]


def test_bleu_of_any_resample_equals_sacrebleu_on_that_resample():
    statistics = BleuStatistics.from_texts(HYPOTHESES, REFERENCES)
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    assert statistics.corpus_bleu() == pytest.approx(expected, abs=1e-3)
    indices = np.array([0, 0, 2, 4, 4, 1])  # with repeats, as a bootstrap draws them
    resampled = sacrebleu.corpus_bleu(
        [HYPOTHESES[i] for i in indices], [[REFERENCES[i] for i in indices]]
    ).score
    assert statistics.corpus_bleu(indices) == pytest.approx(resampled, abs=1e-3)


def test_bootstrap_of_a_constant_difference_is_that_difference():
    base = np.array([0.2, 0.5, 0.9, 0.4])
    low, high, p = paired_bootstrap(
        4, lambda i: float(base[i].mean()), lambda i: float((base[i] + 0.1).mean())
    )
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1) and p == 0.0
    low, high, p = paired_bootstrap(
        4, lambda i: float(base[i].mean()), lambda i: float(base[i].mean())
    )
    assert low == high == 0.0 and p == 1.0  # equal systems: never better


def test_bootstrap_matches_a_numpy_reference_and_is_paired():
    rng = np.random.default_rng(1)
    deployed = rng.random(50)
    candidate = deployed + rng.normal(0.02, 0.05, 50)
    low, high, p = paired_bootstrap(
        50,
        lambda i: float(deployed[i].mean()),
        lambda i: float(candidate[i].mean()),
        n_resamples=2000,
        seed=7,
    )
    # reference: the same resamples drawn directly, on the per-query differences
    draws = np.random.default_rng(7)
    deltas = np.array(
        [(candidate - deployed)[draws.integers(0, 50, 50)].mean() for _ in range(2000)]
    )
    assert (low, high) == pytest.approx(tuple(np.percentile(deltas, [2.5, 97.5])))
    assert p == pytest.approx((deltas <= 0).mean())


def test_compare_systems_reports_values_deltas_and_intervals():
    d = SystemResult("d", {"ndcg@10": np.array([0.5, 0.5, 1.0])})
    c = SystemResult("c", {"ndcg@10": np.array([1.0, 0.5, 1.0])})
    (comparison,) = compare_systems(d, c, ["ndcg@10"], 3, n_resamples=200)
    assert comparison.deployed == pytest.approx(2 / 3) and comparison.candidate == pytest.approx(
        5 / 6
    )
    assert comparison.delta == pytest.approx(1 / 6)
    assert 0 <= comparison.ci_low <= comparison.delta <= comparison.ci_high


@pytest.mark.parametrize(
    ("delta", "p", "margin", "max_p", "promoted"),
    [
        (0.02, 0.01, 0.0, None, True),
        (0.0, 0.5, 0.0, None, False),  # equal is not better
        (-0.01, 0.9, 0.0, None, False),
        (0.005, 0.2, 0.01, None, False),  # below the margin
        (0.02, 0.2, 0.01, 0.05, False),  # not significant
        (0.02, 0.01, 0.01, 0.05, True),
    ],
)
def test_decision(delta, p, margin, max_p, promoted):
    comparison = MetricComparison("ndcg@10", 0.6, 0.6 + delta, delta, delta - 0.01, delta + 0.01, p)
    decided, reason = decide(comparison, margin, max_p)
    assert decided is promoted and "ndcg@10" in reason


def make_model(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(content)
    (folder / "config.json").write_text("{}")
    return folder


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_deployment_switches_atomically_keeps_versions_and_rolls_back(tmp_path):
    deployment = Deployment(tmp_path / "deploy" / "reranker")
    first = make_model(tmp_path / "first", "weights one")
    second = make_model(tmp_path / "second", "weights two")
    deployment.promote(first, "20260101T000000-a")
    assert deployment.path.is_symlink()
    assert (deployment.path / "model.safetensors").read_text() == "weights one"
    deployment.promote(second, "20260102T000000-b")
    assert (deployment.path / "model.safetensors").read_text() == "weights two"
    assert deployment.history() == ["20260101T000000-a", "20260102T000000-b"]
    assert snapshot(first) == {"model.safetensors": b"weights one", "config.json": b"{}"}
    # the link is relative: the deployment folder can be moved or mounted elsewhere
    assert not os.path.isabs(os.readlink(deployment.path))
    assert deployment.rollback() == "20260101T000000-a"
    assert (deployment.path / "model.safetensors").read_text() == "weights one"
    with pytest.raises(ValueError, match="no earlier version"):
        deployment.rollback()
    assert not list(deployment.path.parent.glob(".reranker.link-*"))  # no stray links


def test_a_hand_made_deployment_folder_is_kept_as_a_version(tmp_path):
    path = make_model(tmp_path / "deploy", "hand made")
    os.utime(path, (1_700_000_000, 1_700_000_000))  # made in 2023
    deployment = Deployment(path)
    deployment.promote(make_model(tmp_path / "new", "new"), "20260101T000000-a")
    assert (path / "model.safetensors").read_text() == "new"
    kept, promoted = deployment.history()
    assert promoted == "20260101T000000-a" and "hand-made" in kept
    assert (deployment.versions / kept / "model.safetensors").read_text() == "hand made"
    assert deployment.rollback() == kept
    assert (path / "model.safetensors").read_text() == "hand made"


@pytest.mark.parametrize("promoted", [True, False])
def test_the_judged_candidate_is_a_wandb_model_artifact_aliased_by_the_decision(tmp_path, promoted):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from deployment.gate import GateReport, log_model_artifact

    logged = []

    class Run:
        def log_artifact(self, artifact, aliases):
            logged.append((artifact, aliases))

    class RecordingWandb(WandbLogger):
        @property
        def experiment(self):
            return Run()

    candidate = tmp_path / "export"
    candidate.mkdir()
    (candidate / "model.safetensors").write_bytes(b"weights")
    comparison = MetricComparison("ndcg@10", 0.60, 0.62, 0.02, 0.0, 0.04, 0.03)
    report = GateReport(
        "reranker", "ndcg@10", 0.0, None, 10, 100, "deployed", str(candidate), "deploy/r",
        "display order", {"ndcg@10": 0.5}, [comparison], promoted, "why",
        "v1" if promoted else None, "val split", "2026-12-01T00:00:00",
    )  # fmt: skip
    loggers = [CSVLogger(tmp_path), RecordingWandb(save_dir=str(tmp_path), mode="disabled")]
    log_model_artifact(loggers, candidate, report)
    ((artifact, aliases),) = logged  # the W&B logger only
    assert artifact.type == "model" and artifact.name == "reranker-model"
    assert aliases == (["candidate", "production"] if promoted else ["candidate"])
    assert artifact.metadata["promoted"] is promoted
    assert artifact.metadata["comparisons"][0]["candidate"] == 0.62
    assert "model.safetensors" in artifact.manifest.entries
