from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.errors import ExitCode
from harness.report import RunResult, ScenarioResult, Verdict, exit_code, write_reports


def result(scenario: str, verdict: Verdict, reason: str = "") -> ScenarioResult:
    return ScenarioResult(
        scenario=scenario,
        profile="smmuv3-nested",
        target="t",
        verdict=verdict,
        reason=reason,
        duration_s=1.5,
        events=(
            {"signature": "warning", "severity": "warning", "trace": ["WARNING: x", "---[ end trace ]---"]},
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
        target="t",
        kernel={"kernel_version": "7.3.4"},
        image={},
        results=results,
        timings={"build_s": 0.01},
        command="pkvm-harness run",
    )
    write_reports(run, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["exit_code"] == 2
    assert data["summary"] == {"pass": 1, "fail": 1, "error": 1, "skip": 1, "xfail": 1}
    for key in ("harness_version", "qemu_version", "kernel"):
        assert key in data
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
