"""Experiment tracking: Weights & Biases by default, offline unless the user chose otherwise.

* :class:`FeedbackWandbLogger` is Lightning's ``WandbLogger`` with this project's defaults: runs
  land under ``logs/wandb/`` and are uploaded later with ``wandb sync``; they go online only when
  the user says so (``WANDB_MODE=online``) or has logged in (``wandb login`` / ``WANDB_API_KEY``).
  It never prompts: with no key and no mode it is offline, not asking for one.
* :func:`describe_run` names, tags and groups a run from its resolved config (task, model, loss,
  a content hash of the data files, seed), so that runs are found and compared on a dashboard by
  what they are rather than by W&B's random names.
* :func:`log_examples` sends a small table of examples to every logger that takes tables and
  keeps a JSON Lines copy next to the run's other logs.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from datamodules.feedback_files import discover_feedback_files

WandbMode = Literal["online", "offline", "disabled", "shared"]
WANDB_HOST = "api.wandb.ai"
DEFAULT_PROJECT = "feedback-finetuning"


def _has_wandb_credentials(environ: Mapping[str, str]) -> bool:
    """True when W&B can authenticate without asking: an API key in the environment or netrc."""
    if environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(environ.get("NETRC", Path.home() / ".netrc"))
    if not netrc_path.is_file():
        return False
    try:
        host = environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}").split("://")[-1]
        return netrc.netrc(netrc_path).authenticators(host.rstrip("/")) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode a run uses: the explicit ``mode``, else ``WANDB_MODE``, else online for a
    logged-in user and offline for everyone else (so that no run ever waits on a login prompt).
    """
    environ = os.environ if environ is None else environ
    if mode:
        return mode
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    return "online" if _has_wandb_credentials(environ) else "offline"


