"""Is the guest alive? Evidence, not silence.

A quiet guest may simply be sleeping. It counts as hung only when it fails
an active probe (a serial round trip, or an SSH exec) while it had the CPU
to answer: either QEMU burnt CPU during the probe (the vCPUs spin) or the
host had idle CPU that QEMU did not use (the vCPUs are stuck idle). When
the host itself is saturated (many workers under `-j`), the probe is
inconclusive and retried, so a starved host never looks like a hung guest.

The evidence of a hang is plain data: the console tail, QMP `query-status`
and every vCPU's PC and exception level, symbolised with the build's
System.map, which tells a hang in the hypervisor (EL2) from one in the
kernel (EL1)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Symbolize = Callable[[int], str | None]

_CPU = re.compile(r"^CPU#(?P<index>\d+)", re.MULTILINE)
_PC = re.compile(r"\bPC=(?P<pc>[0-9a-f]+)")
_EL = re.compile(r"PSTATE=[0-9a-f]+ \S+ EL(?P<el>\d)")


@dataclass(frozen=True)
class LivenessPolicy:
    """Per step (and per boot) limits; the defaults report a hang about
    20-25 s after the guest's last sign of life."""

    interval_s: float = 10.0  # silence before an active probe
    probe_timeout_s: float = 10.0  # how long the probe may take to answer
    starved_retries: int = 6  # inconclusive probes (host saturated) before giving up
    boot_stall_s: float = 20.0  # console silence during boot before the stall check


@dataclass(frozen=True)
class VcpuState:
    index: int
    pc: int
    el: int | None
    symbol: str | None

    def describe(self) -> str:
        where = f" {self.symbol}" if self.symbol else ""
        el = f" EL{self.el}" if self.el is not None else ""
        return f"cpu{self.index}{el} pc={self.pc:#x}{where}"

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.index, "pc": hex(self.pc), "el": self.el, "symbol": self.symbol}


def parse_registers(text: str, symbolize: Symbolize | None = None) -> list[VcpuState]:
    """QEMU's `info registers -a` for arm64: a `CPU#n` header per vCPU,
    then `PC=...` and `PSTATE=... ELnh`."""
    out = []
    heads = list(_CPU.finditer(text))
    for i, head in enumerate(heads):
        block = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        pc_m, el_m = _PC.search(block), _EL.search(block)
        if pc_m is None:
            continue
        pc = int(pc_m["pc"], 16)
        el = int(el_m["el"]) if el_m else None
        out.append(VcpuState(int(head["index"]), pc, el, symbolize(pc) if symbolize else None))
    return out


@dataclass(frozen=True)
class CpuSample:
    """Host-wide idle/total jiffies and QEMU's own CPU seconds, at one instant."""

    at: float
    host_idle: int
    host_total: int
    qemu_cpu_s: float

    @classmethod
    def take(cls, pid: int | None) -> CpuSample:
        idle = total = 0
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            values = [int(v) for v in fields]
            idle, total = values[3] + values[4], sum(values[:8])
        except (OSError, ValueError, IndexError):
            pass
        qemu = 0.0
        if pid is not None:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                qemu = (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                pass
        return cls(time.monotonic(), idle, total, qemu)


@dataclass(frozen=True)
class CpuWindow:
    seconds: float
    host_idle_fraction: float
    qemu_cpu_fraction: float  # of one host CPU

    @classmethod
    def between(cls, a: CpuSample, b: CpuSample) -> CpuWindow:
        secs = max(b.at - a.at, 1e-3)
        total = b.host_total - a.host_total
        idle = (b.host_idle - a.host_idle) / total if total > 0 else 1.0
        return cls(secs, idle, (b.qemu_cpu_s - a.qemu_cpu_s) / secs)

    @property
    def starved(self) -> bool:
        """QEMU got little CPU, and nor was any left over: the host, not
        the guest, is why nothing answered."""
        return self.qemu_cpu_fraction < 0.5 and self.host_idle_fraction < 0.2

    def describe(self) -> str:
        return (
            f"QEMU used {self.qemu_cpu_fraction:.0%} of a host CPU over {self.seconds:.1f}s,"
            f" host idle {self.host_idle_fraction:.0%}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "host_idle_fraction": round(self.host_idle_fraction, 3),
            "qemu_cpu_fraction": round(self.qemu_cpu_fraction, 3),
        }


class Monitor(Protocol):
    """What evidence gathering needs of the machine (QemuMachine has it)."""

    @property
    def pid(self) -> int | None: ...

    def command(self, name: str, **args: Any) -> Any: ...

    def alive(self) -> bool: ...


def console_tail(path: Path, lines: int = 25) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()][-lines:]


class Evidence:
    """Gathers a hang's evidence from QMP and the console log."""

    def __init__(self, machine: Monitor, console_log: Path, symbolize: Symbolize | None) -> None:
        self.machine = machine
        self.console_log = console_log
        self.symbolize = symbolize

    def vcpus(self) -> list[VcpuState]:
        try:
            text = self.machine.command("human-monitor-command", **{"command-line": "info registers -a"})
        except Exception:  # QMP gone: the caller reports what it has
            return []
        return parse_registers(str(text), self.symbolize)

    def status(self) -> str:
        try:
            st = self.machine.command("query-status")
        except Exception:
            return "unknown (QMP did not answer)"
        return str(st.get("status", "unknown")) if isinstance(st, dict) else str(st)

    def collect(self, window: CpuWindow | None, samples: int = 3, gap_s: float = 0.3) -> dict[str, Any]:
        """Status, vCPU PCs sampled a few times (a spinning vCPU moves
        within its loop; a stuck one stays), and the console tail."""
        runs: list[list[VcpuState]] = []
        for i in range(samples):
            runs.append(self.vcpus())
            if i + 1 < samples:
                time.sleep(gap_s)
        return {
            "status": self.status(),
            "vcpus": [[v.to_json() for v in run] for run in runs],
            "cpu": window.to_json() if window else None,
            "console_tail": console_tail(self.console_log),
        }


def describe_vcpus(evidence: dict[str, Any]) -> str:
    """`cpu0 EL1 pc=0x... multi_cpu_stop+0x9c/0x1a0, cpu1 ...` from the last sample."""
    runs = evidence.get("vcpus") or []
    last = runs[-1] if runs else []
    parts = []
    for v in last:
        el = f" EL{v['el']}" if v.get("el") is not None else ""
        sym = f" {v['symbol']}" if v.get("symbol") else ""
        parts.append(f"cpu{v['cpu']}{el} pc={v['pc']}{sym}")
    return ", ".join(parts) or "vCPU state unavailable"
