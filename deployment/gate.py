"""The promotion gate of the continuous-learning loop: deploy a re-fine-tuned model only if it
is better than the deployed one on the same held-out feedback.

``python main.py promote --config <the job's config> --candidate <export> --deployment <path>``

1. Both models are scored on the held-out feedback of the config's data module (``val_files``,
   or the hash / time split's validation side) by Lightning's own validation loop
   (``Trainer.validate``: the configured precision, devices and samplers) and the evaluation
   core validation logs with (:mod:`lightning_modules.metrics`): NDCG@10 and MRR@10 for a
   reranker, BLEU and exact match for a rewriter, per query. Each model formats its inputs as
   its export says (document template / input format), as the app will.
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

**Canary** (``canary_files``): a fixed set with editorial labels that is *not* feedback (the
repository ships ``training_data/wikiqa_dev_canary.json``: WikiQA dev). Both models are also
scored on it, and a candidate that loses more than ``canary_margin`` of the primary metric
there is refused, however much it gains on the feedback: re-training on feedback again and
again cannot quietly forget what the backbone knew. A canary file must not be trained on: the
gate refuses one whose queries appear in the training feedback.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from deployment.bootstrap import MetricComparison, SystemResult, compare_systems
from deployment.versions import Deployment
from lightning_modules.export import EXPORT_METADATA_FILE

log = logging.getLogger(__name__)

# ndcg@10 and mrr@10 on the held-out picks; ips_dcg@10 their position-debiased estimate (the
# picks weighted by 1 / the examination propensity of the rank each was shown at)
RANKING_METRICS = ("ndcg@10", "mrr@10", "ips_dcg@10")
# coverage@10: the share of the user's selected sources the rewrite's BM25 top 10 finds in the
# log's sources (lightning_modules.retrieval_judge), for pairs mined from app records
COVERAGE = "coverage@10"
REWRITING_METRICS = ("bleu", "exact_match", COVERAGE)


def aligned(index, judged, values) -> np.ndarray:
    """``values`` of the ``judged`` pair indices laid over ``index`` (NaN where not judged)."""
    out = np.full(len(index), np.nan)
    position = {int(i): k for k, i in enumerate(index.tolist())}
    for i, value in zip(judged.tolist(), values.double().numpy(), strict=True):
        out[position[int(i)]] = value
    return out


def module_from_export(template: L.LightningModule, folder: str | Path) -> L.LightningModule:
    """The config's model class and settings, with the weights of an export (``init_from``)."""
    # (LightningCLI adds private entries such as ``_class_path`` to the saved hyperparameters)
    hparams = {k: v for k, v in template.hparams.items() if not k.startswith("_")}
    hparams["init_from"] = str(folder)
    if "anchor_weight" in hparams:  # no frozen copy: nothing is trained here
        hparams["anchor_weight"] = 0.0
    if "display_prior_weights" in hparams:  # nothing fitted here: the export's own weight ranks
        hparams["display_prior_weights"] = None
    return type(template)(**hparams)


def _export_metadata(folder: str | Path | None) -> dict[str, Any]:
    if folder is None:
        return {}
    return json.loads((Path(folder) / EXPORT_METADATA_FILE).read_text())


@contextlib.contextmanager
def _inputs_as_exported(datamodule: L.LightningDataModule, module, export) -> Iterator[None]:
    """The data module builds ``module``'s inputs as its export says the app must (document
    template / input format) with its tokenizer; put back afterwards."""
    from datamodules.rewrite_inputs import RewriteInputFormat

    metadata = _export_metadata(export)
    saved = {
        name: getattr(datamodule, name)
        for name in ("document_template", "input_format", "input_encoder")
        if hasattr(datamodule, name)
    }
    if metadata.get("document_template") and hasattr(datamodule, "document_template"):
        datamodule.document_template = metadata["document_template"]
    if metadata.get("input_format") and hasattr(datamodule, "input_format"):
        datamodule.input_format = RewriteInputFormat(**metadata["input_format"])
    datamodule.input_encoder = module.input_encoder()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(datamodule, name, value)