class FeedbackWandbLogger(WandbLogger):
    """``WandbLogger`` that is offline unless the user chose online.

    Args:
        name, tags, group: run name, tags and group; left empty, the command line fills them
            from the config (:func:`describe_run`).
        save_dir: parent of the ``wandb/`` folder that holds the runs.
        project: W&B project (``WANDB_PROJECT`` overrides the default).
        mode: ``online``, ``offline`` or ``disabled``; empty: ``WANDB_MODE``, else online when
            logged in, else offline.
        **kwargs: passed to :class:`~lightning.pytorch.loggers.WandbLogger` and ``wandb.init``.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = "logs",
        project: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        mode: WandbMode | None = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        resolved = resolve_wandb_mode(mode)
        Path(save_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to /tmp without it
        super().__init__(
            name=name,
            save_dir=save_dir,
            project=project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            group=group,
            tags=tags,
            job_type=job_type,
            mode=resolved,
            log_model=log_model and resolved == "online",
            **kwargs,
        )
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb; Lightning always sets it
        self.mode = resolved

    def describe(self, description: RunDescription, job_type: str | None = None) -> None:
        """Fill the name, tags, group and job type the config left empty (before the run starts).

        Kept out of the saved ``config.yaml`` on purpose: a rerun of that file with other data
        or another seed is described afresh instead of inheriting stale tags.
        """
        if self._experiment is not None:
            raise RuntimeError("describe() must be called before the W&B run starts")
        init = self._wandb_init
        if not init.get("name"):
            init["name"] = self._name = description.name
        if not init.get("tags"):
            init["tags"] = description.tags
        if not init.get("group"):
            init["group"] = description.experiment
        if not init.get("job_type") and job_type:
            init["job_type"] = job_type


@dataclass(frozen=True)
class RunDescription:
    """What a run is, in the terms people compare runs by."""

    task: str
    model: str
    loss: str
    data_hash: str
    seed: int | None
    experiment: str

    @property
    def name(self) -> str:
        seed = "" if self.seed is None else f"-s{self.seed}"
        return f"{self.task}-{self.loss}-{self.model}-{self.data_hash}{seed}"

    @property
    def tags(self) -> list[str]:
        tags = [self.task, f"model:{self.model}", f"loss:{self.loss}", f"data:{self.data_hash}"]
        if self.seed is not None:
            tags.append(f"seed:{self.seed}")
        return [tag[:64] for tag in tags]  # W&B's limit on a tag


def _short_class_name(class_path: str | None) -> str:
    return (class_path or "").rsplit(".", 1)[-1]


def _loss_name(model_config: Mapping[str, Any]) -> str:
    init_args = model_config.get("init_args") or {}
    loss = init_args.get("loss")
    if isinstance(loss, Mapping):
        name = _short_class_name(loss.get("class_path"))
        return re.sub(r"Loss$", "", name) or "default"
    if "label_smoothing" in init_args:  # a seq2seq model
        smoothing = init_args.get("label_smoothing") or 0
        return "cross_entropy" + (f"_ls{smoothing:g}" if smoothing else "")
    return "default"


def _task_name(model_class_path: str) -> str:
    name = _short_class_name(model_class_path)
    if "Reranker" in name:
        return "reranker"
    if "Rewriter" in name:
        return "query_rewriter"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "model"


def data_content_hash(paths: Iterable[str | Path]) -> str:
    """Short hash of the *contents* of the data files (not their names or order).

    Two runs on the same feedback share it even from other folders; a run on grown feedback
    gets a new one.
    """
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests.append(digest.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:8]


def training_data_files(data_config: Mapping[str, Any]) -> list[Path]:
    """The files a fit learns and validates on (test and predict files are not part of it)."""
    init_args = data_config.get("init_args") or {}
    entries: list[str] = []
    for key in ("train_files", "val_files"):
        entries.extend(init_args.get(key) or [])
    return discover_feedback_files(entries) if entries else []


def describe_run(
    config: Mapping[str, Any], config_files: Sequence[str | Path] = ()
) -> RunDescription:
    """Describe a run from its resolved LightningCLI config (as a plain dict).

    The experiment is the stem of the (last) config file the run was started from, e.g.
    ``reranker`` for ``--config configs/reranker.yaml``: runs of one config with different
    overrides are compared together.
    """
    model = config.get("model") or {}
    init_args = model.get("init_args") or {}
    model_name = str(init_args.get("model_name_or_path") or "model").rstrip("/")
    files = training_data_files(config.get("data") or {})
    seed = config.get("seed_everything")
    task = _task_name(model.get("class_path", ""))
    return RunDescription(
        task=task,
        model=model_name.rsplit("/", 1)[-1],
        loss=_loss_name(model),
        data_hash=data_content_hash(files) if files else "nodata",
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        experiment=Path(config_files[-1]).stem if config_files else task,
    )


def rank_zero_log_dir(trainer: L.Trainer) -> Path:
    """``trainer.log_dir`` without its broadcast, for code that runs on rank zero only.

    ``Trainer.log_dir`` is a collective call under DDP: reached by one process alone, it waits
    forever for the others (or fails when they exit). This reads the same folder locally.
    """
    if trainer.loggers:
        first = trainer.loggers[0]
        if isinstance(first, (CSVLogger, TensorBoardLogger)):
            return Path(first.log_dir)
        return Path(first.save_dir or trainer.default_root_dir)
    return Path(trainer.default_root_dir)


def log_examples(
    module: L.LightningModule, key: str, columns: list[str], rows: list[list[Any]]
) -> None:
    """Send a table of examples to every logger that takes tables (W&B) and keep a JSON Lines
    copy under the run's log folder (``samples/<key>_epoch<E>_step<S>.jsonl``) for everyone.
    A run without loggers (``logger: false``, the promotion gate's scoring passes) writes
    nothing: it has no log folder, and the working directory is the user's, not the run's.
    """
    trainer = module.trainer
    if not rows or trainer is None or trainer.sanity_checking or not trainer.loggers:
        return
    for logger in module.loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key=key, columns=columns, data=rows, step=module.global_step)
    if trainer.is_global_zero:
        folder = rank_zero_log_dir(trainer) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        stem = key.replace("/", "_")
        path = folder / f"{stem}_epoch{module.current_epoch}_step{module.global_step}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False))
                handle.write("\n")
