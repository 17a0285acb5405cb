"""Every wait has a deadline (#22), shown on real boots: a guest whose NIC
dies mid-run, whose SSH daemon accepts TCP but never answers, whose CPUs
spin with interrupts off in the middle of a serial step, or whose SSH
step's process sleeps in the kernel for good. Each ends as the kernel's
FAIL with its evidence, long before the step's timeout; the bound is the
harness's own step duration in results.json, never this test's wall clock.
(A spin in the middle of an SSH step is test_verdicts.py's pvm-hang test.)
Last, marked full: a harness wait that never returns, ended by the cell
watchdog."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.config.registry import load_scenario
from harness.report import ScenarioResult, StepResult, Verdict
from harness.session.deadline import STUCK_WAIT_ENV
from harness.session.liveness import LivenessPolicy
from harness.session.ssh import CHANNEL_TIMEOUT_S
from harness.watchdog import cell_budget
from tests.e2e.conftest import SERIES, run_scenarios

SCENARIOS = Path(__file__).resolve().parent.parent / "data" / "scenarios"
# The hang window, generously: two probe intervals of silence, every probe
# a saturated host may make inconclusive, and the evidence. The steps below
# have a 240 s timeout, twice that: a step that waited it out is far above.
_POLICY = LivenessPolicy()
HANG_WINDOW_S = 2 * _POLICY.interval_s + (_POLICY.starved_retries + 1) * _POLICY.probe_timeout_s + 30
assert HANG_WINDOW_S <= 120


def step(result: ScenarioResult, name: str) -> StepResult:
    return next(s for s in result.steps if s.name == name)


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_nic_that_dies_mid_run_is_the_kernels_fail_guest_network_unusable_and_a_fresh_boot(
    tmp_path: Path,
) -> None:
    """SSH works, then the NIC stops processing its receive ring (the
    series' trigger, from serial). The next SSH step's channel cannot open
    on the connection QEMU keeps open: the kernel's FAIL, with the network
    diagnosis, within the hang window; the next scenario gets a fresh boot.
    (A NIC broken from boot on, SSH never up, is test_verdicts.py's
    nic-dma-readonly test.)"""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["smmuv3-nested"],
        [str(SCENARIOS / "nic-dies-mid-run.yaml"), "boot-health"],
        "--series",
        str(SERIES / "broken-mid-run.mbox"),
    )
    assert run.rc == 1, run.stderr[-2000:]
    by_name = {r.scenario: r for r in run.run_result.results}
    dead = by_name["nic-dies-mid-run"]
    assert dead.verdict == Verdict.FAIL, dead.reason
    assert dead.reason == (
        "step ssh-after: guest network unusable (the guest answers on serial and dropbear runs):"
        " eth0 up on 0000:00:01.0; the NIC received nothing while the host connected"
    ), dead.reason
    assert str(dead.evidence["ssh_error"]).startswith(
        f"ssh: TCP open, no channel within {CHANNEL_TIMEOUT_S:.0f} s for 'uname -a'"
    ), dead.evidence["ssh_error"]
    assert [s.verdict for s in dead.steps] == [Verdict.PASS, Verdict.PASS, Verdict.FAIL]
    after = step(dead, "ssh-after")
    assert after.duration_s < HANG_WINDOW_S, after.duration_s  # not the step's 240 s
    # A guest without a network is spent: the next scenario boots afresh.
    fresh = by_name["boot-health"]
    assert fresh.verdict == Verdict.PASS, fresh.reason
    assert fresh.boot != dead.boot


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_liveness_probe_over_ssh_to_a_stopped_dropbear_returns_within_its_deadline(tmp_path: Path) -> None:
    """Every dropbear is stopped (SIGSTOP) from serial, then the serial step
    stays silent. The probe asks SSH: TCP is open (QEMU holds it), no
    channel opens. That is evidence within the probe's deadline, never a
    wait: the step ends long before its 240 s timeout."""
    run = run_scenarios(
        tmp_path, "mainline-7.3", ["smmuv3-nested"], [str(SCENARIOS / "dropbear-stopped.yaml")]
    )
    assert run.rc == 1, run.stderr[-2000:]
    (result,) = run.run_result.results
    assert result.verdict == Verdict.FAIL, result.reason
    assert result.reason.startswith(
        "step silent-serial-step: hang: no sign of life for 10s, then no answer to a ssh round trip"
        f" within 10s (ssh: TCP open, no channel within {CHANNEL_TIMEOUT_S:.0f} s); cpu0 EL"
    ), result.reason
    silent = step(result, "silent-serial-step")
    assert silent.transport == "serial"
    assert silent.duration_s < HANG_WINDOW_S, silent.duration_s


@pytest.mark.usefixtures("no_leaked_qemu")
def test_cpus_spinning_with_interrupts_off_in_a_serial_step_are_a_fail_naming_the_function(
    tmp_path: Path,
) -> None:
    """pvm-hang's stop_machine() (every CPU spins with interrupts off),
    pulled from a serial step while an SSH session is up: the probe asks
    SSH (the path that once waited forever in open_session), gets no
    channel, and the step is a hang FAIL naming the spinning function from
    the symbolised vCPU PCs."""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["smmuv3-nested"],
        [str(SCENARIOS / "serial-step-spins.yaml")],
        "--series",
        str(SERIES / "pvm-hang.patch"),
    )
    assert run.rc == 1, run.stderr[-2000:]
    (result,) = run.run_result.results
    assert result.verdict == Verdict.FAIL, result.reason
    assert result.reason.startswith(
        "step memslot-move: hang: no sign of life for 10s, then no answer to a ssh round trip"
        f" within 10s (ssh: TCP open, no channel within {CHANNEL_TIMEOUT_S:.0f} s); "
    ), result.reason
    assert " pkvm_negative_test_hang+0x" in result.reason, result.reason
    spin = step(result, "memslot-move")
    assert spin.transport == "serial"
    assert spin.duration_s < HANG_WINDOW_S, spin.duration_s


@pytest.mark.usefixtures("no_leaked_qemu")
def test_an_ssh_step_stuck_in_the_kernel_while_the_guest_answers_is_a_fail_naming_where(
    tmp_path: Path,
) -> None:
    """The step's process sleeps uninterruptibly for good (the series'
    sethostname trigger); serial answers every probe. Its wchan and kernel
    stack, unchanged and without CPU time across two probes, are the
    kernel's FAIL, within the hang window."""
    run = run_scenarios(
        tmp_path,
        "mainline-7.3",
        ["smmuv3-nested"],
        [str(SCENARIOS / "step-stuck.yaml")],
        "--series",
        str(SERIES / "broken-mid-run.mbox"),
    )
    assert run.rc == 1, run.stderr[-2000:]
    (result,) = run.run_result.results
    assert result.verdict == Verdict.FAIL, result.reason
    assert result.reason.startswith(
        "step stuck-in-kernel: stuck: the guest answers on serial, but the step's process made no progress"
        " across two liveness probes: hostname asleep uninterruptibly in pkvm_negative_test_stuck"
        " (kernel stack: "
    ), result.reason
    (stuck,) = result.evidence["stuck_processes"]
    assert stuck["comm"] == "hostname" and stuck["state"] == "D", stuck
    assert any(frame.startswith("__arm64_sys_sethostname+") for frame in stuck["stack"]), stuck
    spent = step(result, "stuck-in-kernel")
    assert spent.duration_s < HANG_WINDOW_S, spent.duration_s


