"""Real boots: the default target on the IOMMU profiles, the known-bad 6.12
config, the stable target, and the build cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import DEFAULT_SUITE, SERIES, Run, harness, run_scenarios


@pytest.mark.xdist_group(DEFAULT_SUITE)
def test_mainline_boot_health_and_dma_on_smmuv3_and_virtio_iommu(default_suite: Run) -> None:
    run = default_suite
    verdicts = run.verdicts()
    assert run.rc == 0, (run.stderr[-2000:], verdicts)
    for profile in ("smmuv3-nested", "virtio-iommu"):
        for scenario in ("boot-health", "dma-roundtrip", "dma-fault-unmapped"):
            assert verdicts[(scenario, profile)] == "pass"
    results = run.results
    for key in ("schema_version", "harness_version", "qemu_version", "targets", "results", "boots"):
        assert key in results
    assert results["qemu_version"].startswith("QEMU emulator version 10.")
    assert results["complete"] is True
    assert results["targets"][0]["kernel"]["kernel_version"].startswith("7.3")
    for r in results["results"]:
        assert {"scenario", "profile", "target", "verdict", "reason", "duration_s", "events"} <= set(r)
    fault = next(
        r
        for r in results["results"]
        if r["scenario"] == "dma-fault-unmapped" and r["profile"] == "smmuv3-nested"
    )
    assert any(e["signature"] == "smmuv3-event" and e["fields"]["sid"] == "0x10" for e in fault["events"])
    assert (run.output / "junit.xml").read_text().count("<testcase") == len(results["results"])
    for boot in results["boots"]:
        # The console log is complete: QEMU writes it from the first byte.
        first = Path(boot["console_log"]).read_text().splitlines()[0]
        assert first.endswith("] Booting Linux on physical CPU 0x0000000000 [0x000f0510]")


def assert_hyp_panic_at_boot(run: Run, function: str) -> None:
    """boot-health is a FAIL, ended by a hyp panic (not by the 120 s boot
    timeout), whose PC is symbolised with the build's System.map."""
    assert run.rc == 1, run.stderr[-2000:]
    result = next(r for r in run.results["results"] if r["scenario"] == "boot-health")
    assert result["verdict"] == "fail"
    # Any CPU may be the one that panics.
    assert re.match(r"boot: hyp-panic: kvm \[\d\]: nVHE hyp panic at:", result["reason"]), result["reason"]
    assert f"function={function}" in result["reason"]
    hyp = next(e for e in result["events"] if e["signature"] == "hyp-panic")
    assert any("Kernel panic - not syncing: HYP panic:" in line for line in hyp["trace"])
    assert all(boot["boot_s"] < 60 for boot in run.results["boots"])


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_hyp_panic_at_boot_is_a_fail_with_the_symbol_and_no_known_gap_covers_it(tmp_path: Path) -> None:
    # The default suite's hyp-panic-at-boot case: an incremental series
    # build on mainline-7.3 (the 6.12 one below is a cold configuration).
    # mainline-7.3 declares pvm-dma-isolation's known gap: a kernel that
    # dies at boot must not turn it into that gap's xfail (0.3 did).
    series = ("--series", str(SERIES / "hyp-panic-at-boot.patch"))
    run = run_scenarios(
        tmp_path, "mainline-7.3", ["smmuv3-nested"], ["boot-health", "pvm-dma-isolation"], *series
    )
    assert_hyp_panic_at_boot(run, "pkvm_negative_test_boot_panic")
    isolation = next(r for r in run.results["results"] if r["scenario"] == "pvm-dma-isolation")
    assert isolation["verdict"] == "fail", isolation
    assert isolation["reason"].startswith("boot: hyp-panic: kvm ["), isolation["reason"]
    assert isolation["reason"].endswith(
        "(not the known gap of mainline-7.3, which is step host-dma-into-protected-page,"
        " reason /host DMA reached protected memory/)"
    )


@pytest.mark.cold
@pytest.mark.usefixtures("no_leaked_qemu")
def test_6_12_without_jump_label_hyp_panics_and_is_a_fail_with_the_symbol(tmp_path: Path) -> None:
    run = run_scenarios(tmp_path, "stable-6.12-no-jump-label", ["smmuv3-nested"], ["boot-health"])
    # NVHE_EL2_DEBUG (debug fragment) moves the panic into this function.
    assert_hyp_panic_at_boot(run, "pkvm_alloc_private_va_range")


