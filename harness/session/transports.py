"""A booted guest's two ways in: its serial console, read all the time by a
pump thread and lent to one user at a time, and its SSH session, opened on
first use. When SSH does not come up, the guest is asked over serial why:
a dead network path is the kernel's FAIL (GuestNetworkUnusable), a missing
daemon or key the harness's ERROR."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from harness.config.models import Transport
from harness.errors import GuestNetworkUnusable, SessionError
from harness.logwatch import Event, LogWatcher
from harness.logwatch.decoders import describe_fault
from harness.logwatch.signatures import fatal_stream_patterns
from harness.machine import QemuMachine
from harness.session.liveness import LivenessPolicy, console_tail
from harness.session.serial import SerialSession
from harness.session.ssh import SshKey, SshSession

# The console lock is held for at most one read by the pump, or one command
# (bounded by its own timeout) by a step: waiting longer is a harness fault.
SERIAL_LOCK_TIMEOUT_S = 60.0

# In the guest, over serial: why would SSH not come up? Each line is key=value.
NET_DIAGNOSIS = r"""
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


class AliveCheck(Protocol):
    """What the SSH diagnosis needs of the liveness monitor: its deadline
    for a serial answer, and the question "does the guest live?" when the
    guest did not answer within it (raises GuestHung when it does not)."""

    @property
    def policy(self) -> LivenessPolicy: ...

    def confirm_alive(self, why: str, via: Transport, until: float | None = None) -> None: ...


class Transports:
    def __init__(self, machine: QemuMachine, key: SshKey, watcher: LogWatcher, console_log: Path) -> None:
        self.machine = machine
        self.key = key
        self.watcher = watcher
        self.console_log = console_log
        assert machine.serial is not None
        self.serial = SerialSession(machine.serial, observer=watcher, abort_patterns=fatal_stream_patterns())
        self._ssh: SshSession | None = None
        self.ssh_connect_s: float | None = None
        # Set once its network is shown dead while it lives: the scenarios
        # still to run need a fresh boot, as after a hang.
        self.network_dead: GuestNetworkUnusable | None = None
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
    def ssh_session(self) -> SshSession | None:
        """The SSH session once it came up (None before: nothing connects here)."""
        return self._ssh

    def start_pump(self) -> None:
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
    def owned_serial(self) -> Iterator[SerialSession]:
        """The serial session, the pump paused while it is held."""
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

    def ssh(self, alive: AliveCheck) -> SshSession:
        """The SSH session, connected on first use; when it does not come
        up, the diagnosis raises (see diagnose_ssh)."""
        if self._ssh is None:
            session = SshSession(self.machine.spec.ssh_port, self.key)

            def give_up(elapsed: float) -> bool:
                # IOMMU faults are a reason SSH cannot work: do not wait the
                # full minute once they are there; the diagnosis says more.
                return elapsed >= 10 and any(e.kind == "iommu-fault" for e in self.watcher.events)

            try:
                self.ssh_connect_s = session.connect(give_up=give_up)
            except SessionError as exc:
                self.diagnose_ssh(str(exc), alive)
            self._ssh = session
        return self._ssh

    def diagnose_ssh(self, failure: str, alive: AliveCheck) -> None:
        """SSH did not come up. Ask the guest over serial why, and raise:
        GuestHung if it does not answer either; SessionError (ERROR) if its
        SSH daemon or key is missing (a broken initramfs is the harness's
        fault); GuestNetworkUnusable (FAIL) if the daemon runs but the
        kernel's network path is dead. Returns when a fresh connection
        works after all."""
        before = self._diagnosis(alive)
        # One more attempt, watched from inside: did the NIC receive anything?
        fresh = SshSession(self.machine.spec.ssh_port, self.key)
        try:
            fresh.connect(timeout=3)
            return
        except SessionError:
            pass
        finally:
            fresh.close()
        after = self._diagnosis(alive)
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

    def _diagnosis(self, alive: AliveCheck) -> dict[str, str]:
        timeout = alive.policy.probe_timeout_s
        with self.owned_serial() as serial:
            result = serial.run(NET_DIAGNOSIS, timeout)
        if result.status is None and result.ended_by not in ("kernel-fatal", "eof"):
            alive.confirm_alive(f"no answer on serial within {timeout:.0f}s", via="serial")
        return dict(
            line.split("=", 1) for line in result.output.splitlines() if "=" in line and " " not in line
        )

    def close(self) -> None:
        self._pump_stop.set()
        if self._pump is not None:
            self._pump.join(timeout=2)
        if self._ssh is not None:
            self._ssh.close()
        self.serial.close()
