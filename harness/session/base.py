from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, get_args

# How a command ended, every value a transport or a guest produces:
# - "exit": it finished (`status` is its exit status);
# - "timeout": its own timeout passed;
# - "eof": the console or connection ended (QEMU gone);
# - "kernel-fatal": the kernel under test crashed (a fatal log event);
# - "connection-lost": SSH's connection broke while QEMU still runs;
# - "no-channel": SSH is connected, but no command channel could be opened
#   and started within its deadline;
# - "hang": the guest stopped answering an active liveness probe;
# - "stuck": the guest answers, but the step's process makes no progress.
EndedBy = Literal["exit", "timeout", "eof", "kernel-fatal", "connection-lost", "no-channel", "hang", "stuck"]
ENDINGS: tuple[EndedBy, ...] = get_args(EndedBy)


def ending(value: str) -> EndedBy:
    """`value` (a transport's own word, e.g. pexpect's) as an EndedBy; any
    other value is a harness bug, not a way a command can end."""
    if value not in ENDINGS:
        raise ValueError(f"not a way a command ends: {value!r} (one of {', '.join(ENDINGS)})")
    return value


@dataclass(frozen=True)
class Completed:
    """What a command did. status is None when it did not finish (timeout, or
    the guest went away); `ended_by` says which."""

    command: str
    output: str
    status: int | None
    duration_s: float
    ended_by: EndedBy = "exit"
    detail: str = ""  # what the transport saw, when it did not finish (evidence, not output)

    @property
    def ok(self) -> bool:
        return self.status == 0


class Session(Protocol):
    name: str

    def run(self, command: str, timeout: float) -> Completed: ...

    def close(self) -> None: ...