def evaluate(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    export: str | Path | None,
) -> tuple[np.ndarray, SystemResult, SystemResult]:
    """One validation pass of ``module`` through ``trainer`` (nothing logged), as query indices
    and per-query results of the model and of the baseline the app already has (the display
    order; copying the question)."""
    loggers, trainer.loggers = trainer.loggers, []
    try:
        with _inputs_as_exported(datamodule, module, export):
            trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        trainer.loggers = loggers
    results = module.evaluations["val"]
    if "copy" in results:  # a rewriter: BLEU statistics and exact matches per pair
        index, statistics, exact = results["model"]
        _, copy_statistics, copy_exact = results["copy"]
        model = {"exact_match": exact.numpy()}
        copy_question = {"exact_match": copy_exact.numpy()}
        if "coverage" in results:  # retrieval-judged pairs only; NaN for the others
            judged, coverage = results["coverage"]
            for values, system in ((model, "model"), (copy_question, "copy")):
                values[COVERAGE] = aligned(index, judged, coverage[system])
        return (
            index.numpy(),
            SystemResult("model", model, statistics),
            SystemResult("copy the question", copy_question, copy_statistics),
        )
    index, values = results["model"]
    _, display = results["display"]
    return (
        index.numpy(),
        SystemResult("model", {m: values[m].double().numpy() for m in RANKING_METRICS}),
        SystemResult("display order", {m: display[m].double().numpy() for m in RANKING_METRICS}),
    )


@dataclass
class CanaryCheck:
    files: list[str]
    metric: str
    n_queries: int
    deployed: float
    candidate: float
    delta: float
    margin: float
    passed: bool


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
    canary: CanaryCheck | None = None

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
        if self.canary is not None:
            c = self.canary
            verdict = "passed" if c.passed else "**failed**"
            lines += [
                "",
                f"Canary ({', '.join(c.files)}, {c.n_queries} queries, not feedback): "
                f"{c.metric} deployed {c.deployed:.4f}, candidate {c.candidate:.4f} "
                f"(delta {c.delta:+.4f}; allowed loss {c.margin:g}): {verdict}",
            ]
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


def _canary_datamodule(datamodule: L.LightningDataModule, files: Sequence[str]):
    """A copy of the data module whose validation items are the canary files."""
    canary = copy.copy(datamodule)
    canary.train_files, canary.val_files = [], [str(f) for f in files]
    for stage in ("train", "val"):
        setattr(canary, f"{stage}_{datamodule.items_name}", [])
    canary.setup("validate")
    # (a query's key is its normalised text: the same question in both is trained on)
    trained = datamodule.items("train").facts["query_key"]
    overlap = np.isin(canary.items("val").facts["query_key"], trained)
    if overlap.any():
        raise ValueError(
            f"canary {', '.join(map(str, files))}: {int(overlap.sum())} of its queries are in "
            "the training feedback; a canary must be data the models never train on"
        )
    return canary


def run_canary(
    trainer: L.Trainer,
    template: L.LightningModule,
    datamodule: L.LightningDataModule,
    deployed: tuple[L.LightningModule, Path | None],
    candidate: Path,
    files: Sequence[str],
    metric: str,
    margin: float,
) -> CanaryCheck:
    canary = _canary_datamodule(datamodule, files)
    deployed_module, deployed_folder = deployed
    deployed_index, deployed_result, _ = evaluate(trainer, deployed_module, canary, deployed_folder)
    candidate_index, candidate_result, _ = evaluate(
        trainer, module_from_export(template, candidate), canary, candidate
    )
    if not np.array_equal(deployed_index, candidate_index):
        raise RuntimeError("the two models were not scored on the same canary queries")
    n = len(candidate_index)
    before, after = deployed_result.value(metric, n), candidate_result.value(metric, n)
    return CanaryCheck(
        files=[str(f) for f in files],
        metric=metric,
        n_queries=n,
        deployed=before,
        candidate=after,
        delta=after - before,
        margin=margin,
        passed=bool(after - before >= -margin),
    )


