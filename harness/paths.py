"""Where the harness finds its data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

# The repository root: data directories (targets/, profiles/, ...) sit beside
# the package so an editable install and a plain checkout behave the same.
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    return REPO_ROOT / name


def cache_root() -> Path:
    """Content-addressed caches live outside the checkout so that a fresh
    clone on the same machine (CI) reuses kernels already built."""
    env = os.environ.get("PKVM_HARNESS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pkvm-harness"


def source_dir() -> Path:
    """Kernel source tarballs installed by ci/setup-host.sh."""
    return Path(os.environ.get("PKVM_HARNESS_SOURCES", "/var/cache/pkvm-harness/sources"))
