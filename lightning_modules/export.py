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
