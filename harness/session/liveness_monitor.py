"""Is the booted guest still alive, and is the running step progressing?

The monitor probes over the transport a step does not use, declares a hang
(GuestHung) only on the evidence liveness.py describes, and a stuck step
(StepStuck) only when two looks at its processes show no progress while
the guest answers. A StepWatch is polled while one command runs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from harness.config.models import Transport
from harness.errors import GuestHung, SessionError, StepStuck
from harness.logwatch import LogWatcher
from harness.machine import QemuMachine
from harness.session.base import Completed
from harness.session.liveness import (
    CpuSample,
    CpuWindow,
    Evidence,
    LastSignOfLife,
    LivenessPolicy,
    console_tail,
    describe_vcpus,
)
from harness.session.stuck_step import (
    PROCESSES_COMMAND,
    StepProcess,
    step_processes,
    stuck_processes,
    whereabouts_command,
    with_whereabouts,
)
from harness.session.transports import Transports


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


@dataclass(eq=False)  # one per guest, with its own state: compared by identity
class LivenessMonitor:
    machine: QemuMachine
    transports: Transports
    watcher: LogWatcher
    evidence: Evidence  # and its console_log, the console's file
    policy: LivenessPolicy  # this command's, while one runs (see policy_for)
    hang: GuestHung | None = field(default=None, init=False)  # set once the guest is shown to be hung
    # Set once a step's process is shown stuck in the kernel.
    stuck: StepStuck | None = field(default=None, init=False)

    @property
    def dead(self) -> bool:
        return (
            self.hang is not None
            or self.transports.network_dead is not None
            or self.stuck is not None
            or self.watcher.fatal is not None
            or not self.machine.alive()
        )

    @contextlib.contextmanager
    def policy_for(self, hang_probe_s: float | None, hang_timeout_s: float | None) -> Iterator[None]:
        """The policy with this command's own probe interval and probe
        deadline, where given, while the command runs."""
        saved = self.policy
        self.policy = replace(
            saved,
            interval_s=hang_probe_s if hang_probe_s is not None else saved.interval_s,
            probe_timeout_s=hang_timeout_s if hang_timeout_s is not None else saved.probe_timeout_s,
        )
        try:
            yield
        finally:
            self.policy = saved

    def watch_step(self, transport: Transport, deadline: float) -> StepWatch:
        return StepWatch(self, transport, deadline)

    def probe_alive(self, via: Transport) -> Probe:
        """An active liveness probe, a serial round trip or an SSH exec,
        with its own deadline (`probe_timeout_s`; an SSH channel that does
        not open within 5 s is an answer, not a wait)."""
        before = CpuSample.take(self.machine.pid)
        timeout = self.policy.probe_timeout_s
        if via == "serial":
            with self.transports.owned_serial() as serial:
                result = serial.run(":", timeout)
        else:
            ssh = self.transports.ssh_session
            if ssh is None:
                return Probe(None, None, "no ssh session")
            try:
                result = ssh.run(":", timeout)
            except SessionError as exc:  # the connection is gone: no answer either
                result = Completed(":", "", None, 0.0, ended_by="connection-lost", detail=str(exc))
        window = CpuWindow.between(before, CpuSample.take(self.machine.pid))
        detail = f"{via}: {result.detail}" if result.detail else ""
        return Probe(result.status is not None, window, result.ended_by, detail)

    def confirm_alive(self, why: str, via: Transport, until: float | None = None) -> None:
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
        with self.transports.owned_serial() as serial:
            result = serial.run(PROCESSES_COMMAND, timeout)
            if result.status is None:
                return None
            procs = step_processes(result.output)
            command = whereabouts_command(procs)
            if command is None:
                return procs
            where = serial.run(command, timeout)
        return with_whereabouts(procs, where.output) if where.status is not None else None

    def declare_stuck(self, stuck: Sequence[StepProcess]) -> None:
        reason = (
            "stuck: the guest answers on serial, but the step's process made no progress"
            f" across two liveness probes: {'; '.join(p.describe() for p in stuck)}"
        )
        evidence: dict[str, object] = {
            "stuck_processes": [p.to_json() for p in stuck],
            "console_tail": console_tail(self.evidence.console_log),
        }
        self.stuck = StepStuck(reason, evidence)

    def _declare_hang(self, what: str, window: CpuWindow) -> None:
        evidence = self.evidence.collect(window)
        reason = f"hang: {what}; {describe_vcpus(evidence)}; {window.describe()}"
        self.hang = GuestHung(reason, evidence)


class StepWatch:
    """Polled while a command runs: ends the wait at once when the kernel
    died, QEMU went away, or the guest fails a liveness probe after
    `interval_s` without any sign of life. The probe uses the transport the
    step is not using: serial during SSH steps, SSH during serial steps."""

    def __init__(self, monitor: LivenessMonitor, transport: Transport, deadline: float) -> None:
        self.monitor = monitor
        self.probe_via: Transport = "serial" if transport == "ssh" else "ssh"
        self.deadline = deadline  # the step's: a probe never runs past it
        self.life = LastSignOfLife(monitor.machine.pid, monitor.watcher.chars_seen)
        # The SSH step's processes at the last look, and how much it had
        # printed then (None: not looked at, or it printed since; what the
        # console shows is no progress of an SSH step's).
        self.processes: dict[int, StepProcess] | None = None
        self.received = 0

    def check(self, received: int) -> str | None:
        m = self.monitor
        if m.watcher.fatal is not None:
            return "kernel-fatal"
        if not m.machine.alive():
            return "eof"
        if received != self.received:  # the step's output: it progressed
            self.received, self.processes = received, None
        if self.life.saw(m.watcher.chars_seen + received):
            return None
        if self.life.silent_s < m.policy.interval_s:
            return None
        silent = self.life.silent_s
        try:
            if self.probe_via == "ssh" and m.transports.ssh_session is None:
                # A serial step before SSH was ever up: nothing can ask the
                # guest, so only spinning vCPUs are evidence (see spinning()).
                if m.spinning(self.life.sample, f"no output for {silent:.0f}s during a serial command"):
                    return "hang"
            else:
                why = f"no sign of life for {silent:.0f}s"
                m.confirm_alive(why, via=self.probe_via, until=self.deadline)
                if self.probe_via == "serial" and self._stuck():
                    return "stuck"
        except GuestHung:
            return "hang"
        self.life.reset()
        return "kernel-fatal" if m.watcher.fatal is not None else None

    def _stuck(self) -> bool:
        """An SSH step that stays silent while the guest answers on serial:
        look at its processes now and compare with the last look (a probe
        interval ago). No look starts that could not finish before the
        step's deadline."""
        m = self.monitor
        if m.dead or self.deadline - time.monotonic() < 2 * m.policy.probe_timeout_s:
            return False
        before, self.processes = self.processes, m.step_processes()
        stuck = stuck_processes(before, self.processes) if before and self.processes else []
        if stuck:
            m.declare_stuck(stuck)
        return bool(stuck)
