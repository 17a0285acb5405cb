"""Readers of what `series check` and `series bisect` write (series.json,
bisect.json): the one place that turns those files back into typed values
(`SeriesReport`, `BisectFile`), so the KCIDB exporter, the review reply and
bench.py never parse them by hand. Each file has a versioned JSON Schema
(series.schema.json, bisect.schema.json, beside this module), checked
first: a file that does not follow it, or another version, is a one-line
error naming the file and where in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.report import Verdict
from harness.report.results import load_versioned, schema
from harness.series.bisect import BISECT_SCHEMA_VERSION
from harness.series.check import SERIES_SCHEMA_VERSION, CheckResult, PatchReport, SeriesReport

SERIES_SCHEMA_FILE = "series.schema.json"
BISECT_SCHEMA_FILE = "bisect.schema.json"


class SeriesFileError(HarnessError):
    """A series.json or bisect.json that cannot be read, or does not follow its schema."""


def series_schema() -> dict[str, Any]:
    return schema("harness.series", SERIES_SCHEMA_FILE)


def bisect_schema() -> dict[str, Any]:
    return schema("harness.series", BISECT_SCHEMA_FILE)


def load_series_report(path: Path) -> SeriesReport:
    """series.json (or a directory holding it) as `series check` wrote it."""
    _, d = load_versioned(path, "series.json", series_schema(), SERIES_SCHEMA_VERSION, SeriesFileError)
    patches = tuple(
        PatchReport(
            number=p["number"],
            subject=p["subject"],
            author=p["author"],
            message_id=p["message_id"],
            commit=p["commit"],
            checks=tuple(
                CheckResult(c["check"], Verdict(c["verdict"]), c["reason"], c["seconds"]) for c in p["checks"]
            ),
            build_log=p["build_log"],
            new_warnings=tuple(p["new_warnings"]),
        )
        for p in d["patches"]
    )
    return SeriesReport(
        series=d["series"],
        target=d["target"],
        base=dict(d["base"]),
        description=d["description"],
        patches=patches,
        notes=tuple(d["notes"]),
        thread=dict(d["thread"]),
    )


@dataclass(frozen=True)
class BisectPatch:
    number: int
    subject: str
    message_id: str | None


@dataclass(frozen=True)
class BisectStep:
    """One step of a bisection as bisect.json records it."""

    patch: int  # the kernel at patch k (0: the base)
    role: str  # "base" | "tip" | "bisect" | "confirm"
    state: str  # "good" | "bad" | "skip"
    reason: str
    signature: tuple[str, ...]
    results: str | None  # that step's results directory


@dataclass(frozen=True)
class BisectFile:
    """bisect.json as `series bisect` wrote it."""

    series: str
    target: str
    profile: str
    scenarios: tuple[str, ...]
    verdict: str  # "found" | "ambiguous" | "error"
    reason: str
    first_bad: BisectPatch | None
    candidates: tuple[BisectPatch, ...]
    fails_differently: bool
    counts: dict[str, int]  # builds, boots, bisection_boots, base_and_tip_boots, confirmation_boots
    steps: tuple[BisectStep, ...]
    thread: dict[str, Any]
    exit_code: int


def _patch(d: dict[str, Any]) -> BisectPatch:
    return BisectPatch(d["number"], d["subject"], d["message_id"])


def load_bisect(path: Path) -> BisectFile:
    """bisect.json (or a directory holding it) as `series bisect` wrote it."""
    _, d = load_versioned(path, "bisect.json", bisect_schema(), BISECT_SCHEMA_VERSION, SeriesFileError)
    first = d["first_bad"]
    return BisectFile(
        series=d["series"],
        target=d["target"],
        profile=d["profile"],
        scenarios=tuple(d["scenarios"]),
        verdict=d["verdict"],
        reason=d["reason"],
        first_bad=_patch(first) if first else None,
        candidates=tuple(_patch(c) for c in d["candidates"]),
        fails_differently=d["fails_differently"],
        counts=dict(d["counts"]),
        steps=tuple(
            BisectStep(s["patch"], s["role"], s["state"], s["reason"], tuple(s["signature"]), s["results"])
            for s in d["steps"]
        ),
        thread=dict(d["thread"]),
        exit_code=d["exit_code"],
    )
