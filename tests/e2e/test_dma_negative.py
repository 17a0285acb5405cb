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
    assert str(result["reason"]).startswith(
        "step dma-after-unmap: DMA after unmap was not blocked (stale mapping or IOTLB entry):"
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
