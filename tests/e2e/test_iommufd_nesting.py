"""iommufd nesting (issue 10 part 3): what mainline 7.3 gives and refuses on
each SMMU profile, the vIOMMU run on a test-enablement series, and proofs that
the scenario goes red on kernels broken on purpose (tests/data/series)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SERIES, Run, run_broken, run_scenarios


def _run(tmp_path: Path, profiles: list[str], series: str | None = None) -> Run:
    extra = ["--series", str(SERIES / series)] if series else []
    return run_scenarios(tmp_path, "mainline-7.3", profiles, ["iommufd-nesting"], *extra)


def _step_output(result: dict[str, Any], name: str) -> str:
    (step,) = [s for s in result["steps"] if s["name"] == name]
    return str(step["output"])


@pytest.mark.usefixtures("no_leaked_qemu")
def test_mainline_nests_on_nested_refuses_elsewhere_and_skips_the_viommu(tmp_path: Path) -> None:
    run = _run(tmp_path, ["smmuv3-nested", "smmuv3-s1", "smmuv3-s2"])
    assert run.rc == 0, run.stderr[-2000:]
    by_profile = {r["profile"]: r for r in run.results["results"]}
    assert {p: r["verdict"] for p, r in by_profile.items()} == {
        "smmuv3-nested": "pass",
        "smmuv3-s1": "pass",
        "smmuv3-s2": "pass",
    }
    nested = by_profile["smmuv3-nested"]
    assert "ok 2 s2-parent: DMA round trip through the stage 2" in _step_output(nested, "s2-parent")
    # 7.3 refuses the vIOMMU on QEMU 10.0's SMMU: a SKIP naming IDR3.FWB, not a pass.
    viommu = _step_output(nested, "viommu")
    assert "# fwb=0" in viommu
    for n in range(1, 5):
        assert f"ok {n} viommu: " in viommu
    assert viommu.count("# SKIP kernel refused the vIOMMU (Operation not supported): SMMU_IDR3.FWB=0") == 4
    steps = {s["name"]: s for s in nested["steps"]}
    assert steps["viommu"]["verdict"] == "skip"
    assert steps["viommu"]["reason"].startswith(
        "step viommu: all 4 KTAP tests skipped: kernel refused the vIOMMU (Operation not supported):"
        " SMMU_IDR3.FWB=0, no S2FWB"
    )
    assert steps["s2-parent-fault-reported"]["verdict"] == "pass"
    for profile in ("smmuv3-s1", "smmuv3-s2"):
        s2 = _step_output(by_profile[profile], "s2-parent")
        assert "ok 1 s2-parent: NEST_PARENT stage 2 given where the SMMU nests, refused where not" in s2
        assert "# nest_parent=Operation not supported" in s2
        assert _step_output(by_profile[profile], "viommu").count("# SKIP no nesting: SMMU IDR0.S1P=") == 4
    # The s2-parent fault claim applies only where the SMMU nests.
    steps = {s["name"]: s["verdict"] for s in by_profile["smmuv3-s1"]["steps"]}
    assert steps["s2-parent-fault-reported"] == "skip"


@pytest.mark.usefixtures("no_leaked_qemu")
def test_viommu_runs_through_both_stages_with_the_test_enablement_series(tmp_path: Path) -> None:
    run = _run(tmp_path, ["smmuv3-nested"], "test-enable-viommu-no-s2fwb.patch")
    assert run.rc == 0, run.stderr[-2000:]
    (result,) = run.results["results"]
    assert result["verdict"] == "pass", result["reason"]
    (patch,) = run.results["targets"][0]["kernel"]["series"]["patches"]
    assert "TEST-ENABLEMENT" in patch["subject"]
    viommu = _step_output(result, "viommu")
    assert "SKIP" not in viommu
    for n, name in enumerate(
        [
            "IOMMU_VIOMMU_ALLOC(ARM_SMMUV3) on the NEST_PARENT stage 2",
            "vDEVICE and nested HWPT (vSTE -> CD) attached",
            "DMA through stage 1 + stage 2 lands where the stage 1 says",
            "after a stage-1 change and TLBI_NH_VA, DMA lands at the new page",
        ],
        start=1,
    ):
        assert f"ok {n} viommu: {name}" in viommu.splitlines()


BROKEN = [
    # (series, start of the reason)
    (
        "nest-parent-unmap-ignored.patch",
        "step s2-parent: the NEST_PARENT stage 2 did not isolate (or was given without nesting):"
        " s2-parent: DMA after unmap changes nothing: unmapped page:",
    ),
    (
        "hw-info-hides-s2.patch",
        "step hw-info: IOMMU_GET_HW_INFO's SMMUv3 ID registers disagree with the profile:"
        " hw-info: IDR0.S2P agrees with the profile: IDR0.S2P=0, profile says stage 2 present",
    ),
]


@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(("series", "reason"), BROKEN, ids=[b[0].removesuffix(".patch") for b in BROKEN])
def test_broken_nesting_fails_iommufd_nesting(tmp_path: Path, series: str, reason: str) -> None:
    result = run_broken(tmp_path, series, "smmuv3-nested", "iommufd-nesting")
    assert str(result["reason"]).startswith(reason), result["reason"]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_dropped_viommu_invalidation_fails_iommufd_nesting(tmp_path: Path) -> None:
    run = _run(tmp_path, ["smmuv3-nested"], "viommu-invalidation-dropped.mbox")
    assert run.rc == 1, (run.rc, run.stderr[-2000:])
    (result,) = run.results["results"]
    assert result["verdict"] == "fail"
    subjects = [p["subject"] for p in run.results["targets"][0]["kernel"]["series"]["patches"]]
    assert "TEST-ENABLEMENT" in subjects[0] and "NEGATIVE TEST" in subjects[1]
    assert str(result["reason"]).startswith(
        "step viommu: nested translation through the vIOMMU went wrong:"
        " viommu: after a stage-1 change and TLBI_NH_VA, DMA lands at the new page:"
        " old page A changed after TLBI_NH_VA (stale stage-1 translation)"
    ), result["reason"]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_stage_1_nest_parent_fails_naming_the_stage_the_smmu_reported(tmp_path: Path) -> None:
    """The round trip and the fault after unmap look the same through a
    stage-1 domain: only the SMMU's own fault record says which stage
    faulted, and the step reads it."""
    result = run_broken(tmp_path, "nest-parent-stage1.patch", "smmuv3-nested", "iommufd-nesting")
    reason = str(result["reason"])
    assert reason.startswith(
        "step s2-parent-fault-reported: the SMMU did not report a stage-2 fault for DMA to an IOVA"
        " unmapped from the NEST_PARENT stage 2: expected event smmuv3-event"
    ), reason
    assert "stage=s2" in reason and "(saw: " in reason and "stage=s1" in reason, reason
