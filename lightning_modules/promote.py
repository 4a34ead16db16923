"""The promotion gate of the continuous-learning loop: deploy a re-fine-tuned model only if it
is better than the deployed one on the same held-out feedback.

``python main.py promote --config <the job's config> --candidate <export> --deployment <path>``

1. Both models are scored on the held-out feedback of the config's data module (``val_files``,
   or the hash / time split's validation side) with the same metrics: NDCG@10 and MRR@10 for a
   reranker, BLEU and exact match for a rewriter. Each model formats its inputs as its export
   says (document template / input format), as the app will.
2. The difference is tested with a paired bootstrap over queries (Efron & Tibshirani 1993;
   Koehn 2004 for BLEU; Sakai 2006 for IR metrics): 95% interval of the difference and the
   share of resamples where the candidate is not better (a one-sided p-value).
3. The candidate is promoted only when the primary metric improves by at least ``margin`` (and,
   with ``max_p_value``, significantly). The deployment is then a symbolic link switched to a
   new version folder in one atomic rename; earlier versions stay for ``main.py rollback``.
   Otherwise nothing under the deployment path is touched. Either way a JSON and a Markdown
   report say what was measured and why.

Without a deployed model yet (first promotion) the candidate is compared with the config's own
model: the untouched base model the app would otherwise use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torchmetrics.functional.retrieval import (
    retrieval_normalized_dcg,
    retrieval_reciprocal_rank,
)
from torchmetrics.functional.text.bleu import _bleu_score_compute, _bleu_score_update
from torchmetrics.functional.text.sacre_bleu import _SacreBLEUTokenizer

from datamodules.split import normalise_query
from lightning_modules.export import EXPORT_METADATA_FILE
from lightning_modules.metrics import rank_scores

log = logging.getLogger(__name__)

RANKING_METRICS = ("ndcg@10", "mrr@10")
REWRITING_METRICS = ("bleu", "exact_match")
VERSIONS_SUFFIX = ".versions"


# ---------------------------------------------------------------------------------------------
# Per-query results and the paired bootstrap
# ---------------------------------------------------------------------------------------------


@dataclass
class BleuStatistics:
    """Per-sentence SacreBLEU sufficient statistics (13a, cased), so that the corpus BLEU of
    any resample of the sentences is a sum and a formula, not a re-tokenisation."""

    numerator: torch.Tensor  # [N, 4] clipped n-gram matches
    denominator: torch.Tensor  # [N, 4] hypothesis n-grams
    hypothesis_length: torch.Tensor  # [N]
    reference_length: torch.Tensor  # [N]

    @classmethod
    def from_texts(cls, hypotheses: Sequence[str], references: Sequence[str]) -> BleuStatistics:
        tokenize = partial(_SacreBLEUTokenizer.tokenize, tokenize="13a", lowercase=False)
        rows = []
        for hypothesis, reference in zip(hypotheses, references, strict=True):
            numerator, denominator = torch.zeros(4), torch.zeros(4)
            hyp_len, ref_len = _bleu_score_update(
                [hypothesis],
                [[reference]],
                numerator,
                denominator,
                torch.tensor(0.0),
                torch.tensor(0.0),
                4,
                tokenize,
            )
            rows.append((numerator, denominator, hyp_len, ref_len))
        return cls(
            torch.stack([r[0] for r in rows]),
            torch.stack([r[1] for r in rows]),
            torch.stack([torch.as_tensor(r[2], dtype=torch.float32) for r in rows]),
            torch.stack([torch.as_tensor(r[3], dtype=torch.float32) for r in rows]),
        )

    def corpus_bleu(self, indices: np.ndarray | None = None) -> float:
        """Corpus BLEU (0-100) of the sentences at ``indices`` (with repeats), all by default."""
        pick = slice(None) if indices is None else torch.as_tensor(indices)
        return 100.0 * float(
            _bleu_score_compute(
                self.hypothesis_length[pick].sum(),
                self.reference_length[pick].sum(),
                self.numerator[pick].sum(0),
                self.denominator[pick].sum(0),
                4,
                [0.25] * 4,
                False,
            )
        )


@dataclass
class SystemResult:
    """What one system scored on the held-out queries, query by query (same order for all)."""

    name: str
    per_query: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [N]
    bleu: BleuStatistics | None = None

    def statistic(self, metric: str) -> Callable[[np.ndarray], float]:
        if metric == "bleu":
            assert self.bleu is not None
            return self.bleu.corpus_bleu
        values = self.per_query[metric]
        return lambda indices: float(values[indices].mean())

    def value(self, metric: str, n: int) -> float:
        return self.statistic(metric)(np.arange(n))


@dataclass
class MetricComparison:
    metric: str
    deployed: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # share of resamples in which the candidate is not better


def paired_bootstrap(
    n_items: int,
    deployed: Callable[[np.ndarray], float],
    candidate: Callable[[np.ndarray], float],
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """95% percentile interval of ``candidate - deployed`` over resamples of the items (with
    replacement, the same resample for both systems), and the one-sided p-value
    ``P(delta <= 0)``."""
    if n_items == 0:
        raise ValueError("no held-out queries to compare the models on")
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_resamples)
    for r in range(n_resamples):
        indices = rng.integers(0, n_items, n_items)
        deltas[r] = candidate(indices) - deployed(indices)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high), float((deltas <= 0).mean())


def compare_systems(
    deployed: SystemResult,
    candidate: SystemResult,
    metrics: Sequence[str],
    n_items: int,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[MetricComparison]:
    comparisons = []
    for metric in metrics:
        d, c = deployed.value(metric, n_items), candidate.value(metric, n_items)
        low, high, p = paired_bootstrap(
            n_items, deployed.statistic(metric), candidate.statistic(metric), n_resamples, seed
        )
        comparisons.append(MetricComparison(metric, d, c, c - d, low, high, p))
    return comparisons


# ---------------------------------------------------------------------------------------------
# Scoring a model on held-out feedback
# ---------------------------------------------------------------------------------------------


def module_from_export(template: L.LightningModule, folder: str | Path) -> L.LightningModule:
    """The config's model class and settings, with the weights of an export (``init_from``)."""
    # (LightningCLI adds private entries such as ``_class_path`` to the saved hyperparameters)
    hparams = {k: v for k, v in template.hparams.items() if not k.startswith("_")}
    hparams["init_from"] = str(folder)
    if "anchor_weight" in hparams:  # no frozen copy: nothing is trained here
        hparams["anchor_weight"] = 0.0
    return type(template)(**hparams)


