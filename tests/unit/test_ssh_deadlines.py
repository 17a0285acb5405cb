"""SshSession against a real SSH server on 127.0.0.1 (tests/unit/fake_sshd):
every wait ends within its deadline, and how it ended is the answer (issue
#22: a channel that never opens used to wait forever)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from harness.errors import SessionError
from harness.session.ssh import SshKey, SshSession
from tests.unit.fake_sshd import FakeSshd, Mode

GENEROUS_S = 30  # an upper bound only: these waits take about a second
Connect = Callable[[Mode], tuple[FakeSshd, SshSession]]


@pytest.fixture
def connect() -> Iterator[Connect]:
    opened: list[tuple[FakeSshd, SshSession]] = []

    def make(mode: Mode) -> tuple[FakeSshd, SshSession]:
        sshd = FakeSshd(mode)
        session = SshSession(sshd.port, SshKey.generate(), channel_timeout_s=1.0)
        session.connect(timeout=10)
        opened.append((sshd, session))
        return sshd, session

    yield make
    for sshd, session in opened:
        session.close()
        sshd.close()


def test_a_healthy_server_runs_commands_with_stdin(connect: Connect) -> None:
    _, ssh = connect("ok")
    r = ssh.run("cat; echo done; exit 3", timeout=10, stdin=b"in\n")
    assert (r.output, r.status, r.ended_by) == ("in\ndone", 3, "exit")


def test_no_channel_within_its_deadline_is_an_answer_not_a_wait(connect: Connect) -> None:
    _, ssh = connect("no-channel")
    start = time.monotonic()
    r = ssh.run(":", timeout=600)
    assert time.monotonic() - start < GENEROUS_S
    assert r.status is None and r.ended_by == "no-channel"
    assert r.detail == "TCP open, no channel within 1 s"


def test_an_exec_never_acknowledged_ends_within_its_deadline(connect: Connect) -> None:
    _, ssh = connect("no-exec")
    start = time.monotonic()
    r = ssh.run(":", timeout=600)
    assert time.monotonic() - start < GENEROUS_S
    assert r.ended_by == "no-channel" and "exec not acknowledged" in r.detail


def test_the_step_timeout_bounds_the_channel_deadline(connect: Connect) -> None:
    _, ssh = connect("no-channel")
    ssh.channel_timeout_s = 600.0
    start = time.monotonic()
    r = ssh.run(":", timeout=1.0)
    assert time.monotonic() - start < GENEROUS_S and r.ended_by == "no-channel"


def test_a_command_past_its_timeout_ends_by_timeout(connect: Connect) -> None:
    _, ssh = connect("ok")
    r = ssh.run("sleep 10", timeout=0.5)
    assert r.status is None and r.ended_by == "timeout"


def test_a_connection_cut_under_a_command_is_lost_not_waited_for(connect: Connect) -> None:
    sshd, ssh = connect("ok")
    aborts = iter([None, None])

    def kill_then_wait(received: int) -> str | None:
        sshd.kill()
        return next(aborts, None)

    r = ssh.run("sleep 20", timeout=60, abort=kill_then_wait)
    assert r.ended_by == "connection-lost"


def test_a_server_that_never_sends_its_banner_fails_connect_within_the_deadline() -> None:
    with FakeSshd("silent") as sshd:
        ssh = SshSession(sshd.port, SshKey.generate())
        start = time.monotonic()
        with pytest.raises(SessionError, match="failed within"):
            ssh.connect(timeout=2)
        assert time.monotonic() - start < GENEROUS_S
