"""Writing fine-tuned models as folders the app can load, without ever losing the old one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: the app's loader imports this module without transformers
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Written beside the weights: what the model is and how the app must format documents for it.
EXPORT_METADATA_FILE = "feedback_finetuning.json"
# The model card every export carries (as sentence-transformers and the Hugging Face hub name it).
MODEL_CARD_FILE = "README.md"

_RERANKER_LOADING = """```python
from lightning_modules.inference import ExportedReranker  # the app's loader (this project)

reranker = ExportedReranker.load("{folder}")  # backend="onnx" / "onnx-int8" where written
ranked = reranker.rank(query, sources)  # sources: the app's dicts; [(index, score)] best first

from sentence_transformers import {library_class}  # or the plain library

model = {library_class}("{folder}")
```"""
_LOADING = {
    "bi-encoder": _RERANKER_LOADING.replace("{library_class}", "SentenceTransformer"),
    "cross-encoder": _RERANKER_LOADING.replace("{library_class}", "CrossEncoder"),
    "seq2seq_query_rewriter": """```python
from lightning_modules.rewriter_inference import ExportedQueryRewriter  # the app's loader

rewriter = ExportedQueryRewriter("{folder}")  # input format and respelling included
rewriter.rewrite(["when did they disband?"], [["Frank Zappa"]], n=3)

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # or the plain library

model = AutoModelForSeq2SeqLM.from_pretrained("{folder}")
```""",
}


def model_card(metadata: dict[str, Any], folder_name: str = "path/to/this/folder") -> str:
    """The export's README.md, from its metadata alone: what the model is, what it was trained
    on and with, how it validated against the baseline the app already has, how to load it."""
    architecture = metadata.get("architecture", "model")
    training = metadata.get("training") or {}
    lines = [
        "---",
        "tags: [feedback-finetuning, " + architecture + "]",
        f"base_model: {metadata.get('base_model')}",
        "---",
        "",
        f"# {architecture} fine-tuned on user feedback",
        "",
        f"Fine-tuned with feedback-finetuning (from what a search app's users picked) from "
        f"`{metadata.get('base_model')}`"
        + (f", warm-started from `{metadata['init_from']}`" if metadata.get("init_from") else "")
        + ".",
        "",
        "## Training",
        "",
        f"- Objective: {training.get('loss', 'unknown')}",
    ]
    data = training.get("data")
    if data:
        files = ", ".join(f"`{f}`" for f in data.get("train_files", []))
        lines.append(f"- Data: {files} (content hash `{data.get('content_hash')}`)")
        if data.get("val_files"):
            lines.append("- Validation data: " + ", ".join(f"`{f}`" for f in data["val_files"]))
    validation = training.get("validation")
    if validation:
        text = f"- Validation `{validation['metric']}`: {validation['value']:.4f}"
        if "baseline" in validation:
            text += (
                f" against {validation['baseline']:.4f} for the baseline the app already has"
                f" (`{validation['baseline_metric']}`), lift {validation['lift']:+.4f}"
            )
        lines.append(text + f" (epoch {validation['epoch']})")
    else:
        lines.append("- Validation: not recorded (exported outside a fit)")
    recipe = training.get("recipe") or {}
    if recipe:
        lines += ["", "Recipe (the model's arguments):", "", "```json"]
        lines += [json.dumps(recipe, indent=2, sort_keys=True, default=str), "```"]
    inputs = {
        k: metadata[k]
        for k in ("document_template", "input_format", "max_length", "max_query_length")
        if metadata.get(k) is not None
    }
    if inputs:
        lines += ["", "## Inputs", "", "The app must build inputs as training did:", "", "```json"]
        lines += [json.dumps(inputs, indent=2, default=str), "```"]
    if metadata.get("onnx"):
        lines += ["", "ONNX files (CPU inference) are listed in `" + EXPORT_METADATA_FILE + "`."]
    loading = _LOADING.get(architecture)
    if loading:
        lines += ["", "## How to load it", "", loading.format(folder=folder_name)]
    lines += [
        "",
        f"Everything above, machine-readable: `{EXPORT_METADATA_FILE}`.",
        "",
    ]
    return "\n".join(lines)


def write_atomically(
    target: Path, write: Callable[[Path], None], *, overwrite: bool = False
) -> Path:
    """Run ``write(folder)`` on a fresh folder next to ``target``, then move it into place.

    The target appears complete or not at all: a crash mid-write leaves only a temporary
    folder. An existing target is never touched unless ``overwrite``; then it is replaced by a
    rename, and removed only once the new folder is in place.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=true to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(staging)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, backup / target.name)
            os.replace(staging, target)
            shutil.rmtree(backup)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def export_folder(
    target: str | Path,
    save_model: Callable[[Path], dict[str, Any] | None],
    metadata: dict,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``save_model(folder)`` and :data:`EXPORT_METADATA_FILE` atomically to ``target``.

    ``save_model`` may return more metadata (what it wrote besides the weights, e.g. ONNX
    files); it is merged into ``metadata``.
    """

    def write(folder: Path) -> None:
        written = save_model(folder) or {}
        contents = {**metadata, **written}
        (folder / EXPORT_METADATA_FILE).write_text(json.dumps(contents, indent=2) + "\n")
        # (replaces the generic card a library may have written with the weights)
        (folder / MODEL_CARD_FILE).write_text(model_card(contents, Path(target).name))

    return write_atomically(Path(target), write, overwrite=overwrite)


def read_export_metadata(folder: str | Path, architecture: str) -> dict:
    """The metadata of an export this project wrote, checked to be of ``architecture``.

    Used to warm-start from a deployed model: a folder that is not such an export, or holds
    another kind of model, is refused with what was found instead.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"init_from: {folder} is not a folder")
    path = folder / EXPORT_METADATA_FILE
    if not path.is_file():
        raise ValueError(
            f"init_from: {folder} has no {EXPORT_METADATA_FILE}: it is not a model exported by "
            "this project (export one with `main.py export`, or use model_name_or_path for a "
            "base model)"
        )
    metadata = json.loads(path.read_text())
    if metadata.get("architecture") != architecture:
        raise ValueError(
            f"init_from: {folder} holds a {metadata.get('architecture')!r} model, "
            f"this run trains a {architecture!r} one"
        )
    return metadata


def save_sentence_transformer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    *,
    max_seq_length: int,
    normalize: bool,
) -> None:
    """Save a backbone as a SentenceTransformer: Transformer -> mean pooling [-> Normalize]."""
    from sentence_transformers import SentenceTransformer, models

    with tempfile.TemporaryDirectory() as raw:
        model.save_pretrained(raw, safe_serialization=True)
        tokenizer.save_pretrained(raw)
        transformer = models.Transformer(raw, max_seq_length=max_seq_length)
        pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
        modules = [transformer, pooling] + ([models.Normalize()] if normalize else [])
        SentenceTransformer(modules=modules, device="cpu").save(str(folder))
