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
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from harness import ui


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
    def lock(self, key: str, what: str | None = None, stage: str = "cache") -> Iterator[None]:
        """Hold `key` against other processes. Waiting for one that holds
        it is said at once and every WAIT_REPORT_S, with its pid and since
        when (`what` names what it does, e.g. "another build of X"): a wait
        of minutes is never silent."""
        with (self.root / ".locks" / key).open("a+") as f:
            _acquire(f, what or f"another process using {self.root.name}/{key[:16]}", stage)
            try:
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()} {time.time():.0f}\n")
                f.flush()
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


WAIT_REPORT_S = 30.0


def _holder(f: IO[str]) -> str:
    """Who holds the lock, as its holder wrote it when it took it."""
    f.seek(0)
    fields = f.read().split()
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
        since = time.strftime("%H:%M:%S", time.localtime(int(fields[1])))
        return f"lock held by pid {fields[0]} since {since}"
    return "lock held by another process"


def _acquire(f: IO[str], what: str, stage: str) -> None:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    next_report = 0.0
    while True:
        now = time.monotonic()
        if now >= next_report:
            ui.info(stage, f"waiting for {what} ({_holder(f)})")
            next_report = now + WAIT_REPORT_S
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.2)


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
