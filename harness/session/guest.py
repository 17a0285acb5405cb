"""A booted guest: one QEMU machine, and the parts that watch and drive it
(a thin facade; the runner sees it as a GuestControl):

- BootWatch (boot_watch.py): the boot's verdict, BootOutcome;
- Transports (transports.py): the serial console with its pump, SSH on
  first use, and the diagnosis of an SSH that does not come up;
- LivenessMonitor (liveness_monitor.py): liveness probes, hangs, stuck
  steps, and the StepWatch polled while a command runs.

Here they meet: a command goes out on its transport under a StepWatch, and
how it ended says whether the kernel died (FAIL), the guest stopped
answering (FAIL) or the harness or QEMU broke (ERROR)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from harness.config.models import Profile, Transport
from harness.errors import GuestHung, GuestNetworkUnusable, MachineError, SessionError, StepStuck
from harness.image import GuestImage
from harness.logwatch import Event, LogWatcher
from harness.machine import MachineSpec, QemuMachine
from harness.machine.profile import kernel_cmdline
from harness.machine.qemu import free_port
from harness.session.base import Completed
from harness.session.boot_watch import BootOutcome, BootWatch
from harness.session.liveness import Evidence, LivenessPolicy, Symbolize
from harness.session.liveness_monitor import LivenessMonitor, Probe
from harness.session.serial import SerialSession
from harness.session.ssh import SshKey, SshSession
from harness.session.stuck_step import StepProcess
from harness.session.transports import Transports

# Callers import these from here: the guest's vocabulary, wherever it lives.
__all__ = ["BootOutcome", "Guest", "Probe", "StepProcess", "booted_guest"]


class Guest:
    def __init__(
        self,
        machine: QemuMachine,
        key: SshKey,
        console_log: Path,
        policy: LivenessPolicy | None = None,
        symbolize: Symbolize | None = None,
    ) -> None:
        self.machine = machine
        self.key = key
        self.console_log = console_log
        policy = policy or LivenessPolicy()
        self.evidence = Evidence(machine, console_log, symbolize)
        self.watcher = LogWatcher(symbolize=symbolize)
        self.transports = Transports(machine, key, self.watcher, console_log)
        self.monitor = LivenessMonitor(machine, self.transports, self.watcher, self.evidence, policy)
        self.boot = BootWatch(machine, self.transports.serial, self.watcher, self.evidence, policy)
        self.boot_outcome: BootOutcome | None = None

    @property
    def policy(self) -> LivenessPolicy:
        return self.monitor.policy

    @property
    def serial(self) -> SerialSession:
        return self.transports.serial

    @property
    def ssh_connect_s(self) -> float | None:
        return self.transports.ssh_connect_s

    @property
    def hang(self) -> GuestHung | None:
        """Set once the guest is shown to be hung."""
        return self.monitor.hang

    @property
    def stuck(self) -> StepStuck | None:
        """Set once a step's process is shown stuck in the kernel."""
        return self.monitor.stuck

    @property
    def network_dead(self) -> GuestNetworkUnusable | None:
        """Set once its network is shown dead while it lives: the scenarios
        still to run need a fresh boot, as after a hang."""
        return self.transports.network_dead

    @property
    def dead(self) -> bool:
        return self.monitor.dead

    def wait_ready(self, timeout: float) -> BootOutcome:
        outcome = self.boot.wait_ready(timeout)
        if outcome.ready:
            self.transports.start_pump()
        self.boot_outcome = outcome
        return outcome

    def interactive_console(self) -> contextlib.AbstractContextManager[SerialSession]:
        """The serial session for a human (`pkvm-harness boot`), pump paused."""
        return self.transports.owned_serial()

    def ssh(self) -> SshSession:
        return self.transports.ssh(self.monitor)

    def run(
        self,
        transport: Transport,
        command: str,
        timeout: float,
        hang_probe_s: float | None = None,
        hang_timeout_s: float | None = None,
    ) -> Completed:
        """Run `command`; `hang_probe_s`/`hang_timeout_s` override the
        liveness policy for this command only (a step that legitimately
        stays silent for long sets a longer probe interval)."""
        if self.hang is not None:
            raise self.hang
        with self.monitor.policy_for(hang_probe_s, hang_timeout_s):
            return self._run(transport, command, timeout)

    def _run(self, transport: Transport, command: str, timeout: float) -> Completed:
        watch = self.monitor.watch_step(transport, time.monotonic() + timeout)
        if transport == "ssh":
            result = self.ssh().run(command, timeout, abort=watch.check)
            if result.ended_by == "no-channel":
                result = self._ssh_unusable(result)
            elif result.ended_by == "connection-lost" and not self.machine.alive():
                # QEMU went away under the connection: a kernel panic (with
                # panic=-1 QEMU exits) or an infrastructure fault. The console
                # holds the answer: read it to the end first.
                result = replace(result, ended_by="eof")
            elif result.ended_by == "connection-lost":
                # Cut on the host side, or the guest died under it: ask.
                self.monitor.confirm_alive("ssh connection lost", via="serial")
                raise SessionError(f"ssh connection lost during {command[:60]!r} (the guest still answers)")
        else:
            with self.transports.owned_serial() as serial:
                result = serial.run(command, timeout, poll=lambda: watch.check(0))
        if result.ended_by in ("kernel-fatal", "eof"):
            with self.transports.owned_serial() as serial:
                serial.drain(quiet_s=1.5, limit_s=10)
            self.watcher.finish()
            if self.watcher.fatal is None:
                self._raise_if_qemu_gone(command)
        if result.ended_by == "hang" and self.hang is not None:
            raise self.hang
        if result.ended_by == "stuck" and self.stuck is not None:
            raise self.stuck
        return result

    def _ssh_unusable(self, result: Completed) -> Completed:
        """The SSH connection is open but carries no command (no channel, or
        no exec, within its deadline). A guest that does not answer on
        serial either is hung (GuestHung); one that does gets the network
        diagnosis: GuestNetworkUnusable (the kernel's FAIL) when it shows
        the network path dead, a SessionError (ERROR) otherwise. Returns
        only when the console shows the kernel died meanwhile."""
        failure = f"ssh: {result.detail} for {result.command[:60]!r}"
        self.monitor.confirm_alive(failure, via="serial")
        if self.dead:
            return replace(result, ended_by="kernel-fatal" if self.watcher.fatal else "eof")
        self.transports.diagnose_ssh(failure, self.monitor)
        raise SessionError(f"{failure}, although a fresh connection works (this one is wedged)")

    def _raise_if_qemu_gone(self, command: str) -> None:
        """QEMU exiting without a kernel message (killed, crashed) is the
        infrastructure's fault: an ERROR, never the kernel's FAIL."""
        if not self.machine.alive():
            tail = "; ".join(self.machine.stderr_tail(2)) or "no QEMU output"
            raise MachineError(f"QEMU exited (rc {self.machine.returncode}) during {command[:60]!r}: {tail}")

    def sync_console(self, timeout: float = 15.0) -> None:
        """A serial round trip: everything the kernel printed before it has
        then reached the watcher (needed after SSH steps, whose kernel
        messages arrive on the console, not on the SSH channel)."""
        if self.dead:
            return
        result = self.run("serial", ":", timeout)
        if result.status is None and result.ended_by == "timeout":
            self.monitor.confirm_alive(f"serial console did not answer within {timeout:.0f}s", via="serial")
            raise SessionError(f"serial console did not answer within {timeout}s (guest alive)")

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
        self.transports.close()


@contextlib.contextmanager
def booted_guest(
    profile: Profile,
    kernel_image: Path,
    image: GuestImage,
    run_dir: Path,
    extra_cmdline: tuple[str, ...] = (),
    boot_timeout: float = 120.0,
    policy: LivenessPolicy | None = None,
    symbolize: Symbolize | None = None,
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
        for attempt in range(3):
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
            machine = QemuMachine(spec, run_dir)
            try:
                machine.__enter__()
            except MachineError as exc:
                # Another process took the SSH port between our probe and
                # QEMU's bind: try another port; anything else is final.
                if "host forwarding" in str(exc) and attempt < 2:
                    continue
                raise
            break
        try:
            guest = Guest(machine, key, console_log, policy, symbolize)
            try:
                guest.wait_ready(boot_timeout)
                yield guest
            finally:
                guest.close()
        finally:
            machine.shutdown()
