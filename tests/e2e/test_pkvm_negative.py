"""Each share/donate scenario goes red on a kernel broken, on purpose, in the
way it guards (tests/data/series/pkvm-*.patch, applied by the harness)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.report import Verdict
from tests.e2e.conftest import SERIES, run_broken, run_scenarios

# vm-lifecycle's leak check, whatever the leak's size: pages kept by KVM
# (stage-2 tables, PGD, hyp memcaches) after its 7 VMs, with the first VM
# read alive above the count before (the kernel counts them at all). Pages
# leaked by the VMs of the boot-time probe may be in the count before.
VM_LIFECYCLE_LEAK = re.compile(
    r"step vm-cycles: a normal VM's life cycle failed, or its teardown leaked:"
    r" lifecycle returns KVM's page-table pages: not all back after 7 VMs:"
    r" [1-9][0-9]* pages kept \([0-9.]+ per VM; [0-9]+ before, [1-9][0-9]* with the first VM alive,"
    r" [1-9][0-9]* after\)"
)

CASES: list[tuple[str, str, str | re.Pattern[str]]] = [
    # (series, scenario, start of the reason (run-specific values cut), or
    # a pattern for the whole reason)
    (
        "pkvm-host-keeps-donated-access.patch",
        "pvm-donate",
        "step donate-share-unshare: protected VM memory was reachable by the host:"
        " pvm-donate host read of donated page faults: host read of donated page succeeded",
    ),
    (
        "pkvm-teardown-no-scrub.patch",
        "pvm-teardown-reclaim",
        "step teardown: protected VM memory was not returned, or not scrubbed:"
        " pvm-teardown pages scrubbed after teardown: guest pattern visible after teardown",
    ),
    (
        "pkvm-rules-allow-readonly.patch",
        "pvm-rules",
        "step documented-refusals: a documented protected-VM restriction was not enforced:"
        " pvm-rules readonly memslot refused: not refused",
    ),
    (
        "pkvm-selftest-broken.patch",
        "pkvm-ownership-selftest",
        # The BUG is the selftest's own (its address moves with the build).
        re.compile(
            r"boot: hyp-bug: kvm \[1\]: nVHE hyp BUG at: ffff[0-9a-f]{12}!"
            r" \[location=ffff[0-9a-f]{12},"
            r" symbol=__kvm_nvhe_pkvm_ownership_selftest\+0x[0-9a-f]+/0x[0-9a-f]+,"
            r" function=pkvm_ownership_selftest\]"
        ),
    ),
    # Both leaks show in KVM's exact page-table count, not through MemFree.
    (
        "pkvm-teardown-leak.patch",
        "vm-lifecycle",
        VM_LIFECYCLE_LEAK,
    ),
    # One normal VM's teardown worth (a few pages), with no amplifier.
    (
        "kvm-stage2-teardown-leak.patch",
        "vm-lifecycle",
        VM_LIFECYCLE_LEAK,
    ),
]

# The scenario's name, and for a second series of the same scenario, what it breaks.
IDS = [c[1] for c in CASES[:-1]] + ["vm-lifecycle-normal-vm-leak"]


@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(("series", "scenario", "reason"), CASES, ids=IDS)
def test_broken_pkvm_turns_the_scenario_red(
    tmp_path: Path, series: str, scenario: str, reason: str | re.Pattern[str]
) -> None:
    result = run_broken(tmp_path, series, "smmuv3-nested", scenario)
    got = str(result["reason"])
    assert reason.fullmatch(got) if isinstance(reason, re.Pattern) else got.startswith(reason), got


PVM_REFUSED = (
    "protected-vm expected (pKVM protected mode is on and Linux 7.3.4 offers protected VMs)"
    " but KVM_CREATE_VM(type=PROTECTED) failed: EINVAL"
)


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_kernel_that_refuses_protected_vms_is_red_not_skipped(tmp_path: Path) -> None:
    """0.3 turned every scenario that needs protected VMs into a skip on such
    a kernel and exited 0. pKVM in protected mode on 7.3 claims them: the
    loss fails boot-health and each scenario that needs them, with the
    kernel's own answer; a scenario that does not need them still runs."""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["smmuv3-nested"],
        ["boot-health", "pvm-donate", "pfnmap-memslots"],
        "--series",
        str(SERIES / "pvm-refused.patch"),
    )
    assert run.rc == 1, run.stderr[-2000:]
    by_name = {r.scenario: r for r in run.run_result.results}
    assert by_name["boot-health"].verdict == Verdict.FAIL
    assert PVM_REFUSED in by_name["boot-health"].reason.split("; "), by_name["boot-health"].reason
    assert by_name["pvm-donate"].verdict == Verdict.FAIL
    assert PVM_REFUSED in by_name["pvm-donate"].reason.split("; "), by_name["pvm-donate"].reason
    assert by_name["pfnmap-memslots"].verdict != Verdict.SKIP, by_name["pfnmap-memslots"].reason


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_dead_positive_control_fails_pvm_dma_isolation(tmp_path: Path) -> None:
    """An identity domain that blocks every DMA makes the host's DMA into
    the donated page "blocked" without proving anything: the positive
    control (same domain, same device, a page not donated) fails the
    scenario, and mainline-7.3's known gap (host DMA reached protected
    memory) does not cover it."""
    result = run_broken(tmp_path, "identity-domain-blocks-dma.patch", "smmuv3-nested", "pvm-dma-isolation")
    reason = str(result["reason"])
    assert reason.startswith(
        "step host-dma-into-protected-page: host DMA to a page not donated (positive control):"
        " positive control failed: the edu's DMA to a host page that is not donated did not land"
    ), reason
    assert "(not the known gap of mainline-7.3" in reason