@pytest.mark.full  # about 5 min: the cell watchdog waits out the cell's whole budget
@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_harness_wait_that_never_returns_is_ended_by_the_cell_watchdog_as_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test-only fault makes the liveness probe's SSH channel open wait
    without a deadline, on a guest whose dropbear is stopped: it never
    returns. The cell watchdog ends the cell at its step timeouts plus the
    margin, as the harness's ERROR naming that wait, with every harness
    thread's stack; the next cell runs on a fresh boot. (The unit test
    test_watchdog.py shows the same on a fake QEMU and SSH server.)"""
    monkeypatch.setenv(STUCK_WAIT_ENV, "ssh-open-session")
    scenario = SCENARIOS / "dropbear-stopped-short.yaml"
    budget = cell_budget(load_scenario(scenario))
    run = run_scenarios(
        tmp_path, "mainline-7.3", ["smmuv3-nested"], [str(scenario), "boot-health"], "--retries", "0"
    )
    assert run.rc == 2, run.stderr[-2000:]
    by_name = {r.scenario: r for r in run.run_result.results}
    stuck = by_name["dropbear-stopped-short"]
    assert stuck.verdict == Verdict.ERROR, stuck.reason
    assert stuck.reason.startswith(
        f"harness stuck: no result within {budget:.0f}s (its step timeouts plus margin), waiting in "
    ), stuck.reason
    assert re.search(r", called from harness\.session\.ssh\.SshSession\.run line \d+$", stuck.reason), (
        stuck.reason
    )
    stacks = "\n".join(line for lines in stuck.evidence["harness_threads"].values() for line in lines)
    assert "in open_session" in stacks and "in probe_alive" in stacks, stacks[-3000:]
    fresh = by_name["boot-health"]
    assert fresh.verdict == Verdict.PASS, fresh.reason
    assert fresh.boot != stuck.boot
