"""Issue 10 parts 2 and 5 on mainline-7.3: IOMMU modes as profiles, and
virtio-iommu's own properties. Each property passes on its profile and goes
red on a kernel broken on purpose (tests/data/series, NEGATIVE TEST)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import run_broken, run_scenarios

DMA = [
    "boot-health",
    "iommu-default-domain",
    "dma-roundtrip",
    "dma-fault-unmapped",
    "dma-after-unmap",
    "dma-permissions",
]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_iommu_modes_keep_vfio_isolated(tmp_path: Path) -> None:
    """iommu.strict=0, iommu.passthrough=1 and boot-bypass=off: the mode
    takes effect for the kernel's own devices, and VFIO's DMA is still
    translated, isolated and strictly unmapped."""
    profiles = ["smmuv3-nested-lazy", "smmuv3-nested-passthrough", "virtio-iommu-no-bypass"]
    run = run_scenarios(tmp_path, "mainline-7.3", profiles, DMA)
    assert run.rc == 0, (run.rc, run.stderr[-2000:])
    assert set(run.verdicts().values()) == {"pass"}
    assert len(run.verdicts()) == len(profiles) * len(DMA)
    nic = {
        r["profile"]: r["steps"][0]["output"].splitlines()
        for r in run.results["results"]
        if r["scenario"] == "iommu-default-domain"
    }
    assert "nic_domain=DMA-FQ" in nic["smmuv3-nested-lazy"]
    assert any("DMA domain TLB invalidation policy: lazy mode" in ln for ln in nic["smmuv3-nested-lazy"])
    assert "nic_domain=identity" in nic["smmuv3-nested-passthrough"]
    assert "nic_domain=DMA" in nic["virtio-iommu-no-bypass"]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_vfio_unmaps_that_follow_the_lazy_policy_fail_dma_after_unmap(tmp_path: Path) -> None:
    result = run_broken(tmp_path, "vfio-unmap-lazy.patch", "smmuv3-nested-lazy", "dma-after-unmap")
    assert str(result["reason"]) == (
        "step dma-after-unmap: DMA after unmap was not blocked (stale mapping or IOTLB entry):"
        " after-unmap write: memory unchanged: stale mapping: DMA after unmap reached memory"
        " (buffer holds the device's data)"
    )


@pytest.mark.usefixtures("no_leaked_qemu")
def test_passthrough_leaking_into_vfio_fails_dma_roundtrip(tmp_path: Path) -> None:
    result = run_broken(
        tmp_path, "passthrough-vfio-identity.patch", "smmuv3-nested-passthrough", "dma-roundtrip"
    )
    assert str(result["reason"]).startswith(
        "step roundtrip: mapped DMA did not move the written pattern:"
        " roundtrip iova=0x100000 size=4: data mismatch"
    )


@pytest.mark.usefixtures("no_leaked_qemu")
def test_virtio_iommu_properties(tmp_path: Path) -> None:
    """Part 5 on the default virtio-iommu profile (three edus), and the 64 KiB
    granule refused under the 4 KiB kernel (part 2)."""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["virtio-iommu", "virtio-iommu-64k"],
        ["virtio-iommu-probe", "dma-isolation", "virtio-iommu-identity", "virtio-iommu-granule"],
    )
    assert run.rc == 0, (run.rc, run.stderr[-2000:])
    assert run.verdicts() == {
        ("virtio-iommu-probe", "virtio-iommu"): "pass",
        ("dma-isolation", "virtio-iommu"): "pass",
        ("virtio-iommu-identity", "virtio-iommu"): "pass",
        ("virtio-iommu-granule", "virtio-iommu"): "skip",
        ("virtio-iommu-probe", "virtio-iommu-64k"): "skip",
        ("dma-isolation", "virtio-iommu-64k"): "skip",
        ("virtio-iommu-identity", "virtio-iommu-64k"): "skip",
        ("virtio-iommu-granule", "virtio-iommu-64k"): "pass",
    }


@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(
    ("series", "profile", "scenario", "reason"),
    [
        (
            "viommu-ignores-resv-regions.patch",
            "virtio-iommu",
            "virtio-iommu-probe",
            # The host bridge's group lacks the MSI window the probe gave.
            "step reserved-regions: the probe's MSI reserved region"
            " is not what the guest's IOMMU groups report: exit status 1, expected 0:"
            " missing=0000:00:00.0",
        ),
        (
            "viommu-shared-vfio-domain.patch",
            "virtio-iommu",
            "dma-isolation",
            "step two-domains: one device's DMA reached another device's mapping: isolation foreign"
            " iova: peer write blocked: 0000:00:07.0's DMA write at iova 0x6200000 landed in"
            " 0000:00:06.0's mapping",
        ),
        (
            "viommu-identity-no-bypass.patch",
            "virtio-iommu",
            "virtio-iommu-identity",
            "unexpected IOMMU fault: virtio-iommu page fault from 0000:00:07.0 (driver unknown)"
            " at 0x1000000000000",
        ),
        (
            "viommu-accepts-large-granule.patch",
            "virtio-iommu-64k",
            "virtio-iommu-granule",
            # The refusal is what keeps this guest alive: without it, the
            # DMA API's mappings widened to 64 KiB pages kill init at boot.
            "boot: kernel-panic: Kernel panic - not syncing: Attempted to kill init!"
            " exitcode=0x0000000b",  # SIGSEGV: init's pages mapped at the wrong granule
        ),
    ],
)
def test_virtio_iommu_negative(tmp_path: Path, series: str, profile: str, scenario: str, reason: str) -> None:
    result = run_broken(tmp_path, series, profile, scenario)
    assert str(result["reason"]).startswith(reason)
