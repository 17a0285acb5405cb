"""PFNMAP memslots (scenarios/pfnmap-memslots.yaml) on mainline-7.3, with
and without pKVM, and on a CPU without S2FWB/DIC: green with the TEST ENABLEMENT series that provides a
cacheable VM_PFNMAP region, red on a kernel whose
KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED answers wrongly (NEGATIVE TEST)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import SERIES, run_broken, run_scenarios

PROFILES = ["smmuv3-nested", "smmuv3-nested-nvhe", "smmuv3-nested-nofwb"]
# Step verdicts per profile: pKVM runs both VM types; nvhe has no pVMs
# (the profile lacks `pkvm`) and checks that it really booted nVHE.
STEPS = {
    "smmuv3-nested": {
        "kvm-mode": "skip",
        "normal-vm": "pass",
        "normal-vm-cacheable": "pass",
        "protected-vm": "pass",
        "protected-vm-cacheable": "pass",
    },
    # cortex-a72: no S2FWB/DIC, so the cacheable slot must be refused (EINVAL).
    "smmuv3-nested-nofwb": {
        "kvm-mode": "skip",
        "normal-vm": "pass",
        "normal-vm-cacheable": "pass",
        "protected-vm": "pass",
        "protected-vm-cacheable": "pass",
    },
    "smmuv3-nested-nvhe": {
        "kvm-mode": "pass",
        "normal-vm": "pass",
        "normal-vm-cacheable": "pass",
        "protected-vm": "skip",
        "protected-vm-cacheable": "skip",
    },
}


@pytest.mark.usefixtures("no_leaked_qemu")
def test_pfnmap_memslots_pass_with_and_without_pkvm(tmp_path: Path) -> None:
    series = SERIES / "test-enable-cacheable-pfnmap.patch"
    run = run_scenarios(tmp_path, "mainline-7.3", PROFILES, ["pfnmap-memslots"], "--series", str(series))
    assert run.rc == 0, (run.rc, run.stderr[-2000:])
    patches = run.results["targets"][0]["kernel"]["series"]["patches"]
    assert [("TEST ENABLEMENT" in p["subject"]) for p in patches] == [True]
    by_profile = {r["profile"]: r for r in run.results["results"]}
    assert set(by_profile) == set(PROFILES)
    for profile, want in STEPS.items():
        result = by_profile[profile]
        assert result["verdict"] == "pass", (profile, result["reason"])
        assert {s["name"]: s["verdict"] for s in result["steps"]} == want, profile
    # Which way the cacheable slot went is the CPU's: shared where S2FWB &&
    # DIC, refused with EINVAL where not.
    for profile, outcome in [
        ("smmuv3-nested", "shares writes"),
        ("smmuv3-nested-nvhe", "shares writes"),
        ("smmuv3-nested-nofwb", "refused with EINVAL"),
    ]:
        (step,) = [s for s in by_profile[profile]["steps"] if s["name"] == "normal-vm-cacheable"]
        assert f"ok 1 pfnmap cacheable memslot {outcome}" in step["output"].splitlines(), profile
    skipped = [s for s in by_profile["smmuv3-nested-nvhe"]["steps"] if s["name"].startswith("protected")]
    assert all(s["reason"] == "needs protected-vm" for s in skipped), skipped


# (NEGATIVE TEST series, profile, start of the reason). Under pKVM a normal
# VM's device slot is refused anyway (7.3: KVM_RUN EINVAL), so the refused
# device slot goes red without pKVM, where a normal VM must map it.
BROKEN = [
    (
        "pfnmap-cap-inverted.patch",
        "smmuv3-nested",
        "step normal-vm: PFNMAP memslot misbehaved in a normal VM: pfnmap cap agrees with S2FWB && DIC:"
        " KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED=0 but the kernel detected S2FWB=1 DIC=1",
    ),
    (
        "pfnmap-device-slot-refused.patch",
        "smmuv3-nested-nvhe",
        "step normal-vm: PFNMAP memslot misbehaved in a normal VM: pfnmap device memslot over vfio-pci BAR0:"
        " refused without pKVM: KVM_SET_USER_MEMORY_REGION(PFNMAP slot): EINVAL",
    ),
]


@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(("series", "profile", "reason"), BROKEN, ids=[b[0][:-6] for b in BROKEN])
def test_broken_pfnmap_turns_scenario_red(tmp_path: Path, series: str, profile: str, reason: str) -> None:
    result = run_broken(tmp_path, series, profile, "pfnmap-memslots")
    assert str(result["reason"]).startswith(reason), result["reason"]
