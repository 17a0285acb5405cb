"""The cell watchdog: a cell (one scenario on a boot) runs in a worker
thread, joined with a deadline of its step timeouts plus a margin. Every
wait in the harness has a deadline of its own; this is the net under them.
When it expires, the stacks of the harness's own threads say where the
worker is: stuck in a harness wait (a lock, a channel, QMP, a subprocess: the
harness's ERROR, naming the call) or still waiting on the guest in one of
the loops that poll it (the kernel's FAIL)."""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Generic, TypeVar

from harness.config.models import Scenario

CELL_MARGIN_S = 120.0  # fixed, per cell: the capability probe, settling, result making
STEP_SLACK_S = 30.0  # per step: the console sync after it, liveness probes at its end

# The loops that wait on the guest, polling it against their own deadline:
# a worker found in one of them (and in nothing deeper but pexpect) is
# waiting on the guest, not stuck in the harness.
GUEST_WAITS = frozenset(
    {
        ("harness.session.serial", "SerialSession.expect"),
        ("harness.session.serial", "SerialSession.drain"),
        ("harness.session.ssh", "SshSession.run"),
        ("harness.session.guest", "Guest.settle"),
    }
)
_HARNESS = str(Path(__file__).resolve().parent)
_STACK_LINES = 40  # per thread, innermost kept

T = TypeVar("T")


def cell_budget(scenario: Scenario) -> float:
    return sum(step.timeout_s + STEP_SLACK_S for step in scenario.steps) + CELL_MARGIN_S


@dataclass(frozen=True)
class Overrun:
    """A cell that did not finish within `seconds`."""

    seconds: float
    stuck_call: str  # the worker's innermost call, and the harness code it is in
    harness_wait: bool  # stuck in a harness wait, not in a loop waiting on the guest
    threads: dict[str, list[str]]  # every thread's stack, innermost last
    worker: threading.Thread

    def join(self, timeout: float) -> bool:
        """Give the worker a last chance (after QEMU was killed, which ends
        every wait on its sockets); False if it is still stuck."""
        self.worker.join(timeout)
        return not self.worker.is_alive()


@dataclass
class _Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None


def run_within(work: Callable[[], T], seconds: float, name: str) -> T | Overrun:
    """`work()` in a worker thread, waited for `seconds`: its value (its
    exception, re-raised here, including KeyboardInterrupt), or an Overrun
    taken while the worker is still where it got stuck."""
    outcome: _Outcome[T] = _Outcome()

    def run() -> None:
        try:
            outcome.value = work()
        except BaseException as exc:  # handed to the caller's thread
            outcome.error = exc

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return overrun(worker, seconds)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]  # set: the worker finished without an error


def overrun(worker: threading.Thread, seconds: float) -> Overrun:
    frames = sys._current_frames()
    names = {t.ident: t.name for t in threading.enumerate()}
    threads = {
        f"{names.get(ident, 'thread')} ({ident})": _format(frame)
        for ident, frame in frames.items()
        if ident != threading.get_ident()  # not the watchdog looking
    }
    frame = frames.get(worker.ident) if worker.ident is not None else None
    stack = _stack(frame) if frame is not None else []
    call, harness_wait = classify(stack)
    return Overrun(seconds, call, harness_wait, threads, worker)


Frame = tuple[str, str, str, int]  # module, qualname, file, line


def _stack(frame: FrameType) -> list[Frame]:
    """Outermost first, like a traceback."""
    out: list[Frame] = []
    f: FrameType | None = frame
    while f is not None:
        module = str(f.f_globals.get("__name__", "?"))
        out.append((module, f.f_code.co_qualname, f.f_code.co_filename, f.f_lineno))
        f = f.f_back
    return out[::-1]


def _format(frame: FrameType) -> list[str]:
    lines = [ln.rstrip() for entry in traceback.format_stack(frame) for ln in entry.splitlines()]
    return lines[-_STACK_LINES:]


def classify(stack: list[Frame]) -> tuple[str, bool]:
    """(the stuck call, named; whether it is a harness wait). The innermost
    harness frame tells where in the harness; anything deeper than it is
    what it called and waits in."""
    if not stack:
        return "unknown (the worker's stack is not available)", True
    module, name, path, line = stack[-1]
    call = f"{module}.{name} ({Path(path).name}:{line})"
    inside = [i for i, (_, _, p, _) in enumerate(stack) if p.startswith(_HARNESS)]
    if not inside:
        return call, True
    h_module, h_name, _, h_line = stack[inside[-1]]
    deeper = stack[inside[-1] + 1 :]
    if deeper:
        call = f"{call}, called from {h_module}.{h_name} line {h_line}"
    guest_wait = (h_module, h_name) in GUEST_WAITS and all(m.startswith("pexpect") for m, _, _, _ in deeper)
    return call, not guest_wait
