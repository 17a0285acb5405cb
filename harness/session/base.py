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
    # "exit" | "timeout" | "eof" | "kernel-fatal" | "connection-lost" | "hang"
    # | "no-channel" (SSH: the connection is open, but no command channel
    # could be opened and started within its deadline)
    ended_by: str = "exit"
    detail: str = ""  # what the transport saw, when it did not finish (evidence, not output)

    @property
    def ok(self) -> bool:
        return self.status == 0


class Session(Protocol):
    name: str

    def run(self, command: str, timeout: float) -> Completed: ...

    def close(self) -> None: ...
