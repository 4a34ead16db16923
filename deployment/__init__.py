"""Deployment and run tooling: the promotion gate, the versioned deployment and its rollback,
and the comparison of local runs; reached through ``main.py`` (promote, rollback, compare)."""
