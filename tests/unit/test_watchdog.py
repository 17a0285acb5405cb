"""The cell watchdog (#22): a cell stuck in a harness wait ends as an ERROR
naming the call, with every harness thread's stack in its evidence; its
guest is killed and the next cell runs on a fresh boot. The stuck wait is
made with the test-only fault injection PKVM_HARNESS_TEST_STUCK_WAIT: the
unbounded paramiko channel open of the issue, against an SSH server that
never opens channels."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from harness import pipeline, watchdog
from harness.config import Registry
from harness.config.models import Profile, Scenario
from harness.config.registry import load_scenario
from harness.machine import QemuMachine
from harness.report import RunRecorder, Verdict
from harness.scenario import capabilities
from harness.session.deadline import STUCK_WAIT_ENV
from harness.session.guest import BootOutcome, Guest
from harness.session.liveness import LivenessPolicy
from harness.session.ssh import SshKey
from tests.unit.fake_sshd import FakeSshd
from tests.unit.test_guest_deadlines import FakeMachine


class KillableMachine(FakeMachine):
    """Killing "QEMU" cuts the SSH connections and ends the console shell."""

    def __init__(self, serial: socket.socket, proc: subprocess.Popen[bytes], sshd: FakeSshd) -> None:
        super().__init__(serial, proc, sshd.port)
        self.sshd = sshd
        self.killed = False

    def kill(self) -> None:
        self.killed = True
        self.sshd.kill()
        self.proc.kill()


def scenario(tmp_path: Path, name: str, transport: str, command: str) -> Scenario:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nsteps:\n  - name: one\n    transport: {transport}\n"
        f"    run: '{command}'\n    timeout_s: 1\n"
    )
    return load_scenario(path)


def test_a_cell_stuck_in_a_harness_wait_is_an_error_naming_it_and_the_next_cell_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STUCK_WAIT_ENV, "ssh-open-session")
    monkeypatch.setattr(watchdog, "CELL_MARGIN_S", 3.0)
    monkeypatch.setattr(watchdog, "STEP_SLACK_S", 0.0)
    machines: list[KillableMachine] = []

    @contextlib.contextmanager
    def booted_guest(
        profile: Profile, kernel: Path, image: object, run_dir: Path, *rest: Any
    ) -> Iterator[Guest]:
        run_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        proc = subprocess.Popen(["/bin/sh", "-i"], stdin=fd, stdout=fd, stderr=fd)
        theirs.close()
        with FakeSshd("no-channel") as sshd:
            machine = KillableMachine(ours, proc, sshd)
            machines.append(machine)
            guest = Guest(
                cast(QemuMachine, machine), SshKey.generate(), run_dir / "console.log", LivenessPolicy()
            )
            guest.serial.prepare()
            guest.boot_outcome = BootOutcome(True, Verdict.PASS, "", 1.0)
            try:
                yield guest
            finally:
                guest.close()
                ours.close()
                proc.kill()
                proc.wait()

    monkeypatch.setattr(pipeline, "booted_guest", booted_guest)
    monkeypatch.setattr(capabilities, "probe", lambda guest, kernel, features: features)
    reg = Registry()
    profile = reg.profile("smmuv3-nested")
    stuck, after = scenario(tmp_path, "stuck", "ssh", "true"), scenario(tmp_path, "after", "serial", "true")
    request = pipeline.RunRequest(
        reg.target("mainline-7.3"), (profile,), (stuck, after), tmp_path / "out", retries=0
    )
    recorder = RunRecorder(request.output, "test", "qemu", "test")
    recorder.plan(request.cells())
    kernel = SimpleNamespace(image=tmp_path / "Image", system_map=tmp_path / "System.map")
    artifacts = cast(pipeline.Artifacts, SimpleNamespace(kernel=kernel, image=SimpleNamespace()))

    pipeline._ProfileRun(request, artifacts, profile, recorder).run()

    results = {r.scenario: r for r in recorder.snapshot().results}
    first = results["stuck"]
    assert first.verdict == Verdict.ERROR
    assert first.reason.startswith("harness stuck: no result within 4s (its step timeouts plus margin)")
    assert "called from harness.session.ssh.SshSession.run line" in first.reason
    assert "the call did not return" not in first.reason  # killing QEMU released it
    threads = first.evidence["harness_threads"]
    assert isinstance(threads, dict) and any(name.startswith("cell:stuck") for name in threads)
    assert any("open_session" in line for stack in threads.values() for line in stack)
    assert "console_tail" in first.evidence and "vcpus" in first.evidence
    assert machines[0].killed
    # The next cell: a fresh boot, and it ran.
    assert results["after"].verdict == Verdict.PASS, results["after"].reason
    assert len(machines) == 2 and not machines[1].killed
    assert results["after"].boot == "mainline-7.3/smmuv3-nested-2"


def test_a_cell_that_finishes_returns_its_value_and_its_exceptions_reach_the_caller() -> None:
    assert watchdog.run_within(lambda: 42, 10, "cell") == 42

    def interrupted() -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        watchdog.run_within(interrupted, 10, "cell")


HARNESS = str(Path(watchdog.__file__).resolve().parent)


def test_a_worker_polling_the_guest_is_waiting_on_the_guest_not_stuck() -> None:
    stack = [
        ("harness.pipeline", "BootedCells._run", f"{HARNESS}/pipeline.py", 200),
        ("harness.session.serial", "SerialSession.expect", f"{HARNESS}/session/serial.py", 70),
        ("pexpect.spawnbase", "SpawnBase.expect_list", "/venv/pexpect/spawnbase.py", 372),
        ("pexpect.expect", "Expecter.expect_loop", "/venv/pexpect/expect.py", 169),
    ]
    call, harness_wait = watchdog.classify(stack)
    assert not harness_wait
    assert call.startswith("pexpect.expect.Expecter.expect_loop (expect.py:169), called from")
    ssh_loop = [("harness.session.ssh", "SshSession.run", f"{HARNESS}/session/ssh.py", 165)]
    assert watchdog.classify(ssh_loop) == ("harness.session.ssh.SshSession.run (ssh.py:165)", False)


def test_a_worker_in_a_lock_or_qmp_is_stuck_in_the_harness() -> None:
    stack = [
        ("harness.session.guest", "Guest.qmp", f"{HARNESS}/session/guest.py", 460),
        ("harness.machine.qemu", "QemuMachine.command", f"{HARNESS}/machine/qemu.py", 210),
        ("qemu.qmp.legacy", "QEMUMonitorProtocol.cmd", "/venv/qemu/qmp/legacy.py", 218),
        ("asyncio.base_events", "BaseEventLoop.run_until_complete", "/py/asyncio/base_events.py", 640),
    ]
    call, harness_wait = watchdog.classify(stack)
    assert harness_wait
    assert call == (
        "asyncio.base_events.BaseEventLoop.run_until_complete (base_events.py:640),"
        " called from harness.machine.qemu.QemuMachine.command line 210"
    )
