"""A kernel that reports itself stuck (RCU stall, soft lockup, NMI
backtraces) during a step FAILs that step at once, naming the report (#22);
the protected-VM taint warning does not."""

from __future__ import annotations

from pathlib import Path

from harness.config.registry import load_scenario
from harness.report import Verdict
from harness.scenario import run_scenario
from tests.unit.test_runner import ScriptedGuest, boot_log, ctx

SCENARIO = """
name: s
steps:
  - name: poke
    transport: serial
    run: poke
"""


def run_with_console(tmp_path: Path, data_dir: Path, console: str) -> tuple[Verdict, str]:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    guest = ScriptedGuest(boot_log(data_dir), lambda cmd: ("", 0, console))
    result = run_scenario(load_scenario(path), guest, ctx())
    return result.verdict, result.reason


def test_an_rcu_stall_during_a_step_fails_it_naming_the_stall(tmp_path: Path, data_dir: Path) -> None:
    text = (data_dir / "7.3-rcu-stall-nmi-backtrace.log").read_text()
    log = text.split("pkvm-harness: ready 10.0.2.15\n")[1]  # what the step's console saw
    verdict, reason = run_with_console(tmp_path, data_dir, log)
    assert verdict == Verdict.FAIL
    assert reason.startswith("step poke: rcu-stall: rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")


def test_a_soft_lockup_during_a_step_fails_it_naming_the_cpu(tmp_path: Path, data_dir: Path) -> None:
    log = (data_dir / "7.3-soft-lockup.log").read_text()
    verdict, reason = run_with_console(tmp_path, data_dir, log)
    assert verdict == Verdict.FAIL
    assert reason.startswith("step poke: soft-lockup: watchdog: BUG: soft lockup - CPU#0 stuck for 22s!")


def test_the_protected_vm_taint_warning_fails_nothing(tmp_path: Path, data_dir: Path) -> None:
    line = "kvm: protected VMs are experimental and for development only, tainting kernel\n"
    verdict, reason = run_with_console(tmp_path, data_dir, line)
    assert verdict == Verdict.PASS, reason
