from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.errors import ExitCode
from harness.report import (
    RunRecorder,
    RunResult,
    ScenarioResult,
    TargetRecord,
    Verdict,
    exit_code,
    load_results,
    write_reports,
)
from harness.report.results import ResultsError


def result(scenario: str, verdict: Verdict, reason: str = "") -> ScenarioResult:
    return ScenarioResult(
        scenario=scenario,
        profile="smmuv3-nested",
        target="t",
        verdict=verdict,
        reason=reason,
        duration_s=1.5,
        events=(
            {
                "signature": "warning",
                "kind": "warning",
                "severity": "warning",
                "fatal": False,
                "line": 3,
                "timestamp": 1.0,
                "message": "WARNING: x",
                "fields": {},
                "trace": ["WARNING: x", "---[ end trace ]---"],
            },
        ),
    )


def test_exit_code_precedence() -> None:
    assert (
        exit_code([result("a", Verdict.PASS), result("b", Verdict.SKIP), result("c", Verdict.XFAIL)])
        == ExitCode.OK
    )
    assert exit_code([result("a", Verdict.PASS), result("b", Verdict.FAIL)]) == ExitCode.FAIL
    # An infrastructure error makes the whole run untrustworthy.
    assert exit_code([result("a", Verdict.FAIL), result("b", Verdict.ERROR)]) == ExitCode.ERROR


def test_reports(tmp_path: Path) -> None:
    results = (
        result("ok", Verdict.PASS),
        result("bad", Verdict.FAIL, "step x: WARN"),
        result("broken", Verdict.ERROR, "QEMU exited"),
        result("n/a", Verdict.SKIP, "no smmu"),
        result("gap", Verdict.XFAIL, "known gap"),
    )
    run = RunResult(
        harness_version="0.1.0",
        qemu_version="QEMU emulator version 10.0.2",
        command="pkvm-harness run",
        targets=(TargetRecord("t", {"kernel_version": "7.3.4"}, {}),),
        results=results,
        timings={"build_s": 0.01},
    )
    write_reports(run, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["exit_code"] == 2
    assert data["schema_version"] == 1
    assert data["summary"] == {
        "pass": 1,
        "fail": 1,
        "error": 1,
        "skip": 1,
        "xfail": 1,
        "xpass": 0,
        "not-run": 0,
    }
    assert load_results(tmp_path) == run  # the loader gives back exactly what was written
    first = data["results"][0]
    assert {"scenario", "profile", "target", "verdict", "reason", "duration_s", "events"} <= set(first)
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "5",
        "1",
        "1",
        "2",
    )
    failure = suite.find("testcase[@name='bad[smmuv3-nested]']/failure")
    assert failure is not None and failure.get("message") == "step x: WARN"
    assert "WARNING: x" in (failure.text or "")


def test_recorder_keeps_finished_cells_and_marks_the_rest_not_run(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, "0.1.0", "QEMU 10", "pkvm-harness run")
    cells = [("t", None, "smmuv3-nested", name) for name in ("a", "b", "c")]
    rec.plan(cells)
    # Valid from the start: every planned cell is there, not-run.
    first = load_results(tmp_path)
    assert [r.verdict for r in first.results] == [Verdict.NOT_RUN] * 3 and not first.complete
    rec.record(result("a", Verdict.PASS))
    assert load_results(tmp_path).results[0].verdict == Verdict.PASS  # written after the cell
    rec.fill_pending(Verdict.NOT_RUN, "interrupted by SIGINT")
    final = rec.finish({}, "interrupted by SIGINT")
    assert final.interrupted == "interrupted by SIGINT" and not final.complete
    loaded = load_results(tmp_path)
    assert [(r.scenario, r.verdict, r.reason) for r in loaded.results] == [
        ("a", Verdict.PASS, ""),
        ("b", Verdict.NOT_RUN, "interrupted by SIGINT"),
        ("c", Verdict.NOT_RUN, "interrupted by SIGINT"),
    ]
    assert exit_code(loaded.results) == ExitCode.ERROR  # an unfinished run proves nothing
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind


def test_loader_rejects_other_schema_versions_and_invalid_files(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, "0.1.0", "QEMU 10", "pkvm-harness run")
    rec.plan([("t", None, "p", "a")])
    data = json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps({**data, "schema_version": 2}))
    with pytest.raises(ResultsError, match="schema_version 2 is not supported"):
        load_results(tmp_path)
    data["results"][0]["verdict"] = "passed"
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="results/0/verdict"):
        load_results(tmp_path)


def test_unwritable_output_is_a_one_line_error() -> None:
    with pytest.raises(Exception, match=r"--output /proc/nope/out: cannot write there"):
        RunRecorder(Path("/proc/nope/out"), "0.1.0", "QEMU 10", "x")


def _shard(path: Path, scenarios: list[str], verdict: Verdict = Verdict.PASS) -> None:
    rec = RunRecorder(path, "0.1.0", "QEMU 10", "pkvm-harness run")
    rec.add_target(TargetRecord("t", {"config_sha256": "abc"}, {}))
    rec.plan([("t", None, "smmuv3-nested", s) for s in scenarios])
    for s in scenarios:
        rec.record(result(s, verdict, "" if verdict == Verdict.PASS else "step x: broke"))
    rec.finish({"boot_and_test_s": 10.0})


def test_merge_combines_shards_and_refuses_overlaps_and_other_versions(tmp_path: Path) -> None:
    from harness.cli import main

    _shard(tmp_path / "s1", ["a", "b"])
    _shard(tmp_path / "s2", ["c"], Verdict.FAIL)
    rc = main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--output", str(tmp_path / "all")])
    assert rc == 1  # shard 2 has a FAIL
    merged = load_results(tmp_path / "all")
    assert [(r.scenario, r.verdict) for r in merged.results] == [
        ("a", Verdict.PASS),
        ("b", Verdict.PASS),
        ("c", Verdict.FAIL),
    ]
    assert merged.complete and merged.timings["boot_and_test_s"] == 20.0 and len(merged.targets) == 1
    assert (tmp_path / "all" / "junit.xml").read_text().count("<testcase") == 3
    with pytest.raises(ResultsError, match=r"a on smmuv3-nested \(t\) is in both .*s1 and .*s1b"):
        _shard(tmp_path / "s1b", ["a"])
        from harness.report.merge import merge

        merge([tmp_path / "s1", tmp_path / "s1b"])
    data = json.loads((tmp_path / "s2" / "results.json").read_text())
    (tmp_path / "s2" / "results.json").write_text(json.dumps({**data, "schema_version": 2}))
    rc = main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--output", str(tmp_path / "x")])
    assert rc == 2
