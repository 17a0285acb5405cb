"""The signature table and watcher, on real console logs (tests/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.logwatch import LogWatcher, parse_log
from harness.logwatch.signatures import expand, fatal_stream_patterns


def events_of(data_dir: Path, name: str) -> list:  # type: ignore[type-arg]
    return parse_log((data_dir / name).read_text())


@pytest.mark.parametrize(
    ("log", "function"),
    [
        ("6.12-no-jump-label-hyp-panic.log", "handle_trap"),
        ("6.12-no-jump-label-hyp-panic-el2-debug.log", "pkvm_alloc_private_va_range"),
    ],
)
def test_hyp_panic_is_fatal_with_symbol_and_trace(data_dir: Path, log: str, function: str) -> None:
    events = events_of(data_dir, log)
    hyp = [e for e in events if e.signature == "hyp-panic"]
    assert len(hyp) == 1
    assert hyp[0].fatal
    assert hyp[0].fields["function"] == function
    assert hyp[0].fields["symbol"].startswith(f"__kvm_nvhe_{function}+0x")
    # The trace carries the whole report: hyp offset, registers, call trace.
    trace = "\n".join(hyp[0].trace)
    assert "Hyp Offset:" in trace and "Call trace:" in trace and "kvm_arm_init" in trace
    panic = [e for e in events if e.signature == "kernel-panic"]
    assert panic and panic[0].fields["reason"] == "HYP panic:"
    assert not any(e.signature == "pkvm-init" for e in events)


def test_clean_7_3_boot_has_pkvm_and_nested_smmu_and_no_errors(data_dir: Path) -> None:
    events = events_of(data_dir, "7.3-smmuv3-nested-pkvm-boot.log")
    assert [e.fields["mode"] for e in events if e.signature == "pkvm-init"] == ["hVHE"]
    (probe,) = [e for e in events if e.signature == "smmuv3-probe"]
    assert probe.fields["features"] == "0x01088705"
    assert probe.fields["stage1"] is True and probe.fields["stage2"] is True
    assert probe.fields["nesting"] is True
    assert "ias" not in probe.fields  # 7.3 prints no ias
    assert not [e for e in events if e.severity != "info"]


def test_6_12_smmu_probe_line_with_ias_and_stage1_only_features() -> None:
    (e,) = parse_log("[    0.5] arm-smmu-v3 9050000.smmuv3: ias 44-bit, oas 44-bit (features 0x00008305)\n")
    assert e.fields["ias"] == "44" and e.fields["stage1"] is True and e.fields["stage2"] is False


def test_smmu_event_decoded_from_dwords_and_7_3_line(data_dir: Path) -> None:
    events = [
        e
        for e in events_of(data_dir, "7.3-smmuv3-nested-vfio-edu-faults.log")
        if e.signature == "smmuv3-event"
    ]
    assert len(events) == 10
    first = events[0]
    assert first.fields["id"] == "0x10"
    assert first.fields["sid"] == "0x10"  # edu at 0000:00:02.0
    assert first.fields["address"] == "0x101000"
    assert first.fields["client"] == "0000:00:02.0"
    assert first.fields["name"] == "F_TRANSLATION"
    assert len(first.trace) == 7  # header, 4 dwords, 2 decoded lines
    # 4-byte DMA beats: consecutive addresses.
    assert [e.fields["address"] for e in events[:3]] == ["0x101000", "0x101004", "0x101008"]


def test_smmu_event_6_12_form_uses_dwords_only() -> None:
    text = (
        "arm-smmu-v3 9050000.smmuv3: event 0x10 received:\n"
        "arm-smmu-v3 9050000.smmuv3: \t0x0000001800000010\n"
        "arm-smmu-v3 9050000.smmuv3: \t0x0000020000000000\n"
        "arm-smmu-v3 9050000.smmuv3: \t0x0000000007000040\n"
        "arm-smmu-v3 9050000.smmuv3: \t0x0000000000000000\n"
        "some other line\n"
    )
    (e,) = parse_log(text)
    assert e.fields == {
        "device": "9050000.smmuv3",
        "id": "0x10",
        "sid": "0x18",
        "address": "0x7000040",
        "name": "F_TRANSLATION",
        "access": "write",  # dword1 bit 35 (RnW) clear
        "stage": "s1",  # dword1 bit 39 (S2) clear
        "bdf": "0000:00:03.0",  # the StreamID is the requester ID
    }


@pytest.mark.parametrize("form", ["7.3", "6.12"])
def test_smmu_permission_fault_direction(data_dir: Path, form: str) -> None:
    """Stage-2 permission faults captured on smmuv3-s2 (dma-permissions): a
    write to a read-only mapping, then a read of a write-only one. The 6.12
    form (no decoded lines) gets the direction from RnW in dword1."""
    text = (data_dir / "7.3-smmuv3-s2-permission-faults.log").read_text()
    if form == "6.12":
        text = "\n".join(ln for ln in text.splitlines() if "event: " not in ln and "priv data" not in ln)
    events = [e for e in parse_log(text) if e.signature == "smmuv3-event"]
    assert [(e.fields["id"], e.fields["access"], e.fields["address"]) for e in events] == [
        ("0x13", "write", "0x5000000"),
        ("0x13", "write", "0x5000004"),
        ("0x13", "read", "0x5200000"),
        ("0x13", "read", "0x5200004"),
    ]
    assert {e.fields["name"] for e in events} == {"F_PERMISSION"}
    # The SMMU's own record says where the fault arose (EVTQ_1_S2, or "s2"
    # in 7.3's decoded line): smmuv3-s2's domains are stage 2.
    assert {e.fields["stage"] for e in events} == {"s2"}


def test_smmu_fault_stage_of_a_stage_1_domain(data_dir: Path) -> None:
    """VFIO on smmuv3-nested gets stage-1 domains: their faults say s1, in
    the decoded line and in dword1 alike (iommufd-nesting tells a real
    NEST_PARENT stage 2 from a stage-1 domain by this)."""
    text = (data_dir / "7.3-smmuv3-nested-vfio-edu-faults.log").read_text()
    raw_only = "\n".join(ln for ln in text.splitlines() if "event: " not in ln and "priv data" not in ln)
    for log in (text, raw_only):
        events = [e for e in parse_log(log) if e.signature == "smmuv3-event"]
        assert events and {e.fields["stage"] for e in events} == {"s1"}


def test_virtio_iommu_faults(data_dir: Path) -> None:
    events = events_of(data_dir, "7.3-virtio-iommu-vfio-edu-faults.log")
    faults = [e for e in events if e.signature == "virtio-iommu-fault"]
    assert len(faults) == 10
    assert faults[0].fields == {
        "device": "virtio0",
        "endpoint": "16",
        "address": "0x101000",
        "flags": "",
        "access": "unknown",  # this kernel's report left the flags empty
        "bdf": "0000:00:02.0",  # endpoint 16 = requester ID 0x10 = the edu
    }
    (probe,) = [e for e in events if e.signature == "virtio-iommu-probe"]
    assert probe.fields["ias"] == "48"


def test_protected_vm_taint_is_info_not_failure(data_dir: Path) -> None:
    events = events_of(data_dir, "7.3-protected-vm-taint.log")
    taint = [e for e in events if e.signature == "pvm-taint"]
    assert len(taint) == 1 and taint[0].severity == "info"
    assert not [e for e in events if e.signature in expand(["any-error"])]


def test_chunked_feed_equals_whole_feed(data_dir: Path) -> None:
    text = (data_dir / "6.12-no-jump-label-hyp-panic.log").read_text().replace("\n", "\r\n")
    watcher = LogWatcher()
    for i in range(0, len(text), 7):  # odd chunk size splits lines and \r\n
        watcher.feed(text[i : i + 7])
    watcher.finish()
    whole = parse_log(text)
    assert [(e.signature, e.line, e.fields) for e in watcher.events] == [
        (e.signature, e.line, e.fields) for e in whole
    ]


def test_timestamps_and_warning_trace_end() -> None:
    text = (
        "[    1.000000] WARNING: CPU: 0 PID: 1 at drivers/iommu/io-pgtable-arm.c:42 foo+0x10/0x20\n"
        "[    1.000001] Modules linked in:\n"
        "[    1.000002] ---[ end trace 0000000000000000 ]---\n"
        "[    1.000003] after\n"
    )
    (e,) = parse_log(text)
    assert e.signature == "warning" and e.timestamp == 1.0
    assert e.fields["location"] == "drivers/iommu/io-pgtable-arm.c:42"
    assert len(e.trace) == 3


def test_hyp_bug_with_address_only_7_3_form() -> None:
    text = (
        "[    2.0] kvm [1]: nVHE hyp BUG at: ffff800080551b40!\n"
        "[    2.0] Code: d65f03c0 (d4210000)\n"
        "[    2.0] kvm [1]: Hyp Offset: 0xfff0000000000000\n"
        "[    2.0] Kernel panic - not syncing: HYP panic:\n"
    )
    events = parse_log(text)
    assert [e.signature for e in events] == ["hyp-bug", "kernel-panic"]
    assert events[0].fields["location"] == "ffff800080551b40" and events[0].fatal


def test_fatal_stream_patterns_find_panics_mid_stream(data_dir: Path) -> None:
    text = (data_dir / "6.12-no-jump-label-hyp-panic.log").read_text()
    assert any(p.search(text) for p in fatal_stream_patterns())
    clean = (data_dir / "7.3-smmuv3-nested-pkvm-boot.log").read_text()
    assert not any(p.search(clean) for p in fatal_stream_patterns())


def test_kernel_record_interleaved_mid_line_on_a_shared_console() -> None:
    # Captured on a 7.3 guest: a KTAP line from edu-dma interrupted by an
    # SMMU event record, whose own newline comes later as a blank line.
    text = (
        "[    3.353411] arm-smmu-v3 9050000.smmuv3: event 0x10 received:\n"
        "[    3.353419] arm-smmu-v3 9050000.smmuv3: \t0x0000001000000010\n"
        "ok 2 fault-unmapped write: memory unchanged[    3.353426] arm-smmu-v3 9050000.smmuv3:"
        " \t0x0000020000000000\n"
        "[    3.353433] arm-smmu-v3 9050000.smmuv3: \t0x0000000007000004\n"
        "\n"
        "[    3.353454] arm-smmu-v3 9050000.smmuv3: \t0x0000000000000000\n"
        "[    3.353461] arm-smmu-v3 9050000.smmuv3: event: F_TRANSLATION client: 0000:00:02.0"
        " sid: 0x10 ssid: 0x0 iova: 0x7000004 ipa: 0x0\n"
        "ok 3 next[    3.4] not a record: timestamps have 6 decimals\n"
    )
    (e,) = parse_log(text)
    assert e.fields["address"] == "0x7000004" and e.fields["sid"] == "0x10"
    assert e.fields["name"] == "F_TRANSLATION" and len(e.trace) == 6
    assert e.line == 1


def test_hyp_panic_is_symbolised_from_system_map_and_hyp_offset(data_dir: Path, tmp_path: Path) -> None:
    """The real 6.12 hyp panic: the log names the function only because that
    build had kallsyms. A System.map that agrees with it (handle_trap at
    0xffff8000804bff28, 0x124 long) must name the same function for the hyp
    `PC:` (a hyp VA, translated with the printed Hyp Offset)."""
    from harness.kernel.symbols import SymbolTable
    from harness.logwatch.watcher import LogWatcher

    (tmp_path / "System.map").write_text(
        "ffff8000804bff28 T __kvm_nvhe_handle_trap\nffff8000804c004c T __kvm_nvhe_next\n"
    )
    table = SymbolTable.from_system_map(tmp_path / "System.map")
    watcher = LogWatcher(symbolize=table.lookup)
    watcher.feed((data_dir / "6.12-no-jump-label-hyp-panic.log").read_text())
    watcher.finish()
    hyp = next(e for e in watcher.events if e.signature == "hyp-panic")
    assert hyp.fields["function"] == "handle_trap"
    pc_line = next(line for line in hyp.symbolised if line.startswith("PS:"))
    assert "PC:00080000006bff7c (__kvm_nvhe_handle_trap+0x54/0x124)" in pc_line
    first = hyp.symbolised[0]
    assert "[<ffff8000804bff7c (__kvm_nvhe_handle_trap+0x54/0x124)>]" in first


def test_bare_hyp_bug_address_gets_its_function(tmp_path: Path) -> None:
    from harness.kernel.symbols import SymbolTable
    from harness.logwatch.watcher import LogWatcher

    (tmp_path / "System.map").write_text(
        "ffff8000804f5b00 T __kvm_nvhe___pkvm_host_share_hyp\nffff8000804f5c00 T __kvm_nvhe_x\n"
    )
    watcher = LogWatcher(symbolize=SymbolTable.from_system_map(tmp_path / "System.map").lookup)
    watcher.feed("[    1.0] kvm [1]: nVHE hyp BUG at: ffff8000804f5b40!\n[    1.1] done\n")
    watcher.finish()
    (bug,) = [e for e in watcher.events if e.signature == "hyp-bug"]
    assert bug.fields["symbol"] == "__kvm_nvhe___pkvm_host_share_hyp+0x40/0x100"
    assert bug.fields["function"] == "__pkvm_host_share_hyp"
    assert "(__kvm_nvhe___pkvm_host_share_hyp+0x40/0x100)" in bug.to_json()["symbolised"][0]


# -- a kernel that reports itself stuck: FAIL at once, naming the report (#22)


@pytest.mark.parametrize(
    ("log", "first", "fields"),
    [
        ("7.3-rcu-stall-nmi-backtrace.log", "rcu-stall", {"flavor": "rcu_preempt"}),
        ("7.3-soft-lockup.log", "soft-lockup", {"cpu": "0", "seconds": "22"}),
    ],
)
def test_stall_reports_are_fatal_and_named(
    data_dir: Path, log: str, first: str, fields: dict[str, str]
) -> None:
    events = events_of(data_dir, log)
    fatal = next(e for e in events if e.fatal)
    assert fatal.signature == first and fatal.severity == "error"
    assert fatal.fields == fields
    assert fatal.summary().startswith(f"{first}: ")
    assert {e.signature for e in events} <= {first, "nmi-backtrace", "pkvm-init"}


def test_an_nmi_backtrace_names_the_cpu_and_keeps_its_stack(data_dir: Path) -> None:
    events = events_of(data_dir, "7.3-rcu-stall-nmi-backtrace.log")
    (nmi,) = [e for e in events if e.signature == "nmi-backtrace"]
    assert nmi.fatal and nmi.fields == {"cpu": "1"}
    assert any("spin_irqs_off+0x14/0x20 (P)" in line for line in nmi.trace)
    assert nmi.trace[-1].startswith("rcu: rcu_preempt kthread")  # the next report ends it (inclusive)


@pytest.mark.parametrize(
    "line",
    [
        "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
        "rcu: INFO: rcu_preempt self-detected stall on CPU",
        "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [spin:188]",
        "watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 1",
        "NMI backtrace for cpu 1",
    ],
)
def test_a_waiting_session_stops_on_stall_reports(line: str) -> None:
    """The serial session's abort patterns end a step's wait at the report,
    with a printk timestamp or amid other output on the console."""
    patterns = fatal_stream_patterns()
    for text in (line, f"[   42.123456] {line}", f"$ sleep 60[   42.123456] {line}"):
        assert any(p.search(text) for p in patterns), text


def test_the_protected_vm_taint_stops_nothing(data_dir: Path) -> None:
    text = (data_dir / "7.3-protected-vm-taint.log").read_text()
    assert not any(p.search(text) for p in fatal_stream_patterns())
    assert not any(e.fatal for e in parse_log(text))
