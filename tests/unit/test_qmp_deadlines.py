"""QMP calls and QEMU's shutdown end within their deadlines even when QEMU
never answers (tests/unit/fake_qemu.py stands in for it)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from harness.config import Registry
from harness.errors import MachineError
from harness.machine import qemu
from harness.machine.profile import MachineSpec, kernel_cmdline
from harness.machine.qemu import QemuMachine

GENEROUS_S = 40  # an upper bound only


def spec(tmp_path: Path, mode: str) -> MachineSpec:
    binary = tmp_path / "qemu-system-aarch64"
    fake = Path(__file__).with_name("fake_qemu.py")
    binary.write_text(f'#!/bin/sh\nFAKE_QEMU_MODE={mode} exec {sys.executable} {fake} "$@"\n')
    binary.chmod(0o755)
    profile = Registry().profile("smmuv3-nested")
    return MachineSpec(
        profile=profile,
        kernel=tmp_path / "Image",
        initrd=tmp_path / "initrd",
        cmdline=kernel_cmdline(profile),
        serial_socket=tmp_path / "serial",
        qmp_socket=tmp_path / "qmp",
        console_log=tmp_path / "console.log",
        ssh_port=40022,
        qemu_binary=str(binary),
    )


def test_a_qemu_that_never_answers_qmp_is_a_machine_error_and_still_goes_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "QMP_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with QemuMachine(spec(tmp_path, "mute"), tmp_path / "run") as machine:
        with pytest.raises(MachineError, match="QMP query-status failed: no answer within 1s"):
            machine.command("query-status")
        assert machine.wait_event("DEVICE_DELETED", timeout=1.5) is None
        proc = machine.proc
    # shutdown: quit unanswered, SIGTERM ignored, then SIGKILL
    assert proc is not None and proc.poll() is not None
    assert time.monotonic() - start < GENEROUS_S


def test_a_qemu_that_never_greets_fails_the_launch_and_is_not_left_behind(tmp_path: Path) -> None:
    machine = QemuMachine(spec(tmp_path, "no-greeting"), tmp_path / "run", start_timeout=2.0)
    start = time.monotonic()
    with pytest.raises(MachineError, match="QMP connect failed"):
        machine.__enter__()
    assert time.monotonic() - start < GENEROUS_S
    assert machine.proc is not None and machine.proc.poll() is not None
