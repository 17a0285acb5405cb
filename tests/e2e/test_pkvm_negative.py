"""Each share/donate scenario goes red on a kernel broken, on purpose, in the
way it guards (tests/data/series/pkvm-*.patch, applied by the harness)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import run_broken

CASES = [
    # (series, scenario, start of the reason; run-specific values are cut)
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
    ("pkvm-selftest-broken.patch", "pkvm-ownership-selftest", "boot: hyp-bug: kvm [1]: nVHE hyp BUG at:"),
    (
        "pkvm-teardown-leak.patch",
        "vm-lifecycle",
        "step memory-and-vms-returned: VM teardown did not return memory (bound 8 MiB)",
    ),
]


@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize(("series", "scenario", "reason"), CASES, ids=[c[1] for c in CASES])
def test_broken_pkvm_turns_the_scenario_red(tmp_path: Path, series: str, scenario: str, reason: str) -> None:
    result = run_broken(tmp_path, series, "smmuv3-nested", scenario)
    assert str(result["reason"]).startswith(reason), result["reason"]
