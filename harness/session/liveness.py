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
kernel (EL1). An nVHE/hVHE hypervisor's PC is a hyp VA, which System.map
does not know: `symbolise_el2` maps it to the kernel image, through QEMU's
own page-table walk when it can, from the layout otherwise."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from harness.kernel.symbols import SymbolTable, is_kernel_va

Symbolize = Callable[[int], str | None]
# One HMP command run on one vCPU (QMP `human-monitor-command` with its
# `cpu-index`): its output, or None when QMP did not answer.
Hmp = Callable[[str, int], str | None]

_CPU = re.compile(r"^CPU#(?P<index>\d+)", re.MULTILINE)
_PC = re.compile(r"\bPC=(?P<pc>[0-9a-f]+)")
_EL = re.compile(r"PSTATE=[0-9a-f]+ \S+ EL(?P<el>\d)")
_GPA = re.compile(r"^gpa: (?P<pa>0x[0-9a-f]+)\s*$", re.MULTILINE)


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
    # For a hyp VA: the kernel-image address the symbol was found at, and
    # how ("gva2gpa": QEMU's walk of the vCPU's EL2 page tables; "layout").
    image: int | None = None
    via: str | None = None

    @property
    def at_hyp_va(self) -> bool:
        """At EL2 on an address that is no kernel VA: the nVHE/hVHE
        hypervisor's (a VHE kernel runs at EL2 on kernel VAs)."""
        return self.el == 2 and not is_kernel_va(self.pc)

    def describe(self) -> str:
        where = f" {self.symbol}" if self.symbol else ""
        el = f" EL{self.el}" if self.el is not None else ""
        return f"cpu{self.index}{el} pc={self.pc:#x}{where}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu": self.index, "pc": hex(self.pc), "el": self.el, "symbol": self.symbol}
        if self.image is not None:
            out["image"], out["via"] = hex(self.image), self.via
        return out


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


def parse_gpa(text: str | None) -> int | None:
    """HMP `gva2gpa`: `gpa: 0x406f5088`, or `Unmapped`."""
    m = _GPA.search(text or "")
    return int(m["pa"], 16) if m else None


def symbolise_el2(vcpus: list[VcpuState], table: SymbolTable, hmp: Hmp | None) -> list[VcpuState]:
    """Name the hyp function each vCPU at a hyp VA runs: `__kvm_nvhe_...`.

    Exact, when QEMU can say: `gva2gpa PC` on that vCPU walks its current
    (EL2) regime's page tables to the PA, and `gva2gpa _text` on a vCPU at
    EL1 gives the image's PA; the image is physically contiguous, so the
    PC's image address is `_text + (PA - PA(_text))`. Otherwise (every vCPU
    in the hypervisor, or QMP silent) from the hyp VA layout alone
    (SymbolTable.hyp_image_address)."""
    if not any(v.at_hyp_va for v in vcpus):
        return vcpus
    text = table.address("_text")
    text_pa = None
    el1 = next((v for v in vcpus if v.el == 1), None)
    if hmp is not None and text is not None and el1 is not None:
        text_pa = parse_gpa(hmp(f"gva2gpa {text:#x}", el1.index))
    out = []
    for v in vcpus:
        if not v.at_hyp_va:
            out.append(v)
            continue
        image, via = None, None
        if hmp is not None and text is not None and text_pa is not None:
            pa = parse_gpa(hmp(f"gva2gpa {v.pc:#x}", v.index))
            if pa is not None:
                image, via = text + pa - text_pa, "gva2gpa"
        if image is None:
            image = table.hyp_image_address(v.pc)
            via = "layout" if image is not None else None
        symbol = table.lookup(image) if image is not None else None
        out.append(replace(v, symbol=symbol, image=image, via=via))
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


class LastSignOfLife:
    """The guest's last sign of life (console or command output, counted
    in characters) and the host CPU sample taken then, for the starvation
    guard: how long it has been silent, and whether the host let QEMU run."""

    def __init__(self, pid: int | None, activity: int) -> None:
        self.pid = pid
        self.activity = activity
        self.at = time.monotonic()
        self.sample = CpuSample.take(pid)
        self.starved = 0  # inconclusive checks so far (the host, not the guest, was silent)

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
        # The table behind `symbolize` (a bound SymbolTable.lookup, as the
        # pipeline passes), for hyp VAs.
        owner = getattr(symbolize, "__self__", None)
        self.symbols = owner if isinstance(owner, SymbolTable) else None
        self._hmp_failed = False

    def hmp(self, command: str, cpu: int) -> str | None:
        """`command` on vCPU `cpu`; after one failure (QMP timed out or
        refused), never again: the layout then names hyp VAs, without a
        QMP timeout per vCPU and sample."""
        if self._hmp_failed:
            return None
        try:
            out = self.machine.command("human-monitor-command", **{"command-line": command, "cpu-index": cpu})
        except Exception:
            self._hmp_failed = True
            return None
        return str(out)

    def vcpus(self) -> list[VcpuState]:
        try:
            text = self.machine.command("human-monitor-command", **{"command-line": "info registers -a"})
        except Exception:  # QMP gone: the caller reports what it has
            return []
        vcpus = parse_registers(str(text), self.symbolize)
        return symbolise_el2(vcpus, self.symbols, self.hmp) if self.symbols is not None else vcpus

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
