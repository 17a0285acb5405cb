"""The serial run() contract against a real /bin/sh on a socket (the same
transport QEMU's chardev gives)."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator

import pytest

from harness.logwatch import LogWatcher
from harness.session.serial import SerialSession


@pytest.fixture
def shell() -> Iterator[tuple[SerialSession, LogWatcher]]:
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    proc = subprocess.Popen(["/bin/sh", "-i"], stdin=fd, stdout=fd, stderr=fd)
    theirs.close()
    watcher = LogWatcher()
    session = SerialSession(
        ours, observer=watcher, abort_patterns=[re.compile(r"Kernel panic - not syncing")]
    )
    session.prepare()
    yield session, watcher
    session.close()
    ours.close()
    proc.kill()
    proc.wait()


def test_output_and_status(shell: tuple[SerialSession, LogWatcher]) -> None:
    session, _ = shell
    r = session.run("echo hello; echo world", timeout=5)
    assert (r.output, r.status, r.ended_by) == ("hello\nworld", 0, "exit")
    assert session.run("exit_code() { return 3; }; exit_code", timeout=5).status == 3


def test_multiline_script_and_stdin_is_closed(shell: tuple[SerialSession, LogWatcher]) -> None:
    session, _ = shell
    r = session.run("for i in 1 2 3; do\n  echo n$i\ndone\ncat", timeout=5)
    assert r.output == "n1\nn2\nn3" and r.status == 0


def test_timeout_is_reported_not_raised(shell: tuple[SerialSession, LogWatcher]) -> None:
    session, _ = shell
    r = session.run("sleep 3", timeout=0.5)
    assert r.status is None and r.ended_by == "timeout"


def test_fatal_pattern_aborts_the_wait_and_reaches_the_watcher(
    shell: tuple[SerialSession, LogWatcher],
) -> None:
    session, watcher = shell
    r = session.run("echo 'Kernel panic - not syncing: test'; sleep 5", timeout=10)
    assert r.ended_by == "kernel-fatal" and r.duration_s < 4
    watcher.feed("\n")
    assert watcher.fatal is not None and watcher.fatal.fields["reason"] == "test"


def test_exit_in_a_command_does_not_end_the_console_shell(
    shell: tuple[SerialSession, LogWatcher],
) -> None:
    session, _ = shell
    assert session.run("echo bye; exit 4", timeout=5).status == 4
    assert session.run("echo still-here", timeout=5).output == "still-here"
