"""Human-facing progress messages. They go to stderr so that stdout stays
machine-readable (e.g. `list --json`)."""

from __future__ import annotations

import sys
import time


def info(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


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
