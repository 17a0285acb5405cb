"""Human-facing progress messages. They go to stderr so that stdout stays
machine-readable (e.g. `list --json`)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

_local = threading.local()
_print_lock = threading.Lock()


@contextlib.contextmanager
def prefixed(prefix: str | None) -> Iterator[None]:
    """Lines printed by this thread carry `prefix` (a matrix worker's
    target/profile), so concurrent boots stay readable."""
    old = getattr(_local, "prefix", None)
    _local.prefix = prefix
    try:
        yield
    finally:
        _local.prefix = old


def current_prefix() -> str | None:
    """This thread's prefix, for a thread it starts to carry on."""
    prefix = getattr(_local, "prefix", None)
    return prefix if isinstance(prefix, str) else None


def info(stage: str, message: str) -> None:
    prefix = getattr(_local, "prefix", None)
    line = f"[{stage}] [{prefix}] {message}" if prefix else f"[{stage}] {message}"
    with _print_lock:
        print(line, file=sys.stderr, flush=True)


class Progress:
    """Cells done of total, with an ETA from the mean time per cell so far:
    a rewritten line on a terminal, a plain line per cell otherwise."""

    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.start = time.monotonic()
        self.ticker = Ticker("progress", interval=0.0, quiet_interval=0.0)

    def update(self, done: int) -> None:
        if self.total <= 1:
            return
        elapsed = time.monotonic() - self.start
        eta = ""
        if 0 < done < self.total:
            left = elapsed / done * (self.total - done)
            eta = f", ETA {int(left // 60)}m{int(left % 60):02d}s"
        with _print_lock:
            self.ticker.update(f"{done}/{self.total} {self.what} done, {elapsed:.0f}s{eta}", force=True)

    def done(self) -> None:
        self.ticker.done()


class Ticker:
    """Rate-limited status line: rewrites itself on a terminal, prints a line
    every `quiet_interval` seconds in a CI log."""

    def __init__(self, stage: str, interval: float = 1.0, quiet_interval: float = 30.0) -> None:
        self.stage = stage
        self.tty = sys.stderr.isatty()
        self.interval = interval if self.tty else quiet_interval
        self.last = 0.0
        self.dirty = False

    def update(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        if self.tty:
            sys.stderr.write(f"\r\033[K[{self.stage}] {message}")
            self.dirty = True
        else:
            sys.stderr.write(f"[{self.stage}] {message}\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.dirty:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.dirty = False
