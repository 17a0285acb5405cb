"""Guest over real transports on this host: a /bin/sh on a socket is the
serial console, tests/unit/fake_sshd the guest's dropbear behind QEMU's
user-mode network. A dead SSH path is an answer within the hang window
(issue #22), never a wait."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from harness.errors import GuestNetworkUnusable, MachineError
from harness.machine import QemuMachine
from harness.session import transports
from harness.session.guest import Guest
from harness.session.liveness import LivenessPolicy
from harness.session.ssh import SshKey
from tests.unit.fake_sshd import FakeSshd

HANG_WINDOW_S = 25  # what the README promises for a hang or a dead network


class FakeMachine:
    """What Guest needs of QemuMachine: the serial socket, the SSH port, the
    process (here the shell) and QMP (which never answers here)."""

    def __init__(self, serial: socket.socket, proc: subprocess.Popen[bytes], ssh_port: int) -> None:
        self.serial = serial
        self.proc = proc
        self.spec = SimpleNamespace(ssh_port=ssh_port)
        self.launched_at = None
        self.returncode = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def command(self, name: str, **args: Any) -> Any:
        raise MachineError(f"QMP {name}: no QMP here")

    def stderr_tail(self, lines: int = 5) -> list[str]:
        return []


@pytest.fixture
def sshd() -> Iterator[FakeSshd]:
    with FakeSshd("no-channel") as server:
        yield server


@pytest.fixture
def guest(tmp_path: Path, sshd: FakeSshd) -> Iterator[Guest]:
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    proc = subprocess.Popen(["/bin/sh", "-i"], stdin=fd, stdout=fd, stderr=fd)
    theirs.close()
    machine = FakeMachine(ours, proc, sshd.port)
    g = Guest(cast(QemuMachine, machine), SshKey.generate(), tmp_path / "console.log", LivenessPolicy())
    g.serial.prepare()
    g.ssh()  # connected, as after boot: the handshake works, channels never open
    yield g
    g.close()
    ours.close()
    proc.kill()
    proc.wait()


def test_an_ssh_probe_without_a_channel_answers_with_what_it_saw(guest: Guest) -> None:
    start = time.monotonic()
    probe = guest.monitor.probe_alive("ssh")
    assert time.monotonic() - start < HANG_WINDOW_S
    assert probe.answered is False and probe.ended == "no-channel"
    assert probe.detail == "ssh: TCP open, no channel within 5 s"
    assert guest.monitor.probe_alive("serial").answered is True


def test_ssh_dead_while_serial_answers_is_the_kernels_network_fail(
    guest: Guest, sshd: FakeSshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guest's own view, as the diagnosis would print it on a guest
    # whose NIC stopped receiving: dropbear runs, the key is there.
    view = "nic=0000:00:01.0 driver=virtio-pci operstate=up rx_packets=7 dropbear=running key=present"
    monkeypatch.setattr(transports, "NET_DIAGNOSIS", "".join(f"echo {kv}\n" for kv in view.split()))
    sshd.banner = False  # and new connections get nowhere either
    start = time.monotonic()
    with pytest.raises(GuestNetworkUnusable) as failed:
        guest.run("ssh", "uname -a", timeout=600)
    assert time.monotonic() - start < HANG_WINDOW_S
    assert failed.value.reason.startswith("guest network unusable")
    assert "the NIC received nothing while the host connected" in failed.value.reason
    assert "TCP open, no channel within 5 s" in str(failed.value.evidence["ssh_error"])
    assert guest.hang is None  # the guest lives: not a hang
