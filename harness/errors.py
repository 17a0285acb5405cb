"""Error types and exit codes.

Two kinds of failure must never be confused:
- FAIL: the kernel under test misbehaved (a scenario verdict, exit 1);
- ERROR: bad input, a missing tool, or a fault of the harness or its
  infrastructure (an exception derived from HarnessError, exit 2).
"""

from __future__ import annotations

import enum
from pathlib import Path


class ExitCode(enum.IntEnum):
    OK = 0
    FAIL = 1
    ERROR = 2
    INTERRUPTED = 130  # 128 + SIGINT; other signals give 128 + their number


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP: unwinds like Ctrl-C (QEMU torn down,
    finished results kept), and the exit code is 128 + the signal."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum = signum
        self.name = name


class HarnessError(Exception):
    """An ERROR: reported as one line naming what is at fault, exit code 2.

    `series_defect` marks a problem of the patch series under test (it does
    not apply, does not build, drops a requested option): in a command given
    a series that is the series' FAIL (exit 1), not bad input: the rule is
    harness.report.verdicts.failure_verdict."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, series_defect: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.series_defect = series_defect

    def __str__(self) -> str:
        return self.message


class ConfigError(HarnessError):
    """A target, profile, scenario or fragment file is malformed or unknown."""


class ToolMissingError(HarnessError):
    """A host tool (cross compiler, QEMU, apt-get ...) is not installed."""


class SourceError(HarnessError):
    """The kernel source cannot be found or unpacked."""


class PatchError(HarnessError):
    """A patch of the series does not apply, or the series cannot be read."""


class KconfigError(HarnessError):
    """A requested config option did not survive olddefconfig."""


class BuildError(HarnessError):
    """make failed (the kernel does not build with this config/toolchain).
    `summary` says what failed (the first error), `log` where make's output
    is: fields, so that a report (series check) never parses the message."""

    def __init__(self, summary: str, log: Path | None = None, series_defect: bool = False) -> None:
        super().__init__(f"{summary} (log: {log})" if log is not None else summary, series_defect)
        self.summary = summary
        self.log = log


class ImageError(HarnessError):
    """The initramfs or a guest helper could not be built."""


class MachineError(HarnessError):
    """QEMU could not be started or controlled."""


class SessionError(HarnessError):
    """The serial or SSH transport broke (not a kernel verdict)."""


class GuestFailure(Exception):
    """The kernel under test stopped doing its job in a way a transport
    found (it hung, or its network died): a FAIL of the kernel, not an
    ERROR. `evidence` is plain data for the result (console tail, vCPU PCs,
    IOMMU faults)."""

    kind = "guest"

    def __init__(self, reason: str, evidence: dict[str, object] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence or {}

    def __str__(self) -> str:
        return self.reason


class GuestHung(GuestFailure):
    """Positive evidence that the guest stopped: it does not answer an active
    probe while the host had CPU to give it."""

    kind = "hang"


class StepStuck(GuestFailure):
    """The guest answers, but the step's process makes no progress: it
    sleeps uninterruptibly in the same place, without CPU time, across
    liveness probes. The reason names where (wchan, kernel stack)."""

    kind = "stuck"


class GuestNetworkUnusable(GuestFailure):
    """SSH does not come up although the guest answers on serial and its
    SSH daemon runs: the kernel's network path (e.g. the NIC's DMA) is broken."""

    kind = "network"
