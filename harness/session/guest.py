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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.config.models import Profile, Transport
from harness.errors import GuestHung, GuestNetworkUnusable, MachineError, SessionError, StepStuck
from harness.image import GuestImage
from harness.image.initramfs import READY_MARKER
from harness.logwatch import Event, LogWatcher
from harness.logwatch.decoders import describe_fault
from harness.logwatch.signatures import fatal_stream_patterns
from harness.machine import MachineSpec, QemuMachine
from harness.machine.profile import kernel_cmdline
from harness.machine.qemu import free_port
from harness.report.verdicts import Verdict
from harness.session.base import Completed
from harness.session.liveness import (
    CpuSample,
    CpuWindow,
    Evidence,
    LivenessPolicy,
    Symbolize,
    console_tail,
    describe_vcpus,
)
from harness.session.serial import SerialSession
from harness.session.ssh import SshKey, SshSession

_READY = re.compile(re.escape(READY_MARKER) + r" (\S+)\r?\n")


@dataclass(frozen=True)
class Probe:
    """An active liveness probe's answer: `answered` is None when the
    transport cannot probe now (no SSH session yet); `detail` is what the
    transport saw when there was no answer (e.g. "ssh: TCP open, no channel
    within 5 s"): evidence, never a wait."""

    answered: bool | None
    window: CpuWindow | None
    ended: str
    detail: str = ""


# The console lock is held for at most one read by the pump, or one command
# (bounded by its own timeout) by a step: waiting longer is a harness fault.
SERIAL_LOCK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BootOutcome:
    ready: bool
    # The boot's own verdict: PASS when it came up; FAIL when the kernel did
    # not (a crash, a stall, no readiness marker); ERROR when QEMU or its
    # console did.
    verdict: Verdict
    reason: str
    seconds: float  # from `cont` to the readiness marker (or to the end)
    fatal: Event | None = None
    since_launch: float | None = None  # from starting QEMU to the marker
    evidence: Mapping[str, object] | None = None  # a stalled boot's console tail, vCPUs


# In the guest, over serial: why would SSH not come up? Each line is key=value.
_NET_DIAGNOSIS = r"""
# eth0's device is a virtio device; the NIC the IOMMU sees is its PCI parent.
d=$(readlink -f /sys/class/net/eth0/device 2>/dev/null)
bdf=$(echo "$d" | grep -o '[0-9a-f]\{4\}:[0-9a-f]\{2\}:[0-9a-f]\{2\}\.[0-9]' | tail -1); echo "nic=$bdf"
d=$(readlink /sys/bus/pci/devices/$bdf/driver 2>/dev/null); echo "driver=${d##*/}"
echo "operstate=$(cat /sys/class/net/eth0/operstate 2>/dev/null || echo missing)"
echo "rx_packets=$(cat /sys/class/net/eth0/statistics/rx_packets 2>/dev/null)"
pidof dropbear >/dev/null && echo dropbear=running || echo dropbear=missing
test -s /root/.ssh/authorized_keys && echo key=present || echo key=missing
"""


def network_findings(
    before: Mapping[str, str], after: Mapping[str, str], events: Sequence[Event]
) -> tuple[bool, str]:
    """From two network diagnoses of a guest whose SSH does not come up (the
    second after the host tried once more) and the kernel's events: whether
    the kernel's network path is dead (its FAIL), and what was seen. Only
    what is the same on every run goes into the words (no counts, no
    timings, the first complete fault rather than the latest): the same
    broken kernel gets the same reason."""
    nic = after.get("nic") or ""
    faults = [e for e in events if e.kind == "iommu-fault"]
    nic_faults = [e for e in faults if e.fields.get("bdf") == nic]
    rx0, rx1 = before.get("rx_packets", ""), after.get("rx_packets", "")
    deaf = bool(rx0) and rx0 == rx1
    findings = [f"eth0 {after.get('operstate')}" + (f" on {nic}" if nic else "")]
    if deaf:
        findings.append("the NIC received nothing while the host connected")
    if nic_faults:
        first = next((e for e in nic_faults if e.complete), nic_faults[0])
        findings.append(
            "IOMMU faults from the NIC, first: "
            + describe_fault(first.fields, first.signature, {nic: after.get("driver", "")})
        )
    elif faults:
        first = next((e for e in faults if e.complete), faults[0])
        findings.append("IOMMU faults, first: " + describe_fault(first.fields, first.signature, {}))
    unusable = not nic or after.get("operstate") != "up" or bool(nic_faults) or deaf
    return unusable, "; ".join(findings)


