"""Frozen dataclasses for the three kinds of data file. Everything downstream
consumes these, never raw YAML."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SourceKind = Literal["debian", "git", "tarball"]
SeriesKind = Literal["mbox", "dir", "b4"]
Transport = Literal["serial", "ssh"]
ExpectValue = str | int | float | bool


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    location: str  # a Debian package name, or a path
    # git: this commit (a fetched remote's), instead of the work tree as it is
    rev: str | None = None
    origin: str | None = None  # the remote's URL, for reproducers

    def describe(self) -> str:
        at = f"@{self.rev[:12]}" if self.rev else ""
        return f"{self.kind}:{self.location}{at}"


@dataclass(frozen=True)
class SeriesSpec:
    kind: SeriesKind
    location: str  # a path (mbox file, patch directory) or a message-id

    def describe(self) -> str:
        return f"{self.kind}:{self.location}"


@dataclass(frozen=True)
class KnownGap:
    """A failure a target declares as expected: one step of one scenario,
    failing for one reason. It covers that failure and nothing else: not a
    hang, a crash, a boot or probe failure, another step or another reason."""

    step: str
    reason: re.Pattern[str]  # searched in the scenario's failure reason
    why: str

    def covers(self, failed_step: str | None, reason: str) -> bool:
        return failed_step == self.step and self.reason.search(reason) is not None

    def describe(self) -> str:
        return f"step {self.step}, reason /{self.reason.pattern}/"


@dataclass(frozen=True)
class Target:
    """A kernel to build: source + patch series + config fragments + toolchain."""

    name: str
    description: str
    source: SourceSpec
    series: SeriesSpec | None
    fragments: tuple[Path, ...]
    toolchain: Literal["gcc", "llvm"] = "gcc"
    cmdline: tuple[str, ...] = ()
    # scenario name -> the one failure there that is an expected, declared gap.
    known_gaps: Mapping[str, KnownGap] = field(default_factory=dict)
    path: Path | None = None
    # A persistent O= directory of its own (by this name) instead of the
    # one shared by every target on the same source and toolchain: for a
    # configuration so far from the others (e.g. one that changes struct
    # task_struct) that alternating in the shared one rebuilds everything.
    build_dir: str = ""

    def cli_args(self, upto: int | None = None) -> list[str]:
        """The command-line arguments that select exactly this kernel
        (overrides given on the command line included): every reproducer
        (reproduce.sh, a build's metadata, bisect's answer) uses them."""
        args = ["--target", str(self.path) if self.path else self.name]
        if self.source.origin and self.source.rev:
            args += ["--source", f"{self.source.origin}@{self.source.rev}"]
        elif self.source.kind != "debian":
            args += ["--source", self.source.location]
        if self.series is not None:
            args += ["--series", self.series.location]
            if upto is not None:
                args += ["--upto", str(upto)]
        return [*args, "--toolchain", self.toolchain]


@dataclass(frozen=True)
class Profile:
    """A QEMU machine: the IOMMU and its stage, pKVM on or off, the devices."""

    name: str
    description: str
    machine: str
    iommu: Literal["smmuv3", "virtio-iommu", "none"]
    features: frozenset[str]
    smmu_stage: Literal["1", "2", "nested"] | None = None
    cpu: str = "max"
    smp: int = 2
    memory_mb: int = 1024
    scratch_disk_mb: int = 16  # a virtio-blk disk behind the IOMMU; 0 for none
    # kvm-arm.mode= on the kernel command line: "protected" (pKVM), "nvhe"
    # (the same machine without pKVM, for comparison) or "default" (no
    # kvm-arm.mode at all: VHE on a VHE CPU such as -cpu max).
    kvm_mode: Literal["protected", "nvhe", "default"] = "protected"
    cmdline: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    # Properties of the virtio-iommu-pci device (granule=64k, boot-bypass=off).
    iommu_options: tuple[str, ...] = ()
    # Values scenarios compare against, e.g. smmu_stage1: true.
    expect: Mapping[str, ExpectValue] = field(default_factory=dict)
    path: Path | None = None

    @property
    def pkvm(self) -> bool:
        return self.kvm_mode == "protected"


@dataclass(frozen=True)
class EventExpectation:
    signature: str
    fields: Mapping[str, ExpectValue] = field(default_factory=dict)
    min_count: int = 1


@dataclass(frozen=True)
class QmpAction:
    """A QMP command sent from the host side (e.g. device_add for hotplug),
    optionally waiting for an event such as DEVICE_DELETED."""

    command: str
    arguments: Mapping[str, ExpectValue] = field(default_factory=dict)
    wait_event: str | None = None


@dataclass(frozen=True)
class KselftestRun:
    """Kernel selftests of one suite (a directory of tools/testing/selftests,
    built from the target's own source and packed into the image), run in
    the guest one binary at a time, each under its own timeout."""

    suite: str  # "kvm" | "iommu"
    tests: tuple[str, ...]  # binaries, relative to the suite (e.g. arm64/psci_test)
    timeout_s: float = 120.0  # per binary: past it the binary is killed, its case FAILs


@dataclass(frozen=True)
class DmaFuzzRun:
    """`edu-dma fuzz` runs judged by the host model (harness/scenario/
    dma_fuzz.py): one run per seed, each of `length` operations, through
    one VFIO backend."""

    seeds: tuple[int, ...]
    length: int = 40
    backend: Literal["type1", "iommufd"] = "type1"
    # Guest runs the minimizer may spend on a failing sequence.
    minimize_budget: int = 40


@dataclass(frozen=True)
class KnownFailure:
    """A selftest case that fails for a reason outside the kernel under test
    (pKVM's restrictions on normal VMs, TCG limits), scoped to targets (and
    profiles): its FAIL becomes an xfail with this reason, and a pass an
    XPASS, so the list cannot rot."""

    suite: str
    case: str  # fnmatch glob on the case name (binary, or binary/subtest)
    # Searched in the case's failure (its assertion line): only that failure
    # is known. A crash, a timeout or another assertion stays a FAIL.
    failure: re.Pattern[str]
    targets: tuple[str, ...]  # fnmatch globs on target names
    profiles: tuple[str, ...]  # fnmatch globs on profile names ("*": all)
    reason: str
    where: str = ""  # file:line, for the report

    def applies(self, suite: str, target: str, profile: str) -> bool:
        return (
            suite == self.suite
            and any(fnmatch.fnmatchcase(target, t) for t in self.targets)
            and any(fnmatch.fnmatchcase(profile, p) for p in self.profiles)
        )

    def matches(self, case: str) -> bool:
        return fnmatch.fnmatchcase(case, self.case)

    def covers(self, failure: str) -> bool:
        return self.failure.search(failure) is not None

    def to_json(self) -> dict[str, object]:
        return {
            "suite": self.suite,
            "case": self.case,
            "failure": self.failure.pattern,
            "targets": list(self.targets),
            "profiles": list(self.profiles),
            "reason": self.reason,
            "where": self.where,
        }


@dataclass(frozen=True)
class Step:
    name: str
    requires: frozenset[str] = frozenset()
    transport: Transport = "serial"
    run: str | None = None
    timeout_s: float = 60.0
    expect_status: int | None = 0
    expect_output: str | None = None
    forbid_output: str | None = None
    expect_events: tuple[EventExpectation, ...] = ()
    forbid_events: tuple[str, ...] = ()
    events_since: Literal["boot", "scenario", "step"] = "step"
    # The command prints KTAP: any "not ok" fails the step (naming the test),
    # "Bail out!" is an ERROR (the helper could not even set up).
    expect_ktap: bool = False
    qmp: QmpAction | None = None
    fail_reason: str | None = None
    # Liveness probe for this step's command (None: the run's defaults): a
    # silent guest is probed after hang_probe_s, and is hung when it then
    # does not answer within hang_timeout_s while it had CPU.
    hang_probe_s: float | None = None
    hang_timeout_s: float | None = None
    # The scenario's point: if every essential step of a scenario skips, the
    # scenario is a SKIP, whatever its setup steps did.
    essential: bool = False
    # Wait until the kernel's rate limit on IOMMU fault reports (5 s windows)
    # lets the next report through: this long after the last report the
    # console showed, in guest time (no wait when there was none).
    fault_report_window_s: float | None = None
    kselftest: KselftestRun | None = None
    dma_fuzz: DmaFuzzRun | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    steps: tuple[Step, ...]
    requires: frozenset[str] = frozenset()
    timeout_s: float = 600.0
    forbid_events: tuple[str, ...] = ()
    check_boot_log: bool = False
    # Fail unless the kernel offers every capability its target and profile
    # claim (boot-health: a kernel that lost one is red even where no
    # scenario that needs it runs).
    check_capabilities: bool = False
    path: Path | None = None
    # Free labels (smoke, dma, pkvm, ...): pytest markers, matrix selection.
    tags: tuple[str, ...] = ()

    @property
    def saturates_vcpus(self) -> bool:
        """Keeps every vCPU of the guest busy for most of its run (the
        kselftests run JOBS binaries at a time): two such cells at once on a
        small host each get a share of its CPUs (see cells.CpuGate)."""
        return any(step.kselftest is not None for step in self.steps)