def _export_metadata(folder: str | Path | None) -> dict[str, Any]:
    if folder is None:
        return {}
    return json.loads((Path(folder) / EXPORT_METADATA_FILE).read_text())


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def score_reranker(
    module: L.LightningModule, datamodule: L.LightningDataModule, export: str | Path | None
) -> tuple[SystemResult, SystemResult]:
    """Per-query NDCG@10 / MRR@10 of the module and of the display order on the validation
    lists (queries without a pick are skipped, as in validation)."""
    template = _export_metadata(export).get("document_template")
    saved_template = datamodule.document_template
    datamodule.document_template = template or saved_template
    datamodule.input_encoder = module.input_encoder()
    device = _device()
    module.to(device).eval()
    model_values: dict[str, list[float]] = {m: [] for m in RANKING_METRICS}
    display_values: dict[str, list[float]] = {m: [] for m in RANKING_METRICS}
    try:
        for batch in datamodule.val_dataloader():
            batch = move_data_to_device(batch, device)
            scores = module.score_batch(batch)
            for row_scores, out in (
                (scores, model_values),
                (batch.display_scores, display_values),
            ):
                ranks = rank_scores(row_scores, batch.mask)
                for row in range(ranks.shape[0]):
                    mask = batch.mask[row]
                    labels = batch.labels[row][mask].float().cpu()
                    if not (labels > 0).any():
                        continue
                    preds = ranks[row][mask].cpu()
                    out["ndcg@10"].append(float(retrieval_normalized_dcg(preds, labels, top_k=10)))
                    out["mrr@10"].append(
                        float(retrieval_reciprocal_rank(preds, labels > 0, top_k=10))
                    )
    finally:
        datamodule.document_template = saved_template
    module.cpu()
    model = SystemResult("model", {m: np.array(v) for m, v in model_values.items()})
    display = SystemResult("display order", {m: np.array(v) for m, v in display_values.items()})
    return model, display


