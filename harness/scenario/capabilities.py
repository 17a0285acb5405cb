"""What the booted kernel offers, so scenarios run only where they can, and
what it must offer, so that a lost capability is a FAIL and never a skip.

Capabilities are the profile's features plus what the build config and the
running guest say. Tokens are plain strings, matched against `requires:`.
Two kinds of token ride along with them:
- `expect:<token>`: the target and profile claim it (e.g. pKVM protected
  mode on Linux >= 7.1 offers protected VMs), so a kernel without it is
  broken;
- `answer:<key>=<value>`: the probe's raw answer (the errno of
  KVM_CREATE_VM(type=PROTECTED), the helper's exit status), quoted in the
  reason of such a FAIL."""

from __future__ import annotations

from pathlib import Path

from harness.config.models import Scenario
from harness.errors import GuestFailure, SessionError
from harness.kernel import KernelBuild
from harness.report.verdicts import Verdict
from harness.scenario.claims import ANSWER, EXPECT, lost_capabilities
from harness.scenario.runner import GuestControl, ScenarioContext

# Config options worth a capability token.
_CONFIG_CAPS = {
    "CONFIG_NVHE_EL2_DEBUG": "nvhe-el2-debug",
    "CONFIG_DMA_MAP_BENCHMARK": "dma-map-benchmark",
    "CONFIG_VFIO": "vfio",
    "CONFIG_IOMMUFD": "iommufd",
    "CONFIG_ARM_SMMU_V3_IOMMUFD": "smmuv3-iommufd",
    "CONFIG_IOMMUFD_TEST": "iommufd-test",
    "CONFIG_ARM_SMMU_V3_PKVM": "pkvm-smmuv3",
    "CONFIG_VIRTIO_BLK": "virtio-blk",
    # Test enablement: tests/data/series/test-enable-cacheable-pfnmap.patch.
    "CONFIG_TEST_CACHEABLE_PFNMAP": "test-cacheable-pfnmap",
}

# The tokens a kernel's build config decides (known before it boots).
CONFIG_TOKENS = frozenset(_CONFIG_CAPS.values())

# `kselftest:<suite>`: the suite's selftests are in the image (and a scenario
# that requires it makes the pipeline build and pack them).
KSELFTEST_CAP = "kselftest:"

# One round trip; each line that a test prints is a token. Public: the LAVA
# exporter runs the same script in a LAVA test shell.
PROBE_SCRIPT = r"""
test -c /dev/kvm && echo kvm
test -d /sys/kernel/debug/tracing -o -d /sys/kernel/tracing && echo tracing
for h in /usr/local/bin/*; do [ -x "$h" ] && echo "helper:${h##*/}"; done
for d in /usr/lib/kselftests/*; do [ -d "$d" ] && echo "kselftest:${d##*/}"; done
if [ -x /usr/local/bin/pkvm-vmm ] && [ -c /dev/kvm ]; then
  out=$(pkvm-vmm probe 2>&1); rc=$?
  printf '%s\n' "$out" | sed -n -e 's/^# protected_vm=1$/protected-vm/p' \
                               -e 's/^# pkvm_hypercalls=1$/pkvm-guest-hypercalls/p' \
                               -e 's/^# \(protected_vm_error\|pkvm_hypercalls_error\)=/answer:\1=/p' \
                               -e 's/^Bail out! /answer:pkvm_vmm_bail=/p'
  echo "answer:pkvm_vmm_probe_status=$rc"
fi
true
"""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# Linux version from which pKVM offers protected VMs to userspace
# (KVM_VM_TYPE_ARM_PROTECTED, __pkvm_host_donate_guest): platform notes.
PROTECTED_VMS_SINCE = (7, 1)


# pkvm_ownership_selftest() runs at hyp init under NVHE_EL2_DEBUG from 6.16.
OWNERSHIP_SELFTEST_SINCE = (6, 16)
# It prints nothing when it passes. What shows that it ran: this symbol in
# the build (it is compiled in, and called unconditionally by
# __pkvm_init_finalise() before the host is entered), then the protected-mode
# success line, which the host prints only after that call returned.
OWNERSHIP_SELFTEST_SYMBOL = "__kvm_nvhe_pkvm_ownership_selftest"


