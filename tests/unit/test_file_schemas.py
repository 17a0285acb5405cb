"""The files the harness writes besides results.json (comparison.json,
series.json, bisect.json): each has a versioned JSON Schema, what the
harness writes follows it and reads back equal through its one loader, and
a loader refuses a bad file with one line naming it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from harness.config.models import SeriesSpec
from harness.errors import HarnessError
from harness.kernel.series import load_series
from harness.report import RunResult, ScenarioResult, TargetRecord, Verdict, write_reports
from harness.report.compare import (
    COMPARISON_SCHEMA_FILE,
    COMPARISON_SCHEMA_VERSION,
    against_base,
    compare,
    load_comparison,
)
from harness.report.html import write_report
from harness.report.results import schema
from harness.series.bisect import BISECT_SCHEMA_VERSION, BisectReport, StepOutcome
from harness.series.check import SERIES_SCHEMA_VERSION, CheckResult, PatchReport, SeriesReport
from harness.series.load import bisect_schema, load_bisect, load_series_report, series_schema

ONE_PATCH = Path(__file__).resolve().parents[1] / "data" / "series" / "boot-stall.patch"


def _result(
    scenario: str, verdict: Verdict, side: str, metrics: dict[str, float] | None = None
) -> ScenarioResult:
    return ScenarioResult(
        scenario,
        "smmuv3-nested",
        "t",
        verdict,
        f"{scenario} {verdict}",
        1.0,
        side=side,
        metrics=metrics or {},
    )


def _sides() -> list[ScenarioResult]:
    base = [("a", Verdict.PASS), ("b", Verdict.FAIL), ("c", Verdict.XFAIL), ("e", Verdict.ERROR)]
    tip = [
        ("a", Verdict.FAIL),
        ("b", Verdict.PASS),
        ("c", Verdict.XFAIL),
        ("e", Verdict.PASS),
        ("g", Verdict.PASS),
    ]
    return [
        *(_result(s, v, "base", {"map_us": 10.0}) for s, v in base),
        *(_result(s, v, "tip", {"map_us": 20.0}) for s, v in tip),
    ]


def _comparison_file(tmp: Path) -> Path:
    against_base(_sides(), tmp)
    return tmp / "comparison.json"


def _series_file(tmp: Path) -> Path:
    checks = (
        CheckResult("apply", Verdict.PASS, "", 0.1),
        CheckResult("build", Verdict.FAIL, "x.c:1: error", 12.3),
    )
    report = SeriesReport(
        series="mbox:x",
        target="mainline-7.3",
        base={"kernel_version": "7.3.4", "cli_args": ["--target", "mainline-7.3"]},
        description="a cover",
        patches=(PatchReport(1, "x: one", "D <d@e>", "1@e", "abc", checks, "/b.log", ("w",)),),
        notes=("a note",),
        thread={"cover_message_id": "0@e", "total": 1},
    )
    (tmp / "series.json").write_text(json.dumps(report.to_json()))
    return tmp / "series.json"


def _bisect_file(tmp: Path) -> Path:
    series = load_series(SeriesSpec("mbox", str(ONE_PATCH)))
    report = BisectReport("mbox:x", "mainline-7.3", "smmuv3-nested", ("boot-health",), first_bad=1)
    report.verdict, report.reason, report.builds = "found", "patch 1", 2
    report.steps += [
        StepOutcome(0, "good", "all passed", (), "base", "/r/0", True),
        StepOutcome(1, "bad", "boot-health: hang", ("boot-health/boot:",), "tip", None, True),
    ]
    (tmp / "bisect.json").write_text(json.dumps(report.to_json(series)))
    return tmp / "bisect.json"


@dataclass(frozen=True)
class Kind:
    name: str
    write: Callable[[Path], Path]
    load: Callable[[Path], Any]
    schema: Callable[[], dict[str, Any]]
    version: int


KINDS = [
    Kind(
        "comparison.json",
        _comparison_file,
        load_comparison,
        lambda: schema("harness.report", COMPARISON_SCHEMA_FILE),
        COMPARISON_SCHEMA_VERSION,
    ),
    Kind("series.json", _series_file, load_series_report, series_schema, SERIES_SCHEMA_VERSION),
    Kind("bisect.json", _bisect_file, load_bisect, bisect_schema, BISECT_SCHEMA_VERSION),
]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_the_file_written_follows_its_versioned_schema_and_loads(kind: Kind, tmp_path: Path) -> None:
    path = kind.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == kind.version == kind.schema()["properties"]["schema_version"]["const"]
    jsonschema.Draft202012Validator.check_schema(kind.schema())
    jsonschema.validate(data, kind.schema())
    assert kind.load(path) == kind.load(tmp_path)  # the file, or the directory holding it


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


BAD: list[tuple[str, Callable[[Path], object], str]] = [
    (
        "another version",
        lambda p: _edit(p, lambda d: d.update(schema_version=99)),
        "schema_version 99 is not supported",
    ),
    (
        "no version",
        lambda p: _edit(p, lambda d: d.pop("schema_version")),
        "schema_version None is not supported",
    ),
    (
        "a field missing",
        lambda p: _edit(p, lambda d: d.pop("target", None) or d.pop("fixes")),
        "is a required property",
    ),
    ("an unknown field", lambda p: _edit(p, lambda d: d.update(surprise=1)), "(top): Additional properties"),
    ("not JSON", lambda p: p.write_text('{"schema_version": 1,\n'), ":2: not JSON"),
    ("missing", lambda p: p.unlink(), ": cannot read: No such file or directory"),
]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize(("what", "spoil", "says"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_is_one_line_naming_it(
    kind: Kind, what: str, spoil: Callable[[Path], object], says: str, tmp_path: Path
) -> None:
    path = kind.write(tmp_path)
    spoil(path)
    with pytest.raises(HarnessError) as err:
        kind.load(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:") and says in message, message


def test_a_wrong_verdict_is_named_where_it_is(tmp_path: Path) -> None:
    path = _series_file(tmp_path)
    _edit(path, lambda d: d["patches"][0]["checks"][1].update(verdict="broken"))
    with pytest.raises(
        HarnessError, match=r"series\.json: patches/0/checks/1/verdict: 'broken' is not one of"
    ):
        load_series_report(path)


def test_the_comparison_reads_back_equal_and_the_report_shows_it(tmp_path: Path) -> None:
    """run --against-base's comparison.json, read by the loader, is the
    comparison made; `report DIR` of that directory shows it."""
    results = _sides()
    made = against_base(results, tmp_path)
    assert load_comparison(tmp_path) == made
    assert made == compare([r for r in results if r.side == "base"], [r for r in results if r.side == "tip"])
    assert [c.scenario for c in made.regressions] == ["a"] and made.metrics[0].relative == 1.0
    run = RunResult(
        "0", "qemu", "pkvm-harness run --against-base", (TargetRecord("t", {}, {}),), tuple(results)
    )
    write_reports(run, tmp_path)
    page = write_report(tmp_path).read_text()
    assert "Compared: base → tip" in page and "Newly failing</h3>" not in page
    assert "Newly failing: 1</h3>" in page
