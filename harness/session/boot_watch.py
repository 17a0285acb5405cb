"""The boot's verdict: from `cont` to the readiness marker on the console.

This is where "the kernel did not come up" (FAIL: a crash, a stall, no
marker) and "QEMU or its console broke" (ERROR) are told apart for a boot."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.image.initramfs import READY_MARKER
from harness.logwatch import Event, LogWatcher
from harness.machine import QemuMachine
from harness.report.verdicts import Verdict
from harness.session.liveness import (
    CpuSample,
    CpuWindow,
    Evidence,
    LastSignOfLife,
    LivenessPolicy,
    describe_vcpus,
)
from harness.session.serial import SerialSession

_READY = re.compile(re.escape(READY_MARKER) + r" (\S+)\r?\n")


@dataclass(frozen=True)
class BootOutcome:
    ready: bool
    # The boot's own verdict: PASS when it came up; FAIL when the kernel did
    # not (a crash, a stall, no readiness marker); ERROR when QEMU or its
    # console did.
    verdict: Verdict
    reason: str
    seconds: float  # from `cont` to the readiness marker (or to the end)
    fatal: Event | None = None
    since_launch: float | None = None  # from starting QEMU to the marker
    evidence: Mapping[str, object] | None = None  # a stalled boot's console tail, vCPUs


@dataclass(frozen=True)
class BootWatch:
    """Resumes the machine and reads its console until the readiness
    marker, a fatal kernel message, the console's end, a stall or the boot
    timeout, whichever comes first. Nothing else reads the console then."""

    machine: QemuMachine
    serial: SerialSession
    watcher: LogWatcher
    evidence: Evidence  # and its console_log, the console's file
    policy: LivenessPolicy

    def wait_ready(self, timeout: float) -> BootOutcome:
        start = time.monotonic()
        self.machine.resume()
        life = LastSignOfLife(self.machine.pid, self.watcher.chars_seen)
        stall: list[CpuWindow] = []  # the stall's CPU window, once seen

        def stalled() -> str | None:
            """A boot that stops making progress is a FAIL long before the
            boot timeout: console silent for `boot_stall_s` while QEMU had
            CPU (a starved host only extends the wait)."""
            if life.saw(self.watcher.chars_seen) or life.silent_s < self.policy.boot_stall_s:
                return None
            window = CpuWindow.between(life.sample, CpuSample.take(self.machine.pid))
            if window.starved and life.starved < self.policy.starved_retries:
                life.starved += 1
                life.reset()
                return None
            stall.append(window)
            return "stall"

        what, _ = self.serial.expect([_READY], timeout, poll=stalled)
        marker_at = time.monotonic()
        elapsed = marker_at - start
        if what == "match:0":
            launched = self.machine.launched_at
            since_launch = marker_at - launched if launched is not None else None
            self.serial.prepare()
            return BootOutcome(True, Verdict.PASS, "", elapsed, since_launch=since_launch)
        if what == "stall" and stall:
            return self._stalled(stall[-1], elapsed)
        return self._failed(what, elapsed, timeout)

    def _stalled(self, window: CpuWindow, elapsed: float) -> BootOutcome:
        last = _last_console_line(self.evidence.console_log)
        evidence = self.evidence.collect(window)
        return BootOutcome(
            False,
            Verdict.FAIL,
            f"boot: stalled: no console output for {self.policy.boot_stall_s:.0f}s after"
            f" {last!r}; {describe_vcpus(evidence)}; {window.describe()}",
            elapsed,
            evidence=evidence,
        )

    def _failed(self, what: str, elapsed: float, timeout: float) -> BootOutcome:
        if what == "abort":
            self.serial.drain(quiet_s=1.5, limit_s=10)
        self.watcher.finish()
        fatal = self.watcher.fatal
        if fatal is not None:
            return BootOutcome(False, Verdict.FAIL, f"boot: {fatal.summary()}", elapsed, fatal)
        if what == "eof":
            tail = "; ".join(self.machine.stderr_tail(3)) or "no QEMU output"
            if self.machine.alive():
                return BootOutcome(False, Verdict.ERROR, "serial console closed during boot", elapsed)
            return BootOutcome(False, Verdict.ERROR, f"QEMU exited during boot: {tail}", elapsed)
        last = _last_console_line(self.evidence.console_log)
        return BootOutcome(
            False,
            Verdict.FAIL,
            f"boot: no readiness marker within {timeout:.0f}s (last console line: {last!r})",
            elapsed,
        )


def _last_console_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""