@pytest.mark.cold
@pytest.mark.usefixtures("no_leaked_qemu")
def test_stable_6_12_boots_pkvm_cleanly(tmp_path: Path) -> None:
    run = run_scenarios(tmp_path, "stable-6.12", ["smmuv3-nested"], ["boot-health"])
    assert run.rc == 0, (run.stderr[-2000:], run.verdicts())


def test_warm_build_runs_no_make(tmp_path: Path) -> None:
    harness("build", "--target", "mainline-7.3")  # cold or warm, whatever the cache holds
    run = harness("build", "--target", "mainline-7.3")
    assert run.rc == 0
    info = json.loads(run.stdout)
    assert info["kernel_cached"] is True and info["image_cached"] is True
    assert "make -j" not in run.stderr and "packing initramfs" not in run.stderr


def test_dropped_fragment_option_is_a_one_line_error(tmp_path: Path) -> None:
    # The pKVM SMMUv3 driver is not in mainline: asking for it must not be
    # silently ignored.
    (tmp_path / "pkvm-smmu.config").write_text("CONFIG_ARM_SMMU_V3_PKVM=y\n")
    target = tmp_path / "t.yaml"
    target.write_text(
        "name: dropped\nsource: {debian: linux-source-7.3}\n"
        "fragments: [base, pkvm, smmuv3, pkvm-smmu.config]\n"
    )
    run = harness("build", "--target", str(target))
    assert run.rc == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last == (
        "pkvm-harness: error: config option dropped:"
        " pkvm-smmu.config:1: CONFIG_ARM_SMMU_V3_PKVM=y but .config has"
        " CONFIG_ARM_SMMU_V3_PKVM=n: this kernel source has no symbol ARM_SMMU_V3_PKVM"
        " (no Kconfig entry: does it come with a patch series?)"
    )


# What the default profiles never claim, and so skip (measured on mainline-7.3).
DEFAULT_SUITE_SKIPS = {
    (profile, scenario): f"profile {profile} / kernel lacks: {lacks}"
    for profile, scenario, lacks in [
        ("smmuv3-nested", "dma-isolation", "edu-multi"),
        ("smmuv3-nested", "kselftest-iommufd", "iommufd-test, kselftest:iommu"),
        ("smmuv3-nested", "virtio-iommu-granule", "granule-over-page"),
        ("smmuv3-nested", "virtio-iommu-identity", "edu-multi, virtio-iommu"),
        ("smmuv3-nested", "virtio-iommu-probe", "virtio-iommu"),
        ("virtio-iommu", "iommufd-nesting", "smmuv3"),
        ("virtio-iommu", "kselftest-iommufd", "iommufd-test, kselftest:iommu"),
        ("virtio-iommu", "virtio-iommu-granule", "granule-over-page"),
    ]
}


@pytest.mark.xdist_group(DEFAULT_SUITE)
def test_make_run_default_suite_is_green_in_one_boot(default_suite: Run) -> None:
    """`make run`'s promise, on both its profiles: every scenario in one
    boot per profile, in the order `run` uses, passes or is the declared
    known gap. Scenarios on a shared boot must not answer for each other's
    events (pkvm-ownership-selftest reads the boot log after the DMA
    scenarios' expected faults)."""
    run = default_suite
    verdicts = run.verdicts()
    scenarios = len(list((Path(__file__).parents[2] / "scenarios").glob("*.yaml")))
    assert len(verdicts) == 2 * scenarios
    assert set(verdicts.values()) <= {"pass", "xfail", "skip"}, {
        (r["scenario"], r["profile"], r["reason"])
        for r in run.results["results"]
        if r["verdict"] not in ("pass", "xfail", "skip")
    }
    for profile in ("smmuv3-nested", "virtio-iommu"):
        assert verdicts[("pvm-dma-isolation", profile)] == "xfail"
    # Every skip is pinned with its reason: a new skip (a capability the
    # kernel lost, a scenario that stopped applying) fails this test.
    skips = {
        (r["profile"], r["scenario"]): r["reason"] for r in run.results["results"] if r["verdict"] == "skip"
    }
    assert skips == DEFAULT_SUITE_SKIPS
    assert run.rc == 0
    assert sorted(b["profile"] for b in run.results["boots"]) == ["smmuv3-nested", "virtio-iommu"]
