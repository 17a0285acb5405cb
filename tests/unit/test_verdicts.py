"""The verdict policy (harness.report.verdicts): every verdict through every
table, and the tables agreeing with the exit code on what fails a run."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Registry
from harness.config.models import KnownGap
from harness.errors import BuildError, ExitCode, HarnessError, MachineError
from harness.report import RunResult, ScenarioResult, TargetRecord, Verdict, verdicts, write_reports
from harness.report.results import scenario_result
from harness.report.verdicts import JUNIT, PYTEST, JunitKind, PytestOutcome
from harness.series.check import CheckResult, PatchReport, SeriesReport, _junit

TABLES: dict[str, Mapping[Verdict, object]] = {
    "rank": verdicts.RANK,
    "junit": verdicts.JUNIT,
    "pytest": verdicts.PYTEST,
    "avocado": verdicts.AVOCADO,
    "html": verdicts.HTML_CLASS,
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_maps_every_verdict(name: str) -> None:
    assert set(TABLES[name]) == set(Verdict)


def test_the_rank_orders_every_verdict_once() -> None:
    assert len(set(verdicts.RANK.values())) == len(Verdict)
    # The kernel's failure says most; a plain pass or skip says least.
    ranked = sorted(Verdict, key=lambda v: verdicts.RANK[v])
    assert ranked[0] == Verdict.FAIL and set(ranked[-2:]) == {Verdict.PASS, Verdict.SKIP}


@pytest.mark.parametrize("verdict", list(Verdict))
def test_every_vocabulary_agrees_with_the_exit_code_on_a_verdict(verdict: Verdict) -> None:
    """What fails a run fails it everywhere: junit's failure, pytest's
    failed, avocado's fail; what is the harness's error is an error
    everywhere; what is neither fails nowhere (NOT_RUN: the run is
    unproven, an exit 2, but no tool has a status for "never ran")."""
    code = verdicts.exit_code([verdict])
    fails = code == ExitCode.FAIL
    assert (JUNIT[verdict] == JunitKind.FAILURE) == fails
    assert (PYTEST[verdict] in (PytestOutcome.FAILED, PytestOutcome.XPASS_STRICT)) == fails
    assert (verdicts.AVOCADO[verdict] == "fail") == fails
    errors = JUNIT[verdict] == JunitKind.ERROR
    assert (PYTEST[verdict] == PytestOutcome.ERROR) == errors
    assert (verdicts.AVOCADO[verdict] == "error") == errors
    if errors:
        assert code == ExitCode.ERROR
    if code == ExitCode.OK:
        assert JUNIT[verdict] in (JunitKind.PASSED, JunitKind.SKIPPED)
    assert verdicts.HTML_CLASS[verdict] == re.sub(r"[^a-z-]", "", str(verdict))


def test_the_exit_code_of_several_verdicts_is_the_worst_by_its_own_order() -> None:
    for a in Verdict:
        for b in Verdict:
            assert verdicts.exit_code([a, b]) == max(verdicts.exit_code([a]), verdicts.exit_code([b]))
    assert verdicts.exit_code([]) == ExitCode.OK


def test_series_and_bisect_exit_codes_follow_the_run_rule() -> None:
    # A patch not checked follows one that does not apply: that FAIL speaks for it.
    assert verdicts.series_exit_code([Verdict.FAIL, Verdict.NOT_RUN]) == verdicts.exit_code([Verdict.FAIL])
    for v in Verdict:
        if v != Verdict.NOT_RUN:
            assert verdicts.series_exit_code([Verdict.PASS, v]) == verdicts.exit_code([v])
    assert verdicts.bisect_exit_code(found=True) == verdicts.exit_code([Verdict.FAIL])
    assert verdicts.bisect_exit_code(found=False) == verdicts.exit_code([Verdict.ERROR])
    # A bisect step is bad on the kernel's FAIL, untestable when its run
    # proved nothing (the run rule's ERROR), good otherwise (XPASS is the
    # declaration's fault, not the patch's).
    for v in Verdict:
        state = verdicts.bisect_state([Verdict.PASS, v])
        unproven = verdicts.exit_code([v]) == ExitCode.ERROR
        assert state == ("bad" if v == Verdict.FAIL else "skip" if unproven else "good")


def test_a_run_against_its_base_fails_on_regressions_only() -> None:
    """--against-base: a regression is the series' FAIL; failures on both
    sides (FAIL or XFAIL in the run) are not; an ERROR proves nothing only
    when a cell was inconclusive (an ERROR or not-run on one side)."""
    rule = verdicts.against_base_exit_code
    assert rule([Verdict.PASS, Verdict.FAIL], regressions=True, inconclusive=False) == ExitCode.FAIL
    assert rule([Verdict.FAIL, Verdict.FAIL], regressions=False, inconclusive=False) == ExitCode.OK
    assert rule([Verdict.ERROR, Verdict.FAIL], regressions=True, inconclusive=True) == ExitCode.ERROR
    assert rule([Verdict.NOT_RUN, Verdict.PASS], regressions=False, inconclusive=True) == ExitCode.ERROR
    assert rule([Verdict.FAIL], regressions=False, inconclusive=True) == ExitCode.OK
    assert rule([Verdict.ERROR], regressions=True, inconclusive=False) == ExitCode.FAIL


def test_a_series_defect_is_a_fail_and_anything_else_an_error() -> None:
    defect, other = BuildError("make failed", series_defect=True), BuildError("no cross compiler")
    assert verdicts.build_failure(defect)[0] == verdicts.failure_verdict(defect)
    assert verdicts.build_failure(other, "tip") == (
        verdicts.failure_verdict(other),
        "build (tip): no cross compiler",
    )
    assert verdicts.error_exit_code(defect) == verdicts.exit_code([verdicts.failure_verdict(defect)])
    assert verdicts.error_exit_code(other) == HarnessError.exit_code
    launch, _ = verdicts.launch_failure(MachineError("qemu: no such file"))
    assert verdicts.exit_code([launch]) == HarnessError.exit_code


def test_a_build_failure_carries_its_summary_and_log_as_fields() -> None:
    """series check reads them; nothing parses the message back."""
    exc = BuildError("kernel build failed: x.c:1: error: y", log=Path("/o/build.log"), series_defect=True)
    assert (exc.summary, exc.log) == ("kernel build failed: x.c:1: error: y", Path("/o/build.log"))
    assert str(exc) == f"{exc.summary} (log: {exc.log})"
    assert BuildError("make exited 2").log is None


def _results_of_every_verdict() -> tuple[ScenarioResult, ...]:
    return tuple(ScenarioResult(f"s-{v}", "smmuv3-nested", "t", v, f"because {v}", 1.0) for v in Verdict)


def _junit_kind(case: ET.Element) -> JunitKind:
    for kind in (JunitKind.FAILURE, JunitKind.ERROR, JunitKind.SKIPPED):
        if case.find(str(kind)) is not None:
            return kind
    return JunitKind.PASSED


def test_both_junit_writers_write_the_tables_element(tmp_path: Path) -> None:
    results = _results_of_every_verdict()
    run = RunResult("v", "q", "c", (TargetRecord("t", {}, {}),), results)
    write_reports(run, tmp_path)
    cases = {c.attrib["name"]: c for c in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")}
    for r in results:
        assert _junit_kind(cases[f"{r.scenario}[smmuv3-nested]"]) == JUNIT[r.verdict]
    checks = tuple(CheckResult(f"c-{v}", v, f"because {v}") for v in Verdict)
    report = SeriesReport("s", "t", {}, None, (PatchReport(1, "subject", None, None, None, checks),))
    series_cases = {c.attrib["name"]: c for c in ET.fromstring(_junit(report)).iter("testcase")}
    for c in checks:
        assert _junit_kind(series_cases[f"01 {c.check}"]) == JUNIT[c.verdict]


def test_a_failed_series_build_goes_through_the_known_gap_rule_under_run(tmp_path: Path) -> None:
    """The disagreement of #15: `run` built the result of a failed series
    build directly (no known-gap rule) and the pytest plugin through the
    constructor. Now both go through it: a gap scoped to a step does not
    cover a build failure, and the reason says so, under both."""
    from harness import pipeline
    from harness.report import RunRecorder

    reg = Registry()
    gap = KnownGap("dma", re.compile("x"), "declared")
    target = replace(reg.target("mainline-7.3"), known_gaps={"boot-health": gap})
    scenario = reg.scenario("boot-health")
    request = pipeline.RunRequest(target, (reg.profile("smmuv3-nested"),), (scenario,), tmp_path, side="tip")
    other = replace(request, side="base")
    recorder = RunRecorder(tmp_path, "v", "q", "c")
    recorder.plan([*request.cells(), *other.cells()])
    broken = BuildError("make failed", series_defect=True)

    def build_all(*args: object, **kwargs: object) -> pipeline.Artifacts:
        raise broken

    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "build_all", build_all)
    try:
        pipeline._build_each([request, other], recorder, {}, {})
    finally:
        mp.undo()
    expected = scenario_result(
        "boot-health", target, "smmuv3-nested", *verdicts.build_failure(broken), side="tip"
    )
    (got,) = [r for r in recorder.snapshot().results if r.side == "tip"]
    assert (got.verdict, got.reason) == (expected.verdict, expected.reason)
    assert "not the known gap" in got.reason