def expected_capabilities(
    kernel_version: str, features: frozenset[str], config_tokens: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The capabilities this kernel on this profile must show, each with
    why it is expected. What the profile does not claim (no `pkvm` on an
    nvhe profile) is not expected: its scenarios skip."""
    expected: dict[str, str] = {}
    if "nvhe-el2-debug" in config_tokens and _version(kernel_version) >= OWNERSHIP_SELFTEST_SINCE:
        why = f"CONFIG_NVHE_EL2_DEBUG=y on Linux {kernel_version} builds it in"
        expected["pkvm-ownership-selftest"] = why
    if "pkvm" in features:
        why = "the profile boots pKVM in protected mode"
        expected |= {"pkvm-protected-mode": why, "kvm": why}
        if _version(kernel_version) >= PROTECTED_VMS_SINCE:
            # (no comma: LAVA job metadata carries these tokens comma-separated)
            why = f"pKVM protected mode is on and Linux {kernel_version} offers protected VMs"
            expected |= {"protected-vm": why, "pkvm-guest-hypercalls": why}
    return expected


def build_capabilities(kernel: KernelBuild, features: frozenset[str]) -> set[str]:
    """What the profile and the build config say, without a guest."""
    caps = set(features)
    config = kernel.config.read_text()
    for option, token in _CONFIG_CAPS.items():
        if f"\n{option}=y" in f"\n{config}":
            caps.add(token)
    if _has_symbol(kernel.system_map, OWNERSHIP_SELFTEST_SYMBOL):
        caps.add("pkvm-ownership-selftest")
    return caps


def _has_symbol(system_map: Path, name: str) -> bool:
    try:
        text = system_map.read_text(errors="replace")
    except OSError:
        return False
    return any(line.rsplit(" ", 1)[-1] == name for line in text.splitlines())


# Tokens only the harness's console watcher decides (no shell test can).
CONSOLE_CAPABILITIES = frozenset({"pkvm-protected-mode"})


# The tokens only the running guest answers for (PROBE_SCRIPT's lines and the
# console watcher's); every other token is decided before boot, by
# static_capabilities. Public: the LAVA exporter leaves out of a job only
# what is decided before boot.
GUEST_TOKENS = frozenset({"kvm", "tracing", "protected-vm", "pkvm-guest-hypercalls"}) | CONSOLE_CAPABILITIES
GUEST_TOKEN_PREFIXES = ("helper:", KSELFTEST_CAP, ANSWER)


def decided_by_guest(token: str) -> bool:
    """Whether only the running guest can say if `token` is offered."""
    return token in GUEST_TOKENS or token.startswith(GUEST_TOKEN_PREFIXES)


def guest_capabilities(guest: GuestControl) -> set[str]:
    """What the running guest says: its boot log and PROBE_SCRIPT's output."""
    caps = set()
    if any(e.signature == "pkvm-init" for e in guest.watcher.events):
        caps.add("pkvm-protected-mode")
    result = guest.run("serial", PROBE_SCRIPT, 60)
    fatal = guest.watcher.fatal
    if result.status is None and fatal is not None:
        raise GuestFailure(fatal.summary())  # the kernel died under the probe: its FAIL
    if result.status is None:
        # An unfinished probe must not quietly turn into missing capabilities
        # (every scenario would "skip"). A hang was raised by run() already.
        raise SessionError(
            f"capability probe did not finish ({result.ended_by} after {result.duration_s:.0f}s)"
        )
    caps.update(line.strip() for line in result.output.splitlines() if line.strip())
    return caps


def static_capabilities(kernel: KernelBuild, features: frozenset[str]) -> frozenset[str]:
    """Everything known before the guest boots: the profile's features, the
    build config's tokens and the `expect:` claims."""
    build = build_capabilities(kernel, features)
    claims = expected_capabilities(kernel.version, features, frozenset(build))
    expected = {f"{EXPECT}{token}={why}" for token, why in claims.items()}
    return frozenset(build | expected)


def probe(guest: GuestControl, kernel: KernelBuild, features: frozenset[str]) -> frozenset[str]:
    return static_capabilities(kernel, features) | guest_capabilities(guest)


def requirement_verdict(scenario: Scenario, ctx: ScenarioContext) -> tuple[Verdict, str] | None:
    """Whether `scenario` can run with what the kernel offers: None if so;
    a SKIP for what the profile or target never claimed; a FAIL for a
    capability they claim and the kernel lost (and, for a scenario that
    checks every claimed capability, boot-health, any such loss)."""
    caps = ctx.capabilities
    lost = lost_capabilities(caps)
    if scenario.check_capabilities and lost:
        return Verdict.FAIL, "; ".join(lost)
    missing = sorted(scenario.requires - caps)
    needed = lost_capabilities(caps, missing)
    if needed:
        return Verdict.FAIL, "; ".join(needed)
    if missing:
        return Verdict.SKIP, f"profile {ctx.profile.name} / kernel lacks: {', '.join(missing)}"
    return None
