"""A content-addressed store: entries are directories named by a digest of
everything that determines their content, written atomically (staged, then
renamed into place) under a per-key lock so concurrent runs don't collide.

Shared by the kernel and image stages; keys are computed by the stage that
knows what its artifact depends on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def digest(parts: Iterable[str | bytes]) -> str:
    """sha256 over length-prefixed parts (so ("ab","c") != ("a","bc"))."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ContentStore:
    """root/<key>/ holds one entry; root/index/<alias> maps a cheap input key
    to the content key it produced, so warm lookups need no work at all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "index").mkdir(parents=True, exist_ok=True)
        (root / ".locks").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        p = self.path(key)
        return p if (p / ".complete").exists() else None

    def alias(self, alias: str) -> Path | None:
        link = self.root / "index" / alias
        try:
            key = link.read_text().strip()
        except FileNotFoundError:
            return None
        return self.get(key)

    def set_alias(self, alias: str, key: str) -> None:
        _atomic_write(self.root / "index" / alias, key + "\n")

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        with (self.root / ".locks" / key).open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def stage(self, key: str) -> Iterator[Path]:
        """Yield an empty staging dir; on success it becomes the entry."""
        tmp = Path(tempfile.mkdtemp(prefix=f".stage-{key[:12]}-", dir=self.root))
        try:
            yield tmp
            (tmp / ".complete").write_text("")
            dest = self.path(key)
            if dest.exists():  # an incomplete leftover from a killed run
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: object) -> None:
    _atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class DigestMemo:
    """Remembers file digests by (path, size, mtime) so that hashing a large
    source tarball happens once, not on every run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, str] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.entries = {}

    def file_digest(self, file: Path) -> str:
        st = file.stat()
        memo_key = f"{file.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if memo_key not in self.entries:
            self.entries[memo_key] = file_digest(file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, json.dumps(self.entries, indent=1))
        return self.entries[memo_key]
