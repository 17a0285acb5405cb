"""The kernel-log signature table, in the spirit of LAVA's kernel-message
table: data, not code. Order matters: the first signature whose `start`
matches a line starts an event for it.

Each signature names:
- `start`: the line that opens an event; its named groups become fields;
- `end`: the line that closes the trace (inclusive), if the message has one;
- `more`: lines that continue the event (else the event closes at the first
  line that does not match; None with an `end` means "any line");
- `max_lines`: a cap on the trace, for messages whose end never comes;
- `fatal`: the kernel is dead, or stuck in a way it reports itself (a
  lockup, an RCU stall, the NMI backtraces that come with them); the boot
  or the running step stops at once and FAILs naming it;
- `severity`: "error" and "warning" events fail a scenario that forbids them.
Field decoders for multi-line messages live in `decoders.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Signature:
    name: str
    kind: str
    severity: Severity
    start: re.Pattern[str]
    end: re.Pattern[str] | None = None
    more: re.Pattern[str] | None = None
    max_lines: int = 1
    fatal: bool = False
    decoder: str | None = None


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_END_TRACE = _re(r"^---\[ end trace")
_ANY = _re(r"")

SIGNATURES: tuple[Signature, ...] = (
    # --- hypervisor (pKVM at EL2) ---
    Signature(
        "hyp-panic",
        "hyp",
        "error",
        _re(
            r"^kvm \[\d+\]: nVHE hyp panic at: (?:\[<)?(?P<address>[0-9a-fx]+)"
            r"(?:>\] (?P<symbol>[^!\s]+))?!"
        ),
        end=_re(r"^---\[ end Kernel panic"),
        more=_ANY,
        max_lines=60,
        fatal=True,
        decoder="hyp_symbol",
    ),
    Signature(
        "hyp-bug",
        "hyp",
        "error",
        _re(r"^kvm \[\d+\]: nVHE hyp BUG at: (?P<location>[^!\s]+)!"),
        end=_re(r"^---\[ end Kernel panic"),
        more=_ANY,
        max_lines=60,
        fatal=True,
    ),
    # --- kernel crashes ---
    Signature(
        "kernel-panic",
        "panic",
        "error",
        _re(r"^Kernel panic - not syncing: (?P<reason>.*)$"),
        end=_re(r"^---\[ end Kernel panic"),
        more=_ANY,
        max_lines=60,
        fatal=True,
    ),
    Signature(
        "kasan",
        "kasan",
        "error",
        _re(r"^BUG: KASAN: (?P<type>\S+) in (?P<symbol>\S+)"),
        end=_re(r"^={20,}"),
        more=_ANY,
        max_lines=120,
    ),
    Signature(
        "soft-lockup",
        "lockup",
        "error",
        _re(r"watchdog: BUG: soft lockup - CPU#(?P<cpu>\d+) stuck for (?P<seconds>\d+)s!"),
        end=_END_TRACE,
        more=_ANY,
        max_lines=60,
        fatal=True,
    ),
    Signature(
        "hard-lockup",
        "lockup",
        "error",
        _re(r"watchdog: (?:CPU(?P<cpu>\d+): )?Watchdog detected hard LOCKUP"),
        end=_END_TRACE,
        more=_ANY,
        max_lines=60,
        fatal=True,
    ),
    Signature(
        "rcu-stall",
        "rcu",
        "error",
        _re(r"^rcu: INFO: (?P<flavor>\S+) (?:self-)?detected stalls? on"),
        end=_END_TRACE,
        more=_ANY,
        max_lines=60,
        fatal=True,
    ),
    # A CPU's stack sent on request (an RCU stall, a hard lockup, a hung
    # task report): on its own, a CPU another one found stuck.
    Signature(
        "nmi-backtrace",
        "lockup",
        "error",
        _re(r"^NMI backtrace for cpu (?P<cpu>\d+)"),
        end=_re(r"^(?:NMI backtrace for cpu|rcu: |---\[ end trace)"),
        more=_ANY,
        max_lines=40,
        fatal=True,
    ),
    Signature(
        "kernel-bug",
        "bug",
        "error",
        _re(r"^kernel BUG at (?P<location>[^!]+)!"),
        end=_END_TRACE,
        more=_ANY,
        max_lines=60,
    ),
    Signature(
        "oops",
        "oops",
        "error",
        _re(r"^(?:Internal error: (?P<reason>.*)|Unable to handle kernel (?P<what>.*))$"),
        end=_END_TRACE,
        more=_ANY,
        max_lines=60,
    ),
    Signature(
        "bug",
        "bug",
        "error",
        _re(r"^BUG: (?P<what>.*)$"),
        end=_END_TRACE,
        more=_ANY,
        max_lines=60,
    ),
    Signature(
        "warning",
        "warning",
        "warning",
        _re(r"^WARNING: (?:CPU: \d+ PID: \d+ at (?P<location>\S+) (?P<symbol>\S+)|(?P<what>.*))"),
        end=_END_TRACE,
        more=_ANY,
        max_lines=60,
    ),
    # --- IOMMUs ---
    Signature(
        "smmuv3-event",
        "iommu-fault",
        "info",
        _re(r"^arm-smmu-v3 (?P<device>\S+): event (?P<id>0x[0-9a-f]+) received:"),
        more=_re(r"^arm-smmu-v3 \S+: (?:\t|event: |(?:un)?priv |\s+0x)"),
        max_lines=8,
        decoder="smmu_event",
    ),
    Signature(
        "smmuv3-probe",
        "iommu-probe",
        "info",
        _re(
            r"^arm-smmu-v3 (?P<device>\S+): (?:ias (?P<ias>\d+)-bit, )?oas (?P<oas>\d+)-bit"
            r" \(features (?P<features>0x[0-9a-f]+)\)"
        ),
        decoder="smmu_features",
    ),
    Signature(
        "virtio-iommu-fault",
        "iommu-fault",
        "info",
        _re(
            r"^virtio_iommu (?P<device>\S+): page fault from EP (?P<endpoint>\d+)"
            r" at (?P<address>0x[0-9a-f]+)(?: \[(?P<flags>[^\]]*)\])?"
        ),
        decoder="virtio_iommu_fault",
    ),
    Signature(
        "virtio-iommu-probe",
        "iommu-probe",
        "info",
        _re(r"^virtio_iommu (?P<device>\S+): input address: (?P<ias>\d+) bits"),
    ),
    # --- pKVM state ---
    Signature(
        "pkvm-init",
        "pkvm",
        "info",
        _re(r"^kvm \[\d+\]: Protected (?P<mode>[nh]VHE) mode initialized successfully"),
    ),
    Signature(
        "kvm-init",
        "kvm",
        "info",
        _re(r"^kvm \[\d+\]: (?:Hyp )?(?P<mode>[nh]?VHE) mode initialized successfully"),
    ),
    # A pr_warn, not a WARNING splat: creating a protected VM is expected.
    Signature(
        "pvm-taint",
        "pkvm",
        "info",
        _re(r"^kvm: protected VMs are experimental"),
    ),
    Signature(
        "ratelimit",
        "log",
        "info",
        _re(r"^(?P<function>\S+): (?P<count>\d+) callbacks suppressed"),
    ),
)

# Names a scenario may forbid as a group.
GROUPS: dict[str, tuple[str, ...]] = {
    "crash": ("hyp-panic", "hyp-bug", "kernel-panic", "oops", "kernel-bug", "bug", "kasan"),
    "hyp": ("hyp-panic", "hyp-bug"),
    "lockup": ("soft-lockup", "hard-lockup", "rcu-stall", "nmi-backtrace"),
    "iommu-fault": tuple(s.name for s in SIGNATURES if s.kind == "iommu-fault"),
    "any-error": tuple(s.name for s in SIGNATURES if s.severity != "info"),
}


def expand(names: tuple[str, ...] | list[str]) -> set[str]:
    """Signature names, with group names (crash, hyp, lockup, any-error) expanded."""
    out: set[str] = set()
    for n in names:
        out.update(GROUPS.get(n, (n,)))
    return out


def known_names() -> set[str]:
    return {s.name for s in SIGNATURES} | set(GROUPS)


def fatal_stream_patterns() -> list[re.Pattern[str]]:
    """Start patterns of fatal signatures, unanchored, for stream matching
    (a session waits on these so a dead kernel is noticed at once)."""
    return [re.compile(s.start.pattern.lstrip("^")) for s in SIGNATURES if s.fatal]
