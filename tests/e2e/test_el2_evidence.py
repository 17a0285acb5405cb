"""Evidence that points at the code (#16 §6): a hang inside the hypervisor
names the hyp function that spins, `__kvm_nvhe_<function>+0xoff/0xsize`,
from the EL2 vCPU's hyp VA, which System.map does not know.

mainline-7.3 has CONFIG_NVHE_EL2_DEBUG=y, which changes nothing here: QEMU
reports a hyp VA as the EL2 PC with or without it, and the naming reads
only System.map and QMP. (A config without it would cost a cold build.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.kernel.symbols import SymbolTable
from tests.e2e.conftest import SERIES, run_broken, run_scenarios

SPIN = "__kvm_nvhe_pkvm_negative_test_hyp_spin"


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_hang_in_the_hypervisor_names_the_spinning_hyp_function(tmp_path: Path) -> None:
    """hyp-spin-hang.patch: pvm-rules' memslot move sends one CPU into the
    hypervisor, which spins in pkvm_negative_test_hyp_spin() at EL2, while
    the other waits for it at EL1 with interrupts off. The hang FAIL names
    both; the EL2 one by its hyp VA translated through QEMU's walk of that
    vCPU's EL2 page tables, and the layout rule (the fallback when no vCPU
    is at EL1) gives the same image address on this real boot."""
    result = run_broken(tmp_path, "hyp-spin-hang.patch", "smmuv3-nested", "pvm-rules")
    reason = result["reason"]
    assert re.match(r"step [\w-]+: hang: ", reason), reason
    # Without the hyp VA mapping this read `cpuN EL2 pc=0x8000006f20a0` and
    # nothing more.
    assert re.search(rf"cpu\d EL2 pc=0x[0-9a-f]+ {SPIN}\+0x[0-9a-f]+/0x[0-9a-f]+\b", reason), reason
    assert re.search(r"cpu\d EL1 pc=0xffff[0-9a-f]+ pkvm_negative_test_wait_for_hyp\+", reason), reason

    kernel = json.loads((tmp_path / "results.json").read_text())["targets"][0]["kernel"]
    build = Path(kernel["image"]).parent
    assert "CONFIG_NVHE_EL2_DEBUG=y" in (build / "config").read_text().splitlines()
    table = SymbolTable.from_system_map(build / "System.map")
    el2 = [v for sample in result["evidence"]["vcpus"] for v in sample if v["el"] == 2]
    assert el2, result["evidence"]["vcpus"]
    for v in el2:
        pc, image = int(v["pc"], 16), int(v["image"], 16)
        assert pc >> 63 == 0, v  # a hyp VA, not a kernel VA
        assert v["symbol"].startswith(f"{SPIN}+"), v
        assert v["via"] == "gva2gpa", v
        assert table.hyp_image_address(pc) == image, v


@pytest.mark.cold
@pytest.mark.usefixtures("no_leaked_qemu")
def test_without_el2_debug_the_hang_in_the_hypervisor_is_named_too(tmp_path: Path) -> None:
    """The same hang on a kernel without CONFIG_NVHE_EL2_DEBUG (the target
    mainline-7.3-no-el2-debug: a configuration of its own, so a build of
    its own): the EL2 vCPU's function is named all the same."""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3-no-el2-debug",
        ["smmuv3-nested"],
        ["pvm-rules"],
        "--series",
        str(SERIES / "hyp-spin-hang.patch"),
    )
    assert run.rc == 1, (run.rc, run.stderr[-2000:])
    kernel = run.results["targets"][0]["kernel"]
    config = (Path(kernel["image"]).parent / "config").read_text()
    assert "# CONFIG_NVHE_EL2_DEBUG is not set" in config.splitlines()
    (result,) = run.results["results"]
    assert result["verdict"] == "fail"
    reason = result["reason"]
    assert re.match(r"step [\w-]+: hang: ", reason), reason
    assert re.search(rf"cpu\d EL2 pc=0x[0-9a-f]+ {SPIN}\+0x[0-9a-f]+/0x[0-9a-f]+\b", reason), reason