@torch.no_grad()
def score_rewriter(
    module: L.LightningModule, datamodule: L.LightningDataModule, export: str | Path | None
) -> tuple[SystemResult, SystemResult]:
    """BLEU (as per-sentence statistics) and exact match of the module's rewrites and of
    copying the question, against the mined targets of the validation pairs."""
    from datamodules.query_rewriting import RewriteInputFormat

    input_format = _export_metadata(export).get("input_format")
    saved_format = datamodule.input_format
    if input_format:
        datamodule.input_format = RewriteInputFormat(**input_format)
    datamodule.input_encoder = module.input_encoder()
    device = _device()
    module.to(device).eval()
    rewrites: list[str] = []
    sources: list[str] = []
    targets: list[str] = []
    try:
        for batch in datamodule.val_dataloader():
            batch = move_data_to_device(batch, device)
            rewrites += module.rewrite(batch)
            sources += batch.sources
            targets += [t or "" for t in batch.targets]
    finally:
        datamodule.input_format = saved_format
    module.cpu()

    def result(name: str, texts: list[str]) -> SystemResult:
        matches = [
            100.0 * (normalise_query(h) == normalise_query(t))
            for h, t in zip(texts, targets, strict=True)
        ]
        return SystemResult(
            name, {"exact_match": np.array(matches)}, BleuStatistics.from_texts(texts, targets)
        )

    return result("model", rewrites), result("copy the question", sources)


# ---------------------------------------------------------------------------------------------
# The deployment: a symbolic link to a version folder
# ---------------------------------------------------------------------------------------------