# In the guest, over serial: every process's pid, comm, state and parent
# (a comm may hold one space): about 1 KB, for a look at a silent SSH step.
_PROCESSES = "cat /proc/[0-9]*/stat 2>/dev/null | cut -d' ' -f1-5"
# Then, only when one of the step's processes sleeps uninterruptibly: their
# stat lines up to stime, and where those asleep sleep (wchan) with their
# kernel stacks, one line each.
_WHERE = (
    "for p in {pids}; do cut -d' ' -f1-16 /proc/$p/stat 2>/dev/null; done;"
    ' for p in {asleep}; do echo "@wchan $p $(cat /proc/$p/wchan 2>/dev/null)";'
    ' sed "s/^/@stack $p /" /proc/$p/stack 2>/dev/null; done; :'
)
_STAT = re.compile(r"^(?P<pid>\d+) \((?P<comm>.*)\) (?P<rest>.*)$")
_STACK_ADDRESS = re.compile(r"^\[<[0-9a-f]+>\]\s*")


@dataclass(frozen=True)
class StepProcess:
    """One process of the command an SSH step runs, as /proc shows it."""

    pid: int
    comm: str
    state: str  # /proc/PID/stat's: R, S, D (uninterruptible), T, Z ...
    cpu_ticks: int  # utime + stime; -1 when not read
    wchan: str = ""
    stack: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f" in {self.wchan}" if self.wchan else ""
        stack = f" (kernel stack: {' <- '.join(self.stack[:8])})" if self.stack else ""
        # No pid: the same stuck kernel gets the same reason (it is in the evidence).
        return f"{self.comm} asleep uninterruptibly{where}{stack}"

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "state": self.state,
            "cpu_ticks": self.cpu_ticks,
            "wchan": self.wchan,
            "stack": list(self.stack),
        }


def _stat_lines(text: str) -> dict[int, tuple[StepProcess, int]]:
    """/proc/PID/stat lines, whole or cut after the parent: each process
    (CPU ticks -1 unless the line reaches stime) and its parent."""
    out: dict[int, tuple[StepProcess, int]] = {}
    for line in text.splitlines():
        m = _STAT.match(line.strip())
        if m is None:
            continue
        # state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
        fields = m["rest"].split()
        try:
            ppid = int(fields[1])
            ticks = int(fields[11]) + int(fields[12]) if len(fields) >= 13 else -1
        except (IndexError, ValueError):  # a line cut by the console, or not a stat line
            continue
        pid = int(m["pid"])
        out[pid] = (StepProcess(pid, m["comm"], fields[0], ticks), ppid)
    return out


def step_processes(stat_lines: str) -> dict[int, StepProcess]:
    """From every /proc/PID/stat line: the processes an SSH command runs as,
    the descendants of dropbear (dropbear itself left out). The harness runs
    one command at a time over SSH, and none while it asks over serial."""
    lines = _stat_lines(stat_lines)
    procs = {pid: p for pid, (p, _) in lines.items()}
    parents = {pid: ppid for pid, (_, ppid) in lines.items()}
    daemons = {pid for pid, p in procs.items() if p.comm == "dropbear"}

    def under_daemon(pid: int) -> bool:
        seen: set[int] = set()
        while pid in parents and pid not in seen:
            seen.add(pid)
            pid = parents[pid]
            if pid in daemons:
                return True
        return False

    return {pid: p for pid, p in procs.items() if pid not in daemons and under_daemon(pid)}


def with_whereabouts(procs: Mapping[int, StepProcess], output: str) -> dict[int, StepProcess]:
    """`procs` with what _WHERE's output says of them: state and CPU ticks
    now, and the wchan and kernel stack of those asleep."""
    now = {pid: p for pid, (p, _) in _stat_lines(output).items() if p.cpu_ticks >= 0}
    wchan: dict[int, str] = {}
    stack: dict[int, list[str]] = {}
    for line in output.splitlines():
        tag, _, rest = line.strip().partition(" ")
        pid_s, _, value = rest.partition(" ")
        if not pid_s.isdigit():
            continue
        if tag == "@wchan":
            wchan[int(pid_s)] = value.strip() if value.strip() != "0" else ""
        elif tag == "@stack" and value.strip():
            stack.setdefault(int(pid_s), []).append(_STACK_ADDRESS.sub("", value.strip()))
    return {
        pid: replace(
            now.get(pid, p), comm=p.comm, wchan=wchan.get(pid, p.wchan), stack=tuple(stack.get(pid, p.stack))
        )
        for pid, p in procs.items()
    }


