"""QEMU never outlives the harness: Ctrl-C, SIGTERM, or SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import qemu_pids


def start_boot(tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "boot",
            "--target",
            "mainline-7.3",
            "--profile",
            "smmuv3-nested",
            "--output",
            str(tmp_path),
            "-c",
            "sleep 120",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_leaves_no_qemu(tmp_path: Path, sig: signal.Signals) -> None:
    proc = start_boot(tmp_path)
    console = tmp_path / "console.log"
    try:
        wait_for(lambda: console.exists() and "PKVM-HARNESS-READY" in console.read_text(), 600)
        ours = qemu_pids(str(tmp_path))
        assert len(ours) == 1
        os.kill(proc.pid, sig)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert rc == 128 + sig  # 130, 143
    wait_for(lambda: not (qemu_pids() & ours), 10)
