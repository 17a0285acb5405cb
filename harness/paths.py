"""Where the harness finds its data and keeps its caches."""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from harness.errors import ConfigError

# The repository root: in a checkout (or an editable install) the data
# directories (targets/, profiles/, scenarios/, kernel-configs/, images/,
# matrices/, kselftests/) sit beside the package.
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIRS = ("targets", "profiles", "scenarios", "kernel-configs", "images", "matrices", "kselftests")


def data_search_path() -> list[Path]:
    """Where data directories are looked for, in order:
    1. $PKVM_HARNESS_DATA (a directory holding targets/, profiles/, ...);
    2. the source tree this package was imported from;
    3. share/pkvm-harness under the installation prefix (`pip install .`
       installs the data there, see [tool.setuptools.data-files])."""
    out = []
    env = os.environ.get("PKVM_HARNESS_DATA")
    if env:
        if not Path(env).is_dir():
            raise ConfigError(
                f"PKVM_HARNESS_DATA={env}: no such directory (it names one holding targets/, ...)"
            )
        out.append(Path(env))
    out.append(REPO_ROOT)
    for prefix in dict.fromkeys((sys.prefix, sysconfig.get_path("data"))):  # ordered, no repeats
        out.append(Path(prefix) / "share" / "pkvm-harness")
    return out


def data_dir(name: str) -> Path:
    for root in data_search_path():
        if (root / name).is_dir():
            return root / name
    where = ", ".join(str(p) for p in data_search_path())
    raise ConfigError(f"data directory {name}/ not found (looked in {where}; set PKVM_HARNESS_DATA)")


def cache_root() -> Path:
    """Content-addressed caches live outside the checkout so that a fresh
    clone on the same machine (CI) reuses kernels already built."""
    env = os.environ.get("PKVM_HARNESS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pkvm-harness"


def unwritable(directory: Path) -> str | None:
    """Why this process could not write in `directory` (making it, and its
    missing parents, as needed); None if it could. Nothing is left behind:
    the probe is a directory made and removed in the deepest one that exists."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_cache() -> None:
    """The cache root is a directory this process can write in (made if
    missing): a command that builds finds out before it starts."""
    root = cache_root()
    why = unwritable(root)
    if why is not None:
        env = os.environ.get("PKVM_HARNESS_CACHE")
        where = f"PKVM_HARNESS_CACHE={env}" if env else f"cache {root} (set PKVM_HARNESS_CACHE)"
        raise ConfigError(f"{where}: cannot write there: {why}")


def source_dir() -> Path:
    """Kernel source tarballs installed by ci/setup-host.sh
    ($PKVM_HARNESS_SOURCES, which must then name a directory)."""
    env = os.environ.get("PKVM_HARNESS_SOURCES")
    if env and not Path(env).is_dir():
        raise ConfigError(
            f"PKVM_HARNESS_SOURCES={env}: no such directory (one holding linux-source-*.tar.xz)"
        )
    return Path(env or "/var/cache/pkvm-harness/sources")
