from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Completed:
    """What a command did. status is None when it did not finish (timeout, or
    the guest went away); `ended_by` says which."""

    command: str
    output: str
    status: int | None
    duration_s: float
    ended_by: str = "exit"  # "exit" | "timeout" | "eof" | "kernel-fatal"

    @property
    def ok(self) -> bool:
        return self.status == 0


class Session(Protocol):
    name: str

    def run(self, command: str, timeout: float) -> Completed: ...

    def close(self) -> None: ...