class Deployment:
    """``path`` is what the app loads: a symbolic link to ``.<name>.versions/<version>``.

    Switching versions is one atomic ``rename`` of a new link over the old one, so the app sees
    the old model or the new one, never a half-written folder; old versions stay for rollback.
    A plain folder already at ``path`` (a first deployment made by hand) is moved, untouched,
    into the versions on the first promotion.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.versions = self.path.parent / f".{self.path.name}{VERSIONS_SUFFIX}"

    def exists(self) -> bool:
        return self.path.exists()

    def current_version(self) -> str | None:
        if self.path.is_symlink():
            return Path(os.readlink(self.path)).name
        return None

    def history(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(
            p.name for p in self.versions.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def _switch_to(self, version: str) -> None:
        link = self.path.parent / f".{self.path.name}.link-{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.relpath(self.versions / version, self.path.parent), link)
        os.replace(link, self.path)  # atomic: the old link is replaced in one step

    def promote(self, candidate: str | Path, version: str) -> Path:
        """Copy ``candidate`` in as ``version`` and switch the link to it."""
        self.versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.versions))
        try:
            shutil.copytree(candidate, staging / "model", symlinks=False)
            os.replace(staging / "model", self.versions / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self.path.exists() and not self.path.is_symlink():
            # A hand-made deployment folder: keep it, untouched, as the version before this one
            # (named by its modification time, so that it sorts first and rollback finds it).
            modified = datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc)
            kept = f"{modified:%Y%m%dT%H%M%S}-hand-made"
            if kept >= version or (self.versions / kept).exists():
                kept = f"00000000T000000-hand-made-{uuid.uuid4().hex[:6]}"
            os.replace(self.path, self.versions / kept)
        self._switch_to(version)
        return self.versions / version

    def rollback(self) -> str:
        """Point the deployment back at the version before the current one."""
        history, current = self.history(), self.current_version()
        if current not in history or history.index(current) == 0:
            raise ValueError(f"{self.path}: no earlier version to roll back to ({history})")
        previous = history[history.index(current) - 1]
        self._switch_to(previous)
        return previous


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------


@dataclass
class GateReport:
    task: str
    primary_metric: str
    margin: float
    max_p_value: float | None
    n_queries: int
    n_resamples: int
    deployed: str
    candidate: str
    deployment: str
    baseline_name: str
    baseline: dict[str, float]
    comparisons: list[MetricComparison]
    promoted: bool
    reason: str
    version: str | None
    held_out: str
    timestamp: str

    def to_markdown(self) -> str:
        decision = "**promoted**" if self.promoted else "**not promoted**"
        lines = [
            f"# Promotion gate: {self.task}",
            "",
            f"{decision}: {self.reason}",
            "",
            f"- deployed: `{self.deployed}`",
            f"- candidate: `{self.candidate}`",
            f"- deployment: `{self.deployment}`"
            + (f" → version `{self.version}`" if self.version else ""),
            f"- held-out feedback: {self.held_out} ({self.n_queries} queries)",
            f"- paired bootstrap over queries, {self.n_resamples} resamples; p = share of "
            "resamples where the candidate is not better",
            "",
            f"| metric | deployed | candidate | delta | 95% CI | p | {self.baseline_name} |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for c in self.comparisons:
            star = " (gate)" if c.metric == self.primary_metric else ""
            lines.append(
                f"| {c.metric}{star} | {c.deployed:.4f} | {c.candidate:.4f} | {c.delta:+.4f} | "
                f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.p_value:.3f} | "
                f"{self.baseline[c.metric]:.4f} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "promotion_report.json").write_text(json.dumps(asdict(self), indent=2) + "\n")
        (folder / "promotion_report.md").write_text(self.to_markdown())
        return folder


def decide(
    comparison: MetricComparison, margin: float, max_p_value: float | None
) -> tuple[bool, str]:
    name = comparison.metric
    if not math.isfinite(comparison.candidate):
        return False, f"the candidate's {name} is not a number"
    if comparison.delta <= 0 or comparison.delta < margin:
        return False, (
            f"{name} {comparison.candidate:.4f} vs deployed {comparison.deployed:.4f} "
            f"(delta {comparison.delta:+.4f}) is not an improvement of at least {margin:g}"
        )
    if max_p_value is not None and comparison.p_value > max_p_value:
        return False, (
            f"{name} improves by {comparison.delta:+.4f} but not significantly "
            f"(p = {comparison.p_value:.3f} > {max_p_value:g})"
        )
    return True, (
        f"{name} {comparison.candidate:.4f} vs deployed {comparison.deployed:.4f} "
        f"(delta {comparison.delta:+.4f} >= margin {margin:g}, p = {comparison.p_value:.3f})"
    )


def run_gate(
    template: L.LightningModule,
    datamodule: L.LightningDataModule,
    candidate: str | Path,
    deployment: str | Path,
    *,
    metric: str | None = None,
    margin: float = 0.0,
    max_p_value: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    report_dir: str | Path | None = None,
) -> GateReport:
    """Score, compare, decide, and promote if the candidate passes. See the module docstring."""
    candidate = Path(candidate)
    target = Deployment(deployment)
    is_rewriter = hasattr(template, "rewrite")
    metrics = REWRITING_METRICS if is_rewriter else RANKING_METRICS
    primary = metric or metrics[0]
    if primary not in metrics:
        raise ValueError(f"metric must be one of {metrics}, got {primary!r}")
    score = score_rewriter if is_rewriter else score_reranker

    if datamodule.input_encoder is None:
        datamodule.input_encoder = template.input_encoder()
    datamodule.setup("validate")
    held_out_files = getattr(datamodule, "val_files", None) or getattr(
        datamodule, "train_files", []
    )
    split = "val_files" if getattr(datamodule, "val_files", None) else f"{datamodule.split} split"

    if target.exists():
        deployed_folder = target.path.resolve()
        deployed_name = f"{target.path} ({target.current_version() or 'folder'})"
        deployed_result, baseline = score(
            module_from_export(template, deployed_folder), datamodule, deployed_folder
        )
    else:
        base = template.hparams.get("model_name_or_path")
        deployed_name = f"nothing deployed yet: the config's model ({base})"
        deployed_result, baseline = score(template, datamodule, None)
    candidate_result, _ = score(module_from_export(template, candidate), datamodule, candidate)

    n = len(next(iter(candidate_result.per_query.values())))
    comparisons = compare_systems(deployed_result, candidate_result, metrics, n, n_resamples, seed)
    gate = next(c for c in comparisons if c.metric == primary)
    promoted, reason = decide(gate, margin, max_p_value)
    now = datetime.now(timezone.utc)
    version = None
    if promoted:
        version = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        target.promote(candidate, version)
        log.info("Promoted %s to %s (version %s): %s", candidate, target.path, version, reason)
    else:
        log.warning("Not promoted, %s left untouched: %s", target.path, reason)
    report = GateReport(
        task="query rewriter" if is_rewriter else "reranker",
        primary_metric=primary,
        margin=margin,
        max_p_value=max_p_value,
        n_queries=n,
        n_resamples=n_resamples,
        deployed=deployed_name,
        candidate=str(candidate),
        deployment=str(target.path),
        baseline_name=baseline.name,
        baseline={m: baseline.value(m, n) for m in metrics},
        comparisons=comparisons,
        promoted=promoted,
        reason=reason,
        version=version,
        held_out=f"{split} of {', '.join(map(str, held_out_files))}",
        timestamp=now.isoformat(timespec="seconds"),
    )
    folder = Path(report_dir) if report_dir else Path("logs") / "promote" / f"{now:%Y%m%dT%H%M%S}"
    report.write(folder)
    print(report.to_markdown())
    print(f"Report: {folder / 'promotion_report.md'}")
    return report


def rollback_main(argv: Sequence[str]) -> int:
    """``python main.py rollback <deployment>``: switch back to the previous version."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python main.py rollback <deployment path>")
        return 2
    deployment = Deployment(argv[0])
    previous = deployment.rollback()
    print(f"{deployment.path} now points to version {previous}")
    return 0
