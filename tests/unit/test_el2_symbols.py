"""EL2 PCs (hyp VAs) named from System.map: through QEMU's gva2gpa, or from
the hyp VA layout, on outputs captured from a real hang in the hypervisor
(tests/data/7.3-hyp-spin-hang/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.kernel.symbols import SymbolTable
from harness.session.liveness import (
    Evidence,
    VcpuState,
    describe_vcpus,
    parse_gpa,
    parse_registers,
    symbolise_el2,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "7.3-hyp-spin-hang"
REGISTERS = (DATA / "info-registers-a.txt").read_text()
ANSWERS = {(a["command"], a["cpu"]): a["output"] for a in json.loads((DATA / "gva2gpa.json").read_text())}

HYP_PC = 0x8000006F20A0  # CPU1, at EL2
SPIN = "__kvm_nvhe_pkvm_negative_test_hyp_spin+0x0/0x8"
WAIT = "pkvm_negative_test_wait_for_hyp+0xa4/0xc8"


@pytest.fixture
def table() -> SymbolTable:
    return SymbolTable.from_system_map(DATA / "System.map")


class Qemu:
    """Answers HMP commands as the captured QEMU did; records what was asked."""

    def __init__(self, answers: dict[tuple[str, int], str] = ANSWERS) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    def hmp(self, command: str, cpu: int) -> str | None:
        self.asked.append((command, cpu))
        return self.answers.get((command, cpu))


def test_captured_registers_have_one_vcpu_at_a_hyp_va(table: SymbolTable) -> None:
    vcpus = parse_registers(REGISTERS, table.lookup)
    assert [(v.index, v.el, hex(v.pc), v.symbol) for v in vcpus] == [
        (0, 1, "0xffff8000800373cc", WAIT),
        (1, 2, hex(HYP_PC), None),  # System.map does not know hyp VAs
    ]
    assert [v.at_hyp_va for v in vcpus] == [False, True]


def test_gva2gpa_output_is_parsed() -> None:
    assert parse_gpa("gpa: 0x406f20a0\r\n") == 0x406F20A0
    assert parse_gpa("Unmapped\r\n") is None
    assert parse_gpa(None) is None


def test_the_el2_pc_is_named_through_qemus_page_table_walk(table: SymbolTable) -> None:
    qemu = Qemu()
    vcpus = symbolise_el2(parse_registers(REGISTERS, table.lookup), table, qemu.hmp)
    assert [(v.symbol, v.via) for v in vcpus] == [(WAIT, None), (SPIN, "gva2gpa")]
    # _text's PA on the vCPU at EL1 (0x40200000), the PC's PA on the vCPU at
    # EL2 (0x406f20a0): each in its own translation regime.
    assert qemu.asked == [("gva2gpa 0xffff800080000000", 0), ("gva2gpa 0x8000006f20a0", 1)]
    assert vcpus[1].image == 0xFFFF8000804F20A0
    assert vcpus[1].describe() == f"cpu1 EL2 pc=0x8000006f20a0 {SPIN}"
    assert vcpus[1].to_json() == {
        "cpu": 1,
        "pc": "0x8000006f20a0",
        "el": 2,
        "symbol": SPIN,
        "image": "0xffff8000804f20a0",
        "via": "gva2gpa",
    }
    text = describe_vcpus({"vcpus": [[v.to_json() for v in vcpus]]})
    assert text == f"cpu0 EL1 pc=0xffff8000800373cc {WAIT}, cpu1 EL2 pc=0x8000006f20a0 {SPIN}"


def test_the_layout_gives_the_same_address_as_the_page_tables(table: SymbolTable) -> None:
    """hyp VA 0x8000006f20a0 = tag (bit 47) | PA 0x406f20a0 - memstart
    0x40000000; image address = PA + (_text - 0x40200000): both agree with
    0xffff8000804f20a0 modulo 2 MiB, and only one such address is hyp text."""
    idmap, text = (0xFFFF8000804EC000, 0xFFFF8000804ECE10), (0xFFFF8000804ECE10, 0xFFFF800080506000)
    assert table.hyp_text == (idmap, text)
    assert table.hyp_image_address(HYP_PC) == 0xFFFF8000804F20A0
    assert table.lookup(0xFFFF8000804F20A0) == SPIN
    # A PC in the idmap page runs at VA == PA: the same rule holds.
    assert table.lookup(table.hyp_image_address(0x406EC000) or 0) == "__kvm_nvhe___kvm_hyp_init+0x0/0x784"


def test_every_vcpu_in_the_hypervisor_is_named_from_the_layout(table: SymbolTable) -> None:
    """No vCPU at EL1 to translate _text: the layout names the function."""
    vcpus = [VcpuState(0, HYP_PC + 4, 2, None), VcpuState(1, HYP_PC, 2, None)]
    qemu = Qemu()
    named = symbolise_el2(vcpus, table, qemu.hmp)
    assert [(v.symbol, v.via) for v in named] == [
        ("__kvm_nvhe_pkvm_negative_test_hyp_spin+0x4/0x8", "layout"),
        (SPIN, "layout"),
    ]
    assert qemu.asked == []


def test_an_unanswered_gva2gpa_falls_back_to_the_layout(table: SymbolTable) -> None:
    qemu = Qemu({("gva2gpa 0xffff800080000000", 0): "gpa: 0x40200000\r\n"})  # the PC: no answer
    named = symbolise_el2(parse_registers(REGISTERS, table.lookup), table, qemu.hmp)
    assert (named[1].symbol, named[1].via) == (SPIN, "layout")
    assert symbolise_el2(parse_registers(REGISTERS, table.lookup), table, None)[1].via == "layout"


def test_a_hyp_va_outside_the_hypervisors_text_is_not_named(table: SymbolTable) -> None:
    # Residue 0x1ff000: 0xffff8000805ff000 is past __hyp_text_end.
    assert table.hyp_image_address(0x8000001FF000) is None
    named = symbolise_el2([VcpuState(0, 0x8000001FF000, 2, None)], table, None)
    assert (named[0].symbol, named[0].image, named[0].via) == (None, None, None)
    assert named[0].describe() == "cpu0 EL2 pc=0x8000001ff000"
    # A System.map without the hypervisor's text names nothing either.
    assert SymbolTable((0xFFFF800080000000,), ("_text",)).hyp_image_address(HYP_PC) is None


def test_an_el0_or_el1_low_address_is_never_taken_for_a_hyp_va(table: SymbolTable) -> None:
    vcpus = [VcpuState(0, 0x6F20A0, 0, None), VcpuState(1, 0x8000006F20A0, 1, None)]
    assert symbolise_el2(vcpus, table, Qemu().hmp) == vcpus


class Machine:
    """A QMP monitor that answers as the captured QEMU did."""

    pid = None

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def command(self, name: str, **args: Any) -> Any:
        self.calls.append(args)
        line = args["command-line"]
        if line == "info registers -a":
            return REGISTERS
        return ANSWERS.get((line, args["cpu-index"]), "")

    def alive(self) -> bool:
        return True


def test_hang_evidence_names_the_hyp_function(table: SymbolTable, tmp_path: Path) -> None:
    machine = Machine()
    evidence = Evidence(machine, tmp_path / "console.log", table.lookup).collect(None, samples=1)
    assert evidence["vcpus"][0][1]["symbol"] == SPIN
    assert f"cpu1 EL2 pc=0x8000006f20a0 {SPIN}" in describe_vcpus(evidence)
    assert {"command-line": "gva2gpa 0x8000006f20a0", "cpu-index": 1} in machine.calls
    # A plain callable (no SymbolTable behind it) leaves hyp VAs unnamed.
    plain = Evidence(machine, tmp_path / "console.log", lambda a: table.lookup(a)).vcpus()
    assert plain[1].symbol is None


class SilentOnGva2gpa(Machine):
    def command(self, name: str, **args: Any) -> Any:
        if args["command-line"].startswith("gva2gpa"):
            self.calls.append(args)
            raise TimeoutError("QMP did not answer within 10s")
        return super().command(name, **args)


def test_a_qmp_that_fails_gva2gpa_is_not_asked_again(table: SymbolTable, tmp_path: Path) -> None:
    machine = SilentOnGva2gpa()
    evidence = Evidence(machine, tmp_path / "console.log", table.lookup).collect(None, samples=3, gap_s=0)
    assert [run[1]["via"] for run in evidence["vcpus"]] == ["layout"] * 3
    assert [run[1]["symbol"] for run in evidence["vcpus"]] == [SPIN] * 3
    assert sum(c["command-line"].startswith("gva2gpa") for c in machine.calls) == 1
