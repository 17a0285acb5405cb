"""A booted guest: one QEMU machine, its serial shell, a log watcher on the
console stream, and an SSH session on demand.

This is where "the kernel died" (FAIL) and "the harness or QEMU broke"
(ERROR) are told apart for a boot."""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.config.models import Profile, Transport
from harness.errors import SessionError
from harness.image import GuestImage
from harness.image.initramfs import READY_MARKER
from harness.logwatch import Event, LogWatcher
from harness.logwatch.signatures import fatal_stream_patterns
from harness.machine import MachineSpec, QemuMachine
from harness.machine.profile import kernel_cmdline
from harness.machine.qemu import free_port
from harness.session.base import Completed
from harness.session.serial import SerialSession
from harness.session.ssh import SshKey, SshSession

_READY = re.compile(re.escape(READY_MARKER) + r" (\S+)\r?\n")


@dataclass(frozen=True)
class BootOutcome:
    ready: bool
    verdict: str  # "pass" | "fail" | "error"
    reason: str
    seconds: float  # from `cont` to the readiness marker (or to the end)
    fatal: Event | None = None
    since_launch: float | None = None  # from starting QEMU to the marker


class Guest:
    def __init__(self, machine: QemuMachine, key: SshKey, console_log: Path) -> None:
        self.machine = machine
        self.key = key
        self.console_log = console_log
        self.watcher = LogWatcher()
        assert machine.serial is not None
        self.serial = SerialSession(
            machine.serial, observer=self.watcher, abort_patterns=fatal_stream_patterns()
        )
        self._ssh: SshSession | None = None
        self.boot_outcome: BootOutcome | None = None
        self.ssh_connect_s: float | None = None
        # The console must be read all the time, not only during serial
        # commands: QEMU's PL011 writes it one byte per socket write, a
        # few hundred unread bytes fill the socket, and then the guest
        # spins in its console driver (a fault storm during an SSH step
        # froze the guest). The pump reads whenever no command does.
        self._serial_lock = threading.Lock()
        self._serial_wanted = threading.Event()
        self._pump_stop = threading.Event()
        self._pump: threading.Thread | None = None

    @property
    def dead(self) -> bool:
        return self.watcher.fatal is not None or not self.machine.alive()

    def wait_ready(self, timeout: float) -> BootOutcome:
        start = time.monotonic()
        self.machine.resume()
        what, _ = self.serial.expect([_READY], timeout)
        marker_at = time.monotonic()
        elapsed = marker_at - start
        if what == "match:0":
            launched = self.machine.launched_at
            since_launch = marker_at - launched if launched is not None else None
            self.serial.prepare()
            outcome = BootOutcome(True, "pass", "", elapsed, since_launch=since_launch)
            self._start_pump()
        else:
            outcome = self._boot_failed(what, elapsed, timeout)
        self.boot_outcome = outcome
        return outcome

    def _boot_failed(self, what: str, elapsed: float, timeout: float) -> BootOutcome:
        if what == "abort":
            self.serial.drain(quiet_s=1.5, limit_s=10)
        self.watcher.finish()
        fatal = self.watcher.fatal
        if fatal is not None:
            return BootOutcome(False, "fail", f"boot: {fatal.summary()}", elapsed, fatal)
        if what == "eof":
            tail = "; ".join(self.machine.stderr_tail(3)) or "no QEMU output"
            if self.machine.alive():
                return BootOutcome(False, "error", "serial console closed during boot", elapsed)
            return BootOutcome(False, "error", f"QEMU exited during boot: {tail}", elapsed)
        last = _last_console_line(self.console_log)
        return BootOutcome(
            False,
            "fail",
            f"boot: no readiness marker within {timeout:.0f}s (last console line: {last!r})",
            elapsed,
        )

    def _start_pump(self) -> None:
        self._pump = threading.Thread(target=self._pump_loop, name="console-pump", daemon=True)
        self._pump.start()

    def _pump_loop(self) -> None:
        while not self._pump_stop.is_set():
            if self._serial_wanted.is_set():
                time.sleep(0.002)
                continue
            with self._serial_lock:
                alive = self.serial.read_available(timeout=0.05)
            if not alive:
                return

    @contextlib.contextmanager
    def _serial_owned(self) -> Iterator[SerialSession]:
        self._serial_wanted.set()
        try:
            with self._serial_lock:
                yield self.serial
        finally:
            self._serial_wanted.clear()

    def interactive_console(self) -> contextlib.AbstractContextManager[SerialSession]:
        """The serial session for a human (`pkvm-harness boot`), pump paused."""
        return self._serial_owned()

    def ssh(self) -> SshSession:
        if self._ssh is None:
            session = SshSession(self.machine.spec.ssh_port, self.key)
            self.ssh_connect_s = session.connect()
            self._ssh = session
        return self._ssh

    def run(self, transport: Transport, command: str, timeout: float) -> Completed:
        if transport == "ssh":
            result = self.ssh().run(command, timeout, abort=lambda: self.watcher.fatal is not None)
        else:
            with self._serial_owned() as serial:
                result = serial.run(command, timeout)
        if result.ended_by in ("kernel-fatal", "eof"):
            with self._serial_owned() as serial:
                serial.drain(quiet_s=1.5, limit_s=10)
            self.watcher.finish()
        return result

    def sync_console(self, timeout: float = 15.0) -> None:
        """A serial round trip: everything the kernel printed before it has
        then reached the watcher (needed after SSH steps, whose kernel
        messages arrive on the console, not on the SSH channel)."""
        if self.dead:
            return
        result = self.run("serial", ":", timeout)
        if result.status is None and result.ended_by == "timeout":
            raise SessionError(f"serial console did not answer within {timeout}s")

    def settle(self, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
        """Wait until the console has been quiet for `quiet_s`: messages a
        step caused but the kernel printed late (IRQ threads, rate-limited
        reports) then count for that step, not the next one."""
        self.sync_console()
        deadline = time.monotonic() + limit_s
        seen, since = self.watcher.lines_seen, time.monotonic()
        while time.monotonic() < deadline and not self.dead:
            time.sleep(0.05)
            if self.watcher.lines_seen != seen:
                seen, since = self.watcher.lines_seen, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return

    def events_since(self, line: int) -> list[Event]:
        return self.watcher.since(line)

    def qmp(
        self, command: str, arguments: Mapping[str, object], wait_event: str | None, timeout: float
    ) -> dict[str, object] | None:
        """Send a QMP command; with `wait_event`, return that event (None if
        it did not come within `timeout`)."""
        self.machine.command(command, **arguments)
        if wait_event is None:
            return None
        return self.machine.wait_event(wait_event, timeout)

    def close(self) -> None:
        self._pump_stop.set()
        if self._pump is not None:
            self._pump.join(timeout=2)
        if self._ssh is not None:
            self._ssh.close()
        self.serial.close()


def _last_console_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


@contextlib.contextmanager
def booted_guest(
    profile: Profile,
    kernel_image: Path,
    image: GuestImage,
    run_dir: Path,
    extra_cmdline: tuple[str, ...] = (),
    boot_timeout: float = 120.0,
) -> Iterator[Guest]:
    """Start QEMU for `profile` and wait for the guest (the outcome is in
    guest.boot_outcome: a failed boot is a result, not an exception)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = SshKey.generate()
    initrd = image.with_overlay(
        {"root/.ssh/authorized_keys": (key.public_line.encode() + b"\n", 0o600)},
        run_dir / "initramfs.cpio",
    )
    console_log = run_dir / "console.log"
    scratch = None
    if profile.scratch_disk_mb:
        scratch = run_dir / "scratch.img"
        with scratch.open("wb") as f:  # sparse: costs no disk until written
            f.truncate(profile.scratch_disk_mb << 20)
    # Sockets in a short path: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="pkvmh-") as sockdir:
        spec = MachineSpec(
            profile=profile,
            kernel=kernel_image,
            initrd=initrd,
            cmdline=kernel_cmdline(profile, extra_cmdline),
            serial_socket=Path(sockdir) / "serial",
            qmp_socket=Path(sockdir) / "qmp",
            console_log=console_log,
            ssh_port=free_port(),
            scratch_disk=scratch,
        )
        with QemuMachine(spec, run_dir) as machine:
            guest = Guest(machine, key, console_log)
            try:
                guest.wait_ready(boot_timeout)
                yield guest
            finally:
                guest.close()
