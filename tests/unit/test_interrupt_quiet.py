"""Ctrl-C at any moment of a boot gives the one clean line and exit 130,
and no traceback (issue 18): before QEMU opens its QMP socket, during the
QMP handshake, during a QMP command, and after `cont`. The machine is
tests/unit/fake_qemu.py; the command is pkvm-harness's own main()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent

DRIVER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_qmp_deadlines import spec
import harness.cli as cli
from harness.machine.qemu import QemuMachine

mode, where, tmp = sys.argv[2], sys.argv[3], Path(sys.argv[4])

def boot(args, reg):
    with QemuMachine(spec(tmp, mode), tmp / "run", start_timeout=60.0) as machine:
        if where in ("command", "after-cont"):
            machine.resume()
        print("running", flush=True)
        time.sleep(60)
    return 0

cli.cmd_list = boot  # main() as it is, around a boot
sys.exit(cli.main(["list"]))
"""


# An upper bound only: make test runs the unit tests SCHED_IDLE beside a cold
# kernel build, where starting Python and importing the harness has taken
# more than 30 s.
def _wait_for(predicate: object, timeout: float = 180.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the boot never got there"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("mode", "where"),
    [
        ("slow-start", "before-qmp"),
        ("no-greeting", "handshake"),
        ("mute", "command"),
        ("answer", "after-cont"),
    ],
)
def test_ctrl_c_during_a_boot_is_one_line_and_exit_130(tmp_path: Path, mode: str, where: str) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(HERE), mode, where, str(tmp_path)],
            stdout=o,
            stderr=e,
            env={**os.environ, "PKVM_HARNESS_CACHE": str(tmp_path / "cache")},
        )
        try:
            if where == "before-qmp":
                _wait_for(lambda: "[machine]" in err.read_text())
            elif where == "handshake":
                _wait_for(lambda: (tmp_path / "qmp").exists())
            elif where == "command":
                _wait_for(lambda: (tmp_path / "qmp").exists())
                time.sleep(1.0)  # cont sent, never answered
            else:
                _wait_for(lambda: "running" in out.read_text())
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err.read_text()
    assert rc == 130, text
    assert "Traceback" not in text and "never retrieved" not in text, text
    lines = [ln for ln in text.splitlines() if not ln.startswith("[machine]")]
    assert lines == ["pkvm-harness: interrupted by SIGINT"], text
