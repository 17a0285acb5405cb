"""Hang evidence: QEMU's register dump, the starvation guard, symbols."""

from __future__ import annotations

from pathlib import Path

from harness.kernel.symbols import SymbolTable
from harness.session.liveness import CpuSample, CpuWindow, describe_vcpus, parse_registers

# Real `info registers -a` output of QEMU 10.0.2 (trimmed after PSTATE).
REGISTERS = """
CPU#0
 PC=ffff800080a1c9a4 X00=0000000000000000 X01=0000000000000000
X29=ffff80008000bd70 X30=ffff800080a1c99c  SP=ffff80008000bd70
PSTATE=600003c5 -ZC- EL1h  SVCR=00000000 --  BTYPE=0     FPCR=00000000 FPSR=00000000

CPU#1
 PC=ffff80008004a010 X00=0000000000000000 X01=0000000000000000
PSTATE=400003c9 -Z-- EL2h  SVCR=00000000 --  BTYPE=0     FPCR=00000000 FPSR=00000000
"""

SYSTEM_MAP = """\
ffff800080000000 T _text
ffff80008004a000 T __kvm_nvhe_handle_trap
ffff80008004a100 T __kvm_nvhe_next
ffff800080a1c900 t multi_cpu_stop
ffff800080a1ca00 T stop_machine_cpuslocked
ffff800080a1cb00 D some_data
ffff800080a1cc00 T _etext
"""


def test_registers_are_parsed_per_vcpu_with_el_and_symbol(tmp_path: Path) -> None:
    (tmp_path / "System.map").write_text(SYSTEM_MAP)
    table = SymbolTable.from_system_map(tmp_path / "System.map")
    vcpus = parse_registers(REGISTERS, table.lookup)
    assert [(v.index, v.el, v.symbol) for v in vcpus] == [
        (0, 1, "multi_cpu_stop+0xa4/0x100"),
        (1, 2, "__kvm_nvhe_handle_trap+0x10/0x100"),
    ]
    assert vcpus[0].describe() == "cpu0 EL1 pc=0xffff800080a1c9a4 multi_cpu_stop+0xa4/0x100"
    text = describe_vcpus({"vcpus": [[v.to_json() for v in vcpus]]})
    assert text.startswith("cpu0 EL1 pc=0xffff800080a1c9a4 multi_cpu_stop+0xa4/0x100, cpu1 EL2")


def test_symbols_outside_the_text_are_not_named(tmp_path: Path) -> None:
    (tmp_path / "System.map").write_text(SYSTEM_MAP)
    table = SymbolTable.from_system_map(tmp_path / "System.map")
    assert table.lookup(0x1000) is None
    assert table.lookup(0xFFFF800080A1CC10) is None  # past the last symbol
    assert table.function(0xFFFF800080A1CA08) == "stop_machine_cpuslocked"
    assert SymbolTable.from_system_map(tmp_path / "missing").lookup(0xFFFF800080A1CA08) is None


def sample(at: float, idle: int, total: int, qemu: float) -> CpuSample:
    return CpuSample(at, idle, total, qemu)


def test_a_starved_host_is_not_a_hung_guest() -> None:
    # QEMU got 10% of a CPU and the host had no idle time: inconclusive.
    starved = CpuWindow.between(sample(0, 0, 0, 0.0), sample(10, 50, 2000, 1.0))
    assert starved.starved
    # The vCPUs spun (QEMU burnt 1.9 CPUs) yet nothing answered: hung.
    spinning = CpuWindow.between(sample(0, 0, 0, 0.0), sample(10, 10, 2000, 19.0))
    assert not spinning.starved
    # QEMU idle, host idle: the guest sleeps and does not wake to answer.
    idle = CpuWindow.between(sample(0, 0, 0, 0.0), sample(10, 1800, 2000, 0.1))
    assert not idle.starved
    assert "host idle 90%" in idle.describe()


def test_cpu_sample_reads_this_process() -> None:
    import os

    s = CpuSample.take(os.getpid())
    assert s.host_total > 0 and s.qemu_cpu_s > 0
