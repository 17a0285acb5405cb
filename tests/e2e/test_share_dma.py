"""The share-DMA invariant (#17), both ways: on mainline 7.3 the four checks
fail and the target's known gap covers exactly them; with the
TEST-ENABLEMENT series (tests/data/series/test-enable-share-dma-type1.patch)
the type1 checks pass, because the kernel refuses with EPERM; with that
series plus a one-line break of one of its checks they fail, with the
reason of the check that broke, and the known gap does not cover it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DEFAULT_SUITE, SERIES, Run, run_scenarios

SCENARIOS = ["pvm-share-dma-type1", "pvm-share-dma-iommufd"]
ENABLE = "test-enable-share-dma-type1.patch"
READ_OLD = (
    "mapped then donated: device read through the old IOVA: host DMA mapping survived donation:"
    " device read returned the guest's secret"
)
READ_NEW = (
    "donated then mapped: device read through the new IOVA: host DMA mapping of a donated page:"
    " device read returned the guest's secret"
)


def _result(run: Run, scenario: str, profile: str) -> dict[str, Any]:
    (result,) = [r for r in run.results["results"] if r["scenario"] == scenario and r["profile"] == profile]
    return result  # type: ignore[no-any-return]


def _output(result: dict[str, Any]) -> str:
    (step,) = result["steps"]
    return str(step["output"])


def _mainline_unenforced(result: dict[str, Any], via: str) -> None:
    """What mainline 7.3 does: the donation of a DMA-mapped page and the map
    of a donated page both go through, and the device reaches the page
    both ways, after a positive control that landed."""
    out = _output(result)
    assert f"ok 1 {via} DMA to a page not donated (positive control)" in out.splitlines()
    assert "# mapped_then_donated_run=ok" in out
    assert "# donated_then_mapped_map=ok" in out
    assert out.count("_read_secret_words=512/512") == 2
    assert out.count("_guest_bad_words=512") == 2


@pytest.mark.xdist_group(DEFAULT_SUITE)
def test_mainline_share_dma_is_the_declared_gap(default_suite: Run) -> None:
    for profile in ("smmuv3-nested", "virtio-iommu"):
        for via in ("type1", "iommufd"):
            result = _result(default_suite, f"pvm-share-dma-{via}", profile)
            assert result["verdict"] == "xfail", result["reason"]
            assert result["reason"].startswith("known gap of mainline-7.3: mainline 7.3 does not enforce")
            assert f"(step share-dma-{via}: {via} {READ_OLD} (and 3 more failed))" in result["reason"]
            _mainline_unenforced(result, via)


@pytest.mark.full
@pytest.mark.usefixtures("no_leaked_qemu")
def test_type1_share_dma_passes_with_the_test_enablement_series(tmp_path: Path) -> None:
    """The type1 checks pass: the kernel refuses the donation (KVM_RUN
    EPERM) and the map (VFIO_IOMMU_MAP_DMA EPERM). mainline-7.3 declares
    the gap, so the scenario is an XPASS (the run exits 1) whose step
    passed. iommufd is outside the series and stays the known gap."""
    profiles = ["smmuv3-nested", "virtio-iommu"]
    run = run_scenarios(tmp_path, "mainline-7.3", profiles, SCENARIOS, "--series", str(SERIES / ENABLE))
    assert run.rc == 1, (run.rc, run.stderr[-2000:])
    (patch,) = run.results["targets"][0]["kernel"]["series"]["patches"]
    assert "TEST-ENABLEMENT" in patch["subject"]
    for profile in profiles:
        type1 = _result(run, "pvm-share-dma-type1", profile)
        assert type1["verdict"] == "xpass", type1["reason"]
        assert type1["reason"].startswith("passed unexpectedly: mainline-7.3 declares a known gap here")
        (step,) = type1["steps"]
        assert step["verdict"] == "pass", step["reason"]
        out = _output(type1)
        for n in range(1, 6):
            assert f"\nok {n} type1 " in out
        assert "# mapped_then_donated_run=EPERM" in out
        assert "# donated_then_mapped_map=EPERM" in out
        iommufd = _result(run, "pvm-share-dma-iommufd", profile)
        assert iommufd["verdict"] == "xfail", iommufd["reason"]
        _mainline_unenforced(iommufd, "iommufd")


# (series, the reason's start: the first failed check and its count)
BREAKS = [
    (
        "test-enable-share-dma-type1-break-donate.mbox",
        f"step share-dma-type1: type1 {READ_OLD} (and 1 more failed)",
    ),
    (
        "test-enable-share-dma-type1-break-pin.mbox",
        f"step share-dma-type1: type1 {READ_NEW} (and 1 more failed)",
    ),
]


@pytest.mark.full
@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(("series", "reason"), BREAKS, ids=["break-donate", "break-pin"])
def test_broken_share_dma_check_fails_type1(tmp_path: Path, series: str, reason: str) -> None:
    """One check of the enabling series broken (one line): the other way is
    still refused, so only that way's two checks fail; mainline-7.3's gap
    (all four) does not cover it, and the scenario is a FAIL."""
    run = run_scenarios(
        tmp_path, "mainline-7.3", ["smmuv3-nested"], [SCENARIOS[0]], "--series", str(SERIES / series)
    )
    assert run.rc == 1, (run.rc, run.stderr[-2000:])
    subjects = [p["subject"] for p in run.results["targets"][0]["kernel"]["series"]["patches"]]
    assert "TEST-ENABLEMENT" in subjects[0] and "NEGATIVE TEST" in subjects[1]
    (result,) = run.results["results"]
    assert result["verdict"] == "fail", result["reason"]
    assert str(result["reason"]).startswith(f"{reason} (not the known gap of mainline-7.3"), result["reason"]