def run_gate(
    trainer: L.Trainer,
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
    canary_files: Sequence[str] | None = None,
    canary_margin: float = 0.01,
) -> GateReport:
    """Score, compare, decide, and promote if the candidate passes. See the module docstring."""
    candidate = Path(candidate)
    target = Deployment(deployment)
    is_rewriter = hasattr(template, "rewrite")
    metrics = REWRITING_METRICS if is_rewriter else RANKING_METRICS
    primary = metric or metrics[0]
    if primary not in metrics:
        raise ValueError(f"metric must be one of {metrics}, got {primary!r}")

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
        deployed_module = module_from_export(template, deployed_folder)
    else:
        base = template.hparams.get("model_name_or_path")
        deployed_name = f"nothing deployed yet: the config's model ({base})"
        deployed_folder, deployed_module = None, template
    deployed_index, deployed_result, baseline = evaluate(
        trainer, deployed_module, datamodule, deployed_folder
    )
    candidate_index, candidate_result, _ = evaluate(
        trainer, module_from_export(template, candidate), datamodule, candidate
    )
    if not np.array_equal(deployed_index, candidate_index):  # a paired test needs the same items
        raise RuntimeError("the two models were not scored on the same held-out queries")

    n = len(candidate_index)
    if is_rewriter and not all(
        COVERAGE in r.per_query for r in (deployed_result, candidate_result)
    ):
        if primary == COVERAGE:
            raise ValueError(
                f"metric {COVERAGE}: no held-out pair comes from an app record whose sources "
                "have text, so no rewrite can be judged by what it retrieves"
            )
        metrics = tuple(m for m in metrics if m != COVERAGE)
    comparisons = compare_systems(deployed_result, candidate_result, metrics, n, n_resamples, seed)
    gate = next(c for c in comparisons if c.metric == primary)
    promoted, reason = decide(gate, margin, max_p_value)
    canary = None
    if canary_files and is_rewriter:
        raise ValueError("canary_files: the canary check is for rerankers")
    if canary_files:
        # true labels there: judged on the task's plain metric, whatever the feedback gate used
        canary_metric = metrics[0]
        canary = run_canary(
            trainer,
            template,
            datamodule,
            (deployed_module, deployed_folder),
            candidate,
            canary_files,
            canary_metric,
            canary_margin,
        )
        if promoted and not canary.passed:
            promoted, reason = (
                False,
                (
                    f"{reason}, but on the canary {canary_metric} fell {canary.delta:+.4f} "
                    f"({canary.deployed:.4f} -> {canary.candidate:.4f}; allowed loss "
                    f"{canary_margin:g})"
                ),
            )
    now = datetime.now(timezone.utc)
    version = None
    if promoted and not trainer.is_global_zero:  # every process measured; one deploys
        promoted, reason = False, "(not the main process)"
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
        canary=canary,
    )
    if not trainer.is_global_zero:
        return report
    folder = Path(report_dir) if report_dir else Path("logs") / "promote" / f"{now:%Y%m%dT%H%M%S}"
    report.write(folder)
    log_model_artifact(trainer.loggers, candidate, report)
    print(report.to_markdown())
    print(f"Report: {folder / 'promotion_report.md'}")
    return report


def log_model_artifact(loggers: Sequence[Any], candidate: Path, report: GateReport) -> None:
    """With W&B on, the candidate the gate judged becomes a version of the task's model
    artifact, aliased ``candidate``, and also ``production`` (W&B moves the alias to it) when it
    was promoted, with the gate's figures as metadata: the dashboard shows which run the
    deployed model came from and what it measured."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        name = "reranker" if report.task == "reranker" else "query-rewriter"
        artifact = wandb.Artifact(
            f"{name}-model",
            type="model",
            description=report.reason,
            metadata={
                "promoted": report.promoted,
                "version": report.version,
                "deployment": report.deployment,
                "held_out": report.held_out,
                "comparisons": [asdict(c) for c in report.comparisons],
                "baseline": report.baseline,
            },
        )
        artifact.add_dir(str(candidate))
        aliases = ["candidate", *(["production"] if report.promoted else [])]
        logger.experiment.log_artifact(artifact, aliases=aliases)