def stuck_processes(before: Mapping[int, StepProcess], after: Mapping[int, StepProcess]) -> list[StepProcess]:
    """The step made no progress between two looks: the same processes, not
    a tick of CPU time spent, and at least one of them asleep
    uninterruptibly (D) in the same place both times; those are returned.
    Empty when it progressed, or when it only waits interruptibly (S, as
    `sleep` or a shell waiting for its child does): that is no evidence."""
    if not after or before.keys() != after.keys():
        return []
    if any(after[pid].cpu_ticks != before[pid].cpu_ticks or after[pid].cpu_ticks < 0 for pid in after):
        return []
    return [
        after[pid]
        for pid in sorted(after)
        if after[pid].state == before[pid].state == "D" and after[pid].wchan == before[pid].wchan
    ]


class _Life:
    """Tracks the guest's last sign of life (console or command output) and
    the host CPU sample taken then, for the starvation guard."""

    def __init__(self, pid: int | None, activity: int) -> None:
        self.pid = pid
        self.activity = activity
        self.at = time.monotonic()
        self.sample = CpuSample.take(pid)
        self.starved = 0

    def saw(self, activity: int) -> bool:
        if activity != self.activity:
            self.activity, self.at, self.sample = activity, time.monotonic(), CpuSample.take(self.pid)
            return True
        return False

    def reset(self) -> None:
        self.at, self.sample = time.monotonic(), CpuSample.take(self.pid)

    @property
    def silent_s(self) -> float:
        return time.monotonic() - self.at


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
        self.policy = policy or LivenessPolicy()
        self.evidence = Evidence(machine, console_log, symbolize)
        self.hang: GuestHung | None = None  # set once the guest is shown to be hung
        # Set once its network is shown dead while it lives: the scenarios
        # still to run need a fresh boot, as after a hang.
        self.network_dead: GuestNetworkUnusable | None = None
        # Set once a step's process is shown stuck in the kernel.
        self.stuck: StepStuck | None = None
        self._stall: CpuWindow | None = None
        self.watcher = LogWatcher(symbolize=symbolize)
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
        return (
            self.hang is not None
            or self.network_dead is not None
            or self.stuck is not None
            or self.watcher.fatal is not None
            or not self.machine.alive()
        )

    def wait_ready(self, timeout: float) -> BootOutcome:
        start = time.monotonic()
        self.machine.resume()
        life = _Life(self.machine.pid, self.watcher.chars_seen)

        def stalled() -> str | None:
            """A boot that stops making progress is a FAIL long before the
            boot timeout: console silent for `boot_stall_s` while QEMU had
            CPU (a starved host only extends the wait)."""
            if life.saw(self.watcher.chars_seen) or life.silent_s < self.policy.boot_stall_s:
                return None
            window = CpuWindow.between(life.sample, CpuSample.take(self.machine.pid))
            if window.starved and life.starved < self.policy.starved_retries:
                life.starved += 1
                life.reset()
                return None
            self._stall = window
            return "stall"

        what, _ = self.serial.expect([_READY], timeout, poll=stalled)
        marker_at = time.monotonic()
        elapsed = marker_at - start
        if what == "match:0":
            launched = self.machine.launched_at
            since_launch = marker_at - launched if launched is not None else None
            self.serial.prepare()
            outcome = BootOutcome(True, Verdict.PASS, "", elapsed, since_launch=since_launch)
            self._start_pump()
        else:
            outcome = self._boot_failed(what, elapsed, timeout)
        self.boot_outcome = outcome
        return outcome

    def _boot_failed(self, what: str, elapsed: float, timeout: float) -> BootOutcome:
        if what == "stall" and self._stall is not None:
            last = _last_console_line(self.console_log)
            evidence = self.evidence.collect(self._stall)
            return BootOutcome(
                False,
                Verdict.FAIL,
                f"boot: stalled: no console output for {self.policy.boot_stall_s:.0f}s after"
                f" {last!r}; {describe_vcpus(evidence)}; {self._stall.describe()}",
                elapsed,
                evidence=evidence,
            )
        if what == "abort":
            self.serial.drain(quiet_s=1.5, limit_s=10)
        self.watcher.finish()
        fatal = self.watcher.fatal
        if fatal is not None:
            return BootOutcome(False, Verdict.FAIL, f"boot: {fatal.summary()}", elapsed, fatal)
        if what == "eof":
            tail = "; ".join(self.machine.stderr_tail(3)) or "no QEMU output"
            if self.machine.alive():
                return BootOutcome(False, Verdict.ERROR, "serial console closed during boot", elapsed)
            return BootOutcome(False, Verdict.ERROR, f"QEMU exited during boot: {tail}", elapsed)
        last = _last_console_line(self.console_log)
        return BootOutcome(
            False,
            Verdict.FAIL,
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
            if not self._serial_lock.acquire(timeout=SERIAL_LOCK_TIMEOUT_S):
                raise SessionError(f"serial console still in use after {SERIAL_LOCK_TIMEOUT_S:.0f}s")
            try:
                yield self.serial
            finally:
                self._serial_lock.release()
        finally:
            self._serial_wanted.clear()

    def interactive_console(self) -> contextlib.AbstractContextManager[SerialSession]:
        """The serial session for a human (`pkvm-harness boot`), pump paused."""
        return self._serial_owned()

    def ssh(self) -> SshSession:
        if self._ssh is None:
            session = SshSession(self.machine.spec.ssh_port, self.key)

            def give_up(elapsed: float) -> bool:
                # IOMMU faults are a reason SSH cannot work: do not wait the
                # full minute once they are there; the diagnosis says more.
                return elapsed >= 10 and any(e.kind == "iommu-fault" for e in self.watcher.events)

            try:
                self.ssh_connect_s = session.connect(give_up=give_up)
            except SessionError as exc:
                self._diagnose_ssh(str(exc))
            self._ssh = session
        return self._ssh

    def _diagnose_ssh(self, failure: str) -> None:
        """SSH did not come up. Ask the guest over serial why, and raise:
        GuestHung if it does not answer either; SessionError (ERROR) if its
        SSH daemon or key is missing (a broken initramfs is the harness's
        fault); GuestNetworkUnusable (FAIL) if the daemon runs but the
        kernel's network path is dead."""
        before = self._diagnosis()
        # One more attempt, watched from inside: did the NIC receive anything?
        fresh = SshSession(self.machine.spec.ssh_port, self.key)
        try:
            fresh.connect(timeout=3)
            return
        except SessionError:
            pass
        finally:
            fresh.close()
        after = self._diagnosis()
        if after.get("dropbear") != "running" or after.get("key") != "present":
            raise SessionError(
                f"{failure}; in the guest: dropbear {after.get('dropbear')}, key {after.get('key')}"
                " (broken initramfs?)"
            )
        unusable, findings = network_findings(before, after, self.watcher.events)
        evidence: dict[str, object] = {
            "ssh_error": failure,
            "diagnosis_before": before,
            "diagnosis_after": after,
            "console_tail": console_tail(self.console_log),
        }
        if unusable:
            self.network_dead = GuestNetworkUnusable(
                f"guest network unusable (the guest answers on serial and dropbear runs): {findings}",
                evidence,
            )
            raise self.network_dead
        raise SessionError(f"{failure}; in the guest: {findings}")

    def _diagnosis(self) -> dict[str, str]:
        with self._serial_owned() as serial:
            result = serial.run(_NET_DIAGNOSIS, self.policy.probe_timeout_s)
        if result.status is None:
            self._raise_if_unanswered(result, "serial", self.policy.probe_timeout_s, None)
        return dict(
            line.split("=", 1) for line in result.output.splitlines() if "=" in line and " " not in line
        )

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
        saved = self.policy
        self.policy = replace(
            saved,
            interval_s=hang_probe_s if hang_probe_s is not None else saved.interval_s,
            probe_timeout_s=hang_timeout_s if hang_timeout_s is not None else saved.probe_timeout_s,
        )
        try:
            return self._run(transport, command, timeout)
        finally:
            self.policy = saved

    def _run(self, transport: Transport, command: str, timeout: float) -> Completed:
        watch = _StepWatch(self, transport, time.monotonic() + timeout)
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
                self._confirm_alive("ssh connection lost", via="serial")
                raise SessionError(f"ssh connection lost during {command[:60]!r} (the guest still answers)")
        else:
            with self._serial_owned() as serial:
                result = serial.run(command, timeout, poll=lambda: watch.check(0))
        if result.ended_by in ("kernel-fatal", "eof"):
            with self._serial_owned() as serial:
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
        self._confirm_alive(failure, via="serial")
        if self.dead:
            return replace(result, ended_by="kernel-fatal" if self.watcher.fatal else "eof")
        self._diagnose_ssh(failure)
        raise SessionError(f"{failure}, although a fresh connection works (this one is wedged)")

    def _raise_if_qemu_gone(self, command: str) -> None:
        """QEMU exiting without a kernel message (killed, crashed) is the
        infrastructure's fault: an ERROR, never the kernel's FAIL."""
        if not self.machine.alive():
            tail = "; ".join(self.machine.stderr_tail(2)) or "no QEMU output"
            raise MachineError(f"QEMU exited (rc {self.machine.returncode}) during {command[:60]!r}: {tail}")

    def probe_alive(self, via: Transport) -> Probe:
        """An active liveness probe, a serial round trip or an SSH exec,
        with its own deadline (`probe_timeout_s`; an SSH channel that does
        not open within 5 s is an answer, not a wait)."""
        before = CpuSample.take(self.machine.pid)
        timeout = self.policy.probe_timeout_s
        if via == "serial":
            with self._serial_owned() as serial:
                result = serial.run(":", timeout)
        else:
            if self._ssh is None:
                return Probe(None, None, "no ssh session")
            try:
                result = self._ssh.run(":", timeout)
            except SessionError as exc:  # the connection is gone: no answer either
                result = Completed(":", "", None, 0.0, ended_by="connection-lost", detail=str(exc))
        window = CpuWindow.between(before, CpuSample.take(self.machine.pid))
        detail = f"{via}: {result.detail}" if result.detail else ""
        return Probe(result.status is not None, window, result.ended_by, detail)

    def _confirm_alive(self, why: str, via: Transport, until: float | None = None) -> None:
        """Probe until the guest answers (return) or is shown hung (raise
        GuestHung); a starved host only makes it probe again. No probe
        starts that could not finish before `until` (a step's deadline: the
        probe never extends the step), which leaves the question open."""
        for _ in range(self.policy.starved_retries + 1):
            if until is not None and until - time.monotonic() < self.policy.probe_timeout_s:
                return
            probe = self.probe_alive(via)
            if probe.answered or probe.answered is None:
                return
            if probe.ended in ("kernel-fatal", "eof"):
                return  # the caller sees the crash through the watcher
            assert probe.window is not None
            if not probe.window.starved:
                seen = f" ({probe.detail})" if probe.detail else ""
                self._declare_hang(
                    f"{why}, then no answer to a {via} round trip within"
                    f" {self.policy.probe_timeout_s:.0f}s{seen}",
                    probe.window,
                )
                assert self.hang is not None
                raise self.hang

    def spinning(self, since: CpuSample, what: str, samples: int = 5) -> bool:
        """The vCPUs spin while the guest says nothing: QEMU burnt most of a
        host CPU since `since`, and every vCPU was at EL1 or EL2 (kernel or
        hypervisor, never user space) in each of `samples` samples over about
        two seconds. A busy user-space command shows EL0; an idle guest does
        not burn CPU. Declares the hang (and returns True) when so."""
        runs = []
        for i in range(samples):
            runs.append(self.evidence.vcpus())
            if i + 1 < samples:
                time.sleep(0.5)
        window = CpuWindow.between(since, CpuSample.take(self.machine.pid))
        in_kernel = all(run and all((v.el or 0) >= 1 for v in run) for run in runs)
        if window.qemu_cpu_fraction < 0.8 or not in_kernel:
            return False
        self._declare_hang(f"{what}, vCPUs spinning in the kernel or hypervisor", window)
        return True

    def step_processes(self) -> dict[int, StepProcess] | None:
        """The running SSH step's processes, asked over serial, with where
        those asleep uninterruptibly sleep; None when serial did not answer
        within the probe's deadline."""
        timeout = self.policy.probe_timeout_s
        with self._serial_owned() as serial:
            result = serial.run(_PROCESSES, timeout)
            if result.status is None:
                return None
            procs = step_processes(result.output)
            asleep = " ".join(str(pid) for pid, p in sorted(procs.items()) if p.state == "D")
            if not asleep:
                return procs
            pids = " ".join(str(pid) for pid in sorted(procs))
            where = serial.run(_WHERE.format(pids=pids, asleep=asleep), timeout)
        return with_whereabouts(procs, where.output) if where.status is not None else None

    def _declare_stuck(self, stuck: Sequence[StepProcess]) -> None:
        reason = (
            "stuck: the guest answers on serial, but the step's process made no progress"
            f" across two liveness probes: {'; '.join(p.describe() for p in stuck)}"
        )
        evidence: dict[str, object] = {
            "stuck_processes": [p.to_json() for p in stuck],
            "console_tail": console_tail(self.console_log),
        }
        self.stuck = StepStuck(reason, evidence)

    def _raise_if_unanswered(
        self, result: Completed, via: Transport, timeout: float, window: CpuWindow | None
    ) -> None:
        if result.status is not None or result.ended_by in ("kernel-fatal", "eof"):
            return
        self._confirm_alive(f"no answer on {via} within {timeout:.0f}s", via)

    def _declare_hang(self, what: str, window: CpuWindow) -> None:
        evidence = self.evidence.collect(window)
        reason = f"hang: {what}; {describe_vcpus(evidence)}; {window.describe()}"
        self.hang = GuestHung(reason, evidence)

    def sync_console(self, timeout: float = 15.0) -> None:
        """A serial round trip: everything the kernel printed before it has
        then reached the watcher (needed after SSH steps, whose kernel
        messages arrive on the console, not on the SSH channel)."""
        if self.dead:
            return
        result = self.run("serial", ":", timeout)
        if result.status is None and result.ended_by == "timeout":
            self._confirm_alive(f"serial console did not answer within {timeout:.0f}s", via="serial")
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
        self._pump_stop.set()
        if self._pump is not None:
            self._pump.join(timeout=2)
        if self._ssh is not None:
            self._ssh.close()
        self.serial.close()


class _StepWatch:
    """Polled while a command runs: ends the wait at once when the kernel
    died, QEMU went away, or the guest fails a liveness probe after
    `interval_s` without any sign of life. The probe uses the transport the
    step is not using: serial during SSH steps, SSH during serial steps."""

    def __init__(self, guest: Guest, transport: Transport, deadline: float) -> None:
        self.guest = guest
        self.probe_via: Transport = "serial" if transport == "ssh" else "ssh"
        self.deadline = deadline  # the step's: a probe never runs past it
        self.life = _Life(guest.machine.pid, guest.watcher.chars_seen)
        # The SSH step's processes at the last look, and how much it had
        # printed then (None: not looked at, or it printed since; what the
        # console shows is no progress of an SSH step's).
        self.processes: dict[int, StepProcess] | None = None
        self.received = 0

    def check(self, received: int) -> str | None:
        g = self.guest
        if g.watcher.fatal is not None:
            return "kernel-fatal"
        if not g.machine.alive():
            return "eof"
        if received != self.received:  # the step's output: it progressed
            self.received, self.processes = received, None
        if self.life.saw(g.watcher.chars_seen + received):
            return None
        if self.life.silent_s < g.policy.interval_s:
            return None
        silent = self.life.silent_s
        try:
            if self.probe_via == "ssh" and g._ssh is None:
                # A serial step before SSH was ever up: nothing can ask the
                # guest, so only spinning vCPUs are evidence (see spinning()).
                if g.spinning(self.life.sample, f"no output for {silent:.0f}s during a serial command"):
                    return "hang"
            else:
                why = f"no sign of life for {silent:.0f}s"
                g._confirm_alive(why, via=self.probe_via, until=self.deadline)
                if self.probe_via == "serial" and self._stuck():
                    return "stuck"
        except GuestHung:
            return "hang"
        self.life.reset()
        return "kernel-fatal" if g.watcher.fatal is not None else None

    def _stuck(self) -> bool:
        """An SSH step that stays silent while the guest answers on serial:
        look at its processes now and compare with the last look (a probe
        interval ago). No look starts that could not finish before the
        step's deadline."""
        g = self.guest
        if g.dead or self.deadline - time.monotonic() < 2 * g.policy.probe_timeout_s:
            return False
        before, self.processes = self.processes, g.step_processes()
        stuck = stuck_processes(before, self.processes) if before and self.processes else []
        if stuck:
            g._declare_stuck(stuck)
        return bool(stuck)


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
