"""The deployment the app loads: a symbolic link to versioned copies, switched atomically, with
rollback (``python main.py rollback <deployment>``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

VERSIONS_SUFFIX = ".versions"


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


def rollback_main(argv: Sequence[str]) -> int:
    """``python main.py rollback <deployment>``: switch back to the previous version."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="python main.py rollback",
        description="Point a deployment back at the version before the current one.",
    )
    parser.add_argument("deployment", help="the path the app loads (a promoted deployment)")
    args = parser.parse_args(list(argv))
    deployment = Deployment(args.deployment)
    previous = deployment.rollback()
    print(f"{deployment.path} now points to version {previous}")
    return 0
