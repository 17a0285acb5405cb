"""What the booted kernel offers, so scenarios run only where they can.

Capabilities are the profile's features plus what the build config and the
running guest say. Tokens are plain strings, matched against `requires:`."""

from __future__ import annotations

from harness.errors import GuestFailure, SessionError
from harness.kernel import KernelBuild
from harness.scenario.runner import GuestControl

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
  pkvm-vmm probe 2>/dev/null | sed -n -e 's/^# protected_vm=1$/protected-vm/p' \
                                      -e 's/^# pkvm_hypercalls=1$/pkvm-guest-hypercalls/p'
fi
true
"""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def build_capabilities(kernel: KernelBuild, features: frozenset[str]) -> set[str]:
    """What the profile and the build config say, without a guest."""
    caps = set(features)
    config = kernel.config.read_text()
    for option, token in _CONFIG_CAPS.items():
        if f"\n{option}=y" in f"\n{config}":
            caps.add(token)
    # pkvm_ownership_selftest() runs at hyp init under NVHE_EL2_DEBUG from 6.16.
    if "nvhe-el2-debug" in caps and _version(kernel.version) >= (6, 16):
        caps.add("pkvm-ownership-selftest")
    return caps


# Tokens only the harness's console watcher decides (no shell test can).
CONSOLE_CAPABILITIES = frozenset({"pkvm-protected-mode"})


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


def probe(guest: GuestControl, kernel: KernelBuild, features: frozenset[str]) -> frozenset[str]:
    return frozenset(build_capabilities(kernel, features) | guest_capabilities(guest))
