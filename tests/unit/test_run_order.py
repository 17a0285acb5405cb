"""The order `run` gives each unit's cells (pipeline.RunOrder): what failed
in the output directory's last run first, then the longest first, then the
suite's order; results.json keeps the suite's order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.pipeline import RunOrder
from harness.report import RunRecorder, Verdict, load_results
from tests.unit.test_report import result

UNIT = ("t", None, "smmuv3-nested")


def cell(name: str) -> tuple[str, None, str, str]:
    return (*UNIT, name)


def previous_run(output: Path) -> None:
    rec = RunRecorder(output, "0.1.0", "QEMU 10", "pkvm-harness run")
    rec.plan([cell(n) for n in ("boot", "quick", "long", "broken", "flaky", "unrun")])
    for name, verdict, seconds in (
        ("boot", Verdict.PASS, 3.0),
        ("quick", Verdict.PASS, 1.0),
        ("long", Verdict.XFAIL, 70.0),
        ("broken", Verdict.FAIL, 5.0),
        ("flaky", Verdict.ERROR, 2.0),
    ):
        reason = "" if verdict == Verdict.PASS else "why"
        rec.record(replace(result(name, verdict, reason), duration_s=seconds))
    rec.finish({})


def test_failed_cells_first_then_the_longest_then_new_ones_in_suite_order(tmp_path: Path) -> None:
    previous_run(tmp_path)
    order = RunOrder.of_previous(tmp_path)
    suite = [cell(n) for n in ("boot", "new1", "quick", "long", "unrun", "broken", "flaky", "new2")]
    assert [c[3] for c in order.sort(suite)] == [
        "broken",  # FAIL and ERROR first, the longer first
        "flaky",
        "long",
        "boot",
        "quick",
        "new1",  # no history (new, or not run last time): suite order, last
        "unrun",
        "new2",
    ]


def test_no_previous_run_keeps_the_suites_order(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{not json")
    for output in (tmp_path / "new", tmp_path):
        suite = [cell(n) for n in ("c", "a", "b")]
        assert RunOrder.of_previous(output).sort(suite) == suite


def test_results_keep_the_suites_order_whatever_order_the_cells_ran_in(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, "0.1.0", "QEMU 10", "pkvm-harness run")
    rec.plan([cell(n) for n in ("a", "b", "c")])
    for name in ("c", "a", "b"):
        rec.record(result(name, Verdict.PASS))
    assert [r.scenario for r in load_results(tmp_path).results] == ["a", "b", "c"]


def test_with_no_history_the_vcpu_saturating_cells_go_first(tmp_path: Path) -> None:
    suite = [cell(n) for n in ("boot", "dma", "kselftest", "fuzz")]
    order = RunOrder.of_previous(tmp_path)
    assert [c[3] for c in order.sort(suite, lambda c: c[3] == "kselftest")] == [
        "kselftest",
        "boot",
        "dma",
        "fuzz",
    ]
    # History wins over the guess: a heavy cell that ran is placed by its time.
    previous_run(tmp_path)
    known = [cell(n) for n in ("quick", "boot", "new", "long")]
    ranked = RunOrder.of_previous(tmp_path).sort(known, lambda c: c[3] in ("quick", "new"))
    assert [c[3] for c in ranked] == ["long", "boot", "quick", "new"]
