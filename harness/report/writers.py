from __future__ import annotations

import json
from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from harness.report.results import RunResult, Verdict


def _junit(run: RunResult) -> str:
    suites: dict[str, list[TestCase]] = {}
    for r in run.results:
        case = TestCase(
            name=f"{r.scenario}[{r.profile}]",
            classname=f"pkvm.{run.target}.{r.profile}",
            elapsed_sec=r.duration_s,
            stdout="\n".join(f"{s.name}: {s.verdict} {s.reason}".rstrip() for s in r.steps),
        )
        if r.verdict == Verdict.FAIL:
            case.add_failure_info(message=r.reason, output=_event_text(r.events))
        elif r.verdict == Verdict.ERROR:
            case.add_error_info(message=r.reason)
        elif r.verdict in (Verdict.SKIP, Verdict.XFAIL):
            case.add_skipped_info(message=f"{r.verdict}: {r.reason}")
        suites.setdefault(r.profile, []).append(case)
    return str(
        to_xml_report_string(
            [TestSuite(f"{run.target}/{profile}", cases) for profile, cases in suites.items()]
        )
    )


def _event_text(events: tuple[dict[str, object], ...]) -> str:
    blocks = []
    for e in events:
        trace = e.get("trace")
        if e.get("severity") != "info" and isinstance(trace, list):
            blocks.append("\n".join(map(str, trace)))
    return "\n\n".join(blocks)


def write_reports(run: RunResult, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(run.to_json(), indent=2) + "\n")
    (output / "junit.xml").write_text(_junit(run))
