"""Stable, right verdicts under faults (#11 §1-2) and results that survive
them (#8 §1), on real kernels broken on purpose by tests/data/series."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.report import Verdict, load_results
from tests.e2e.conftest import HARNESS, SERIES, Run, interrupt_after_first_cell, qemu_pids, run_scenarios

_ADDRESS = re.compile(r"0x[0-9a-f]+")


def masked(reason: str) -> str:
    return _ADDRESS.sub("0x…", reason)


@pytest.mark.usefixtures("no_leaked_qemu")
def test_broken_nic_dma_is_the_kernels_fail_guest_network_unusable(tmp_path: Path) -> None:
    """The NIC's receive buffers are mapped read-only: every packet it
    receives is an IOMMU fault. Serial answers, SSH cannot work. That is the
    kernel's FAIL ("guest network unusable", naming the NIC and its faults),
    never a pass or an ERROR. That the reason holds nothing that changes
    from run to run (counts, timings) is the unit test
    test_network_diagnosis_reason_is_the_same_whatever_the_timing."""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["smmuv3-nested", "virtio-iommu"],
        ["boot-health"],
        "--series",
        str(SERIES / "nic-dma-readonly.patch"),
    )
    assert run.rc == 1, run.stderr[-2000:]
    results = run.run_result.results
    assert [r.verdict for r in results] == [Verdict.FAIL, Verdict.FAIL]
    reasons = {r.profile: masked(r.reason) for r in results}
    for profile in ("smmuv3-nested", "virtio-iommu"):
        assert reasons[profile].startswith(
            "step ssh-usable: guest network unusable (the guest answers on serial and dropbear runs):"
            " eth0 up on 0000:00:01.0;"
        ), reasons[profile]
        assert "IOMMU faults from the NIC, first:" in reasons[profile]
        assert "from 0000:00:01.0 (virtio-pci)" in reasons[profile]
    assert "SMMUv3 event 0x… F_PERMISSION (write)" in reasons["smmuv3-nested"]
    assert "virtio-iommu page fault" in reasons["virtio-iommu"]


def pvm_rules_then_dma(tmp_path: Path, series: str) -> Run:
    """pvm-rules (whose memslot move the pVM negative series break), then a
    scenario that must pass on the fresh boot that follows."""
    return run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["smmuv3-nested"],
        ["pvm-rules", "dma-roundtrip"],
        "--series",
        str(SERIES / series),
    )


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_guest_that_hangs_silently_is_a_fail_with_evidence_and_the_next_scenario_gets_a_fresh_boot(
    tmp_path: Path,
) -> None:
    """Moving a memslot of a protected VM that ran stops every CPU with
    interrupts off: nothing is printed, serial and SSH stop answering. The
    harness must call it a hang (FAIL) within seconds, with the vCPUs'
    symbolised PCs, and run the next scenario on a new boot; results.json
    keeps everything."""
    run = pvm_rules_then_dma(tmp_path, "pvm-hang.patch")
    assert run.rc == 1, run.stderr[-2000:]
    result = run.run_result
    by_name = {r.scenario: r for r in result.results}
    hang = by_name["pvm-rules"]
    assert hang.verdict == Verdict.FAIL
    assert re.match(r"step [\w-]+: hang: ", hang.reason), hang.reason
    symbols = {v.get("symbol") or "" for sample in hang.evidence["vcpus"] for v in sample}
    assert any("pkvm_negative_test_hang" in s or "multi_cpu_stop" in s for s in symbols), symbols
    assert hang.evidence["console_tail"]
    assert hang.evidence["status"] == "running"
    # Reported long before the step's own 300 s timeout.
    assert hang.duration_s < 60, hang.duration_s
    assert hang.attempts == 1  # a FAIL is never retried
    assert by_name["dma-roundtrip"].verdict == Verdict.PASS
    assert by_name["dma-roundtrip"].boot != hang.boot
    assert len(result.boots) == 2


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_qemu_that_will_not_start_is_an_error_result_not_a_missing_file(tmp_path: Path) -> None:
    profile = tmp_path / "bad-qemu.yaml"
    profile.write_text(
        "name: bad-qemu\nmachine: virt\niommu: smmuv3\nsmmu_stage: nested\n"
        "features: [pkvm, iommu, smmuv3]\nextra_args: ['-device', 'no-such-device']\n"
    )
    run = run_scenarios(tmp_path / "out", "mainline-7.3", [str(profile)], ["boot-health", "dma-roundtrip"])
    assert run.rc == 2
    results = run.run_result.results
    assert [r.verdict for r in results] == [Verdict.ERROR, Verdict.ERROR]
    # QEMU's own words name the bad option.
    assert all(r.reason.startswith("machine: ") for r in results), results[0].reason
    assert "'no-such-device' is not a valid device model name" in results[0].reason
    # Retried once (an infrastructure error), and the result says so.
    assert all(r.attempts == 2 for r in results)


@pytest.mark.usefixtures("no_leaked_qemu")
def test_sigint_in_the_middle_keeps_finished_cells_and_marks_the_rest_not_run(tmp_path: Path) -> None:
    args = ["run", "--target", "mainline-7.3", "--profile", "smmuv3-nested"]
    rc = interrupt_after_first_cell([*args, "boot-health", "vm-lifecycle", "dma-roundtrip"], tmp_path)
    assert rc == 130
    result = load_results(tmp_path)  # valid against the schema
    assert not result.complete and result.interrupted == "interrupted by SIGINT"
    first, *rest = result.results
    assert first.scenario == "boot-health" and first.verdict == Verdict.PASS
    assert rest and all(r.verdict == Verdict.NOT_RUN for r in rest)
    assert rest[-1].reason == "interrupted by SIGINT"
    assert not qemu_pids(str(tmp_path))


def test_the_results_schema_ships_with_the_package() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from harness.report.results import results_schema as s; print(s()['title'])"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert out.stdout.strip() == "pkvm-harness results.json"


def _run_and_kill_qemu_once(output: Path, *extra: str) -> int:
    """`run vm-lifecycle`, SIGKILL its QEMU once the scenario is under way."""
    argv = [*HARNESS, "run", "--target", "mainline-7.3", "--profile", "smmuv3-nested"]
    argv += ["--output", str(output), *extra, "vm-lifecycle"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            if line.startswith("[scenario] vm-lifecycle on smmuv3-nested ..."):
                time.sleep(3)
                (victim,) = qemu_pids(str(output))
                os.kill(victim, signal.SIGKILL)
                break
        proc.stderr.read()
        return proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.usefixtures("no_leaked_qemu")
def test_qemu_killed_mid_scenario_is_an_error_and_is_retried_on_a_fresh_boot(tmp_path: Path) -> None:
    rc = _run_and_kill_qemu_once(tmp_path / "no-retry", "--retries", "0")
    assert rc == 2
    (result,) = load_results(tmp_path / "no-retry").results
    assert result.verdict == Verdict.ERROR and result.reason.startswith("QEMU exited"), result.reason
    # With a retry, the infrastructure error is repeated on a fresh boot.
    rc = _run_and_kill_qemu_once(tmp_path / "retry")
    assert rc == 0
    (result,) = load_results(tmp_path / "retry").results
    assert result.verdict == Verdict.PASS and result.attempts == 2
    assert str(result.evidence["earlier_attempts"][0]).startswith("QEMU exited")


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_boot_that_stops_making_progress_fails_within_seconds_with_evidence(tmp_path: Path) -> None:
    """Every CPU spins silently from a late initcall: the console stops
    before the readiness marker. That is the kernel's FAIL, found from the
    silence plus the vCPUs' state, long before the 120 s boot timeout."""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["smmuv3-nested"],
        ["boot-health"],
        "--series",
        str(SERIES / "boot-stall.patch"),
    )
    assert run.rc == 1, run.stderr[-2000:]
    (result,) = run.run_result.results
    assert result.verdict == Verdict.FAIL
    assert result.reason.startswith("boot: stalled: no console output for 20s after"), result.reason
    symbols = {v.get("symbol") or "" for sample in result.evidence["vcpus"] for v in sample}
    assert any("pkvm_negative_test_boot_stall" in s or "multi_cpu_stop" in s for s in symbols), symbols
    (boot,) = run.run_result.boots
    assert boot.boot_s < 45, boot.boot_s  # not the 120 s boot timeout


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_panic_in_the_middle_of_a_step_is_a_fail_with_its_trace_and_a_fresh_machine(tmp_path: Path) -> None:
    run = pvm_rules_then_dma(tmp_path, "pvm-panic.patch")
    assert run.rc == 1, run.stderr[-2000:]
    by_name = {r.scenario: r for r in run.run_result.results}
    panic = by_name["pvm-rules"]
    assert panic.verdict == Verdict.FAIL
    assert (
        "kernel-panic: Kernel panic - not syncing: NEGATIVE TEST: memslot change of a pVM that ran"
        in panic.reason
    )
    event = next(e for e in panic.events if e["signature"] == "kernel-panic")
    lines = "\n".join(event.get("symbolised") or event["trace"])
    assert "kvm_arch_prepare_memory_region" in lines, lines[-1500:]
    assert by_name["dma-roundtrip"].verdict == Verdict.PASS
    assert by_name["dma-roundtrip"].boot != panic.boot
