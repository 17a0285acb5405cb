"""Error types and exit codes.

Two kinds of failure must never be confused:
- FAIL: the kernel under test misbehaved (a scenario verdict, exit 1);
- ERROR: bad input, a missing tool, or a fault of the harness or its
  infrastructure (an exception derived from HarnessError, exit 2).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAIL = 1
    ERROR = 2
    INTERRUPTED = 130


class HarnessError(Exception):
    """An ERROR: reported as one line naming what is at fault, exit code 2."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

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
    """make failed (the kernel does not build with this config/toolchain)."""


class ImageError(HarnessError):
    """The initramfs or a guest helper could not be built."""


class MachineError(HarnessError):
    """QEMU could not be started or controlled."""


class SessionError(HarnessError):
    """The serial or SSH transport broke (not a kernel verdict)."""
