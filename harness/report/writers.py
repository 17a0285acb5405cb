"""results.json and junit.xml, written atomically: a reader (or a crash)
never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from harness.report import verdicts
from harness.report.results import RunResult, ScenarioResult, Verdict, validate_results


def _case_name(r: ScenarioResult) -> str:
    side = f"@{r.side}" if r.side else ""
    return f"{r.scenario}[{r.profile}{side}]"


def _junit(run: RunResult) -> str:
    suites: dict[str, list[TestCase]] = {}
    for r in run.results:
        case = TestCase(
            name=_case_name(r),
            classname=f"pkvm.{r.target}.{r.profile}",
            elapsed_sec=r.duration_s,
            stdout="\n".join(f"{s.name}: {s.verdict} {s.reason}".rstrip() for s in r.steps),
        )
        output = _event_text(r.events) if r.verdict == Verdict.FAIL else None
        add_junit_outcome(case, r.verdict, r.reason, output)
        suites.setdefault(f"{r.target}/{r.profile}", []).append(case)
    return str(to_xml_report_string([TestSuite(name, cases) for name, cases in suites.items()]))


def add_junit_outcome(case: TestCase, verdict: Verdict, reason: str, output: str | None = None) -> None:
    """The verdict as junit's failure/error/skipped element (the table is
    harness.report.verdicts.JUNIT); every junit writer goes through here."""
    kind, message = verdicts.junit_outcome(verdict, reason)
    if kind == verdicts.JunitKind.FAILURE:
        case.add_failure_info(message=message, output=output)
    elif kind == verdicts.JunitKind.ERROR:
        case.add_error_info(message=message)
    elif kind == verdicts.JunitKind.SKIPPED:
        case.add_skipped_info(message=message)


def _event_text(events: tuple[dict[str, object], ...]) -> str:
    blocks = []
    for e in events:
        trace = e.get("symbolised") or e.get("trace")
        if e.get("severity") != "info" and isinstance(trace, list):
            blocks.append("\n".join(map(str, trace)))
    return "\n\n".join(blocks)


def atomic_write(path: Path, text: str) -> None:
    """Temporary file in the same directory, fsync, rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(run: RunResult, output: Path) -> None:
    data = run.to_json()
    validate_results(data, str(output / "results.json"))  # never write what readers reject
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / "results.json", json.dumps(data, indent=2) + "\n")
    atomic_write(output / "junit.xml", _junit(run))
