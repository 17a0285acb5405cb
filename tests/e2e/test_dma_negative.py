"""The DMA scenarios go red, naming the check, on kernels broken on purpose
by small patch series (tests/data/series), applied by the harness itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import run_broken


@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize("profile", ["smmuv3-nested", "virtio-iommu"])
def test_unmap_not_reaching_the_iommu_fails_dma_after_unmap(tmp_path: Path, profile: str) -> None:
    result = run_broken(tmp_path, "unmap-noop.patch", profile, "dma-after-unmap")
    assert str(result["reason"]).startswith(
        "step dma-after-unmap: DMA after unmap was not blocked (stale mapping or IOTLB entry):"
        " after-unmap write: memory unchanged: stale mapping: DMA after unmap reached memory"
    )


@pytest.mark.usefixtures("no_leaked_qemu")
def test_missing_iotlb_invalidation_fails_dma_after_unmap(tmp_path: Path) -> None:
    result = run_broken(tmp_path, "skip-iotlb-sync.patch", "smmuv3-nested", "dma-after-unmap")
    # The device's write after the unmap landed: the SMMU translated it
    # with the entry the skipped sync left in its IOTLB.
    assert str(result["reason"]) == (
        "step dma-after-unmap: DMA after unmap was not blocked (stale mapping or IOTLB entry):"
        " after-unmap write: memory unchanged: stale mapping: DMA after unmap reached memory"
        " (buffer holds the device's data)"
    )


@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(
    ("profile", "step"),
    [
        ("smmuv3-nested", "smmu-reported-the-fault"),
        ("virtio-iommu", "virtio-iommu-reported-the-fault"),
    ],
)
def test_unreported_faults_fail_dma_fault_unmapped(tmp_path: Path, profile: str, step: str) -> None:
    result = run_broken(tmp_path, "no-fault-reports.mbox", profile, "dma-fault-unmapped")
    assert str(result["reason"]).startswith(f"step {step}: ")
    assert "did not report the DMA to an unmapped IOVA: expected event" in str(result["reason"])


# dma-permissions (issue 10 part 1): the mapping's permission must reach the
# IOMMU. Each series makes every mapping read-write in one IOMMU's path; the
# read-only test must then fail naming the permission and the direction.
@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(
    ("series", "profile"),
    [
        ("iopgtable-ignores-readonly.patch", "smmuv3-s2"),
        ("viommu-map-ignores-perm.patch", "virtio-iommu"),
    ],
)
def test_ignored_mapping_permission_fails_dma_permissions(tmp_path: Path, series: str, profile: str) -> None:
    result = run_broken(tmp_path, series, profile, "dma-permissions")
    assert str(result["reason"]).startswith(
        "step permissions: a mapping's permission was not enforced: perm read-only: device write blocked:"
        " read-only mapping at iova 0x5000000: a device write (device->memory DMA) got through"
        " (buffer holds the device's data)"
    )
    # ... and the write-only mapping, where the IOMMU can express it.
    assert "perm write-only: device read blocked" in str(result["steps"][1]["output"])
    assert "# wo_read_result=through" in str(result["steps"][1]["output"])
