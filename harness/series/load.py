"""Readers of what `series check` and `series bisect` write (series.json,
bisect.json): the one place that turns those files back into typed values
(`SeriesReport`, `BisectFile`), so the KCIDB exporter and the review reply
never parse them by hand. The files have no JSON Schema of their own yet:
a file that lacks a field `to_json` writes is a one-line error naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.report import Verdict
from harness.series.check import CheckResult, PatchReport, SeriesReport


class SeriesFileError(HarnessError):
    """A series.json or bisect.json that cannot be read."""


def _read(path: Path, name: str) -> dict[str, Any]:
    if path.is_dir():
        path = path / name
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SeriesFileError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SeriesFileError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise SeriesFileError(f"{path}: not a {name} (not an object)")
    data["_path"] = str(path)
    return data


def _field(d: dict[str, Any], key: str, where: str) -> Any:
    try:
        return d[key]
    except KeyError:
        raise SeriesFileError(f"{where}: missing field {key!r}") from None


def load_series_report(path: Path) -> SeriesReport:
    """series.json (or a directory holding it) as `series check` wrote it."""
    d = _read(path, "series.json")
    where = d["_path"]
    patches = []
    for p in _field(d, "patches", where):
        checks = tuple(
            CheckResult(c["check"], Verdict(c["verdict"]), c.get("reason", ""), c.get("seconds", 0.0))
            for c in _field(p, "checks", where)
        )
        patches.append(
            PatchReport(
                number=_field(p, "number", where),
                subject=_field(p, "subject", where),
                author=p.get("author"),
                message_id=p.get("message_id"),
                commit=p.get("commit"),
                checks=checks,
                build_log=p.get("build_log"),
                new_warnings=tuple(p.get("new_warnings", ())),
            )
        )
    return SeriesReport(
        series=_field(d, "series", where),
        target=_field(d, "target", where),
        base=dict(d.get("base") or {}),
        description=d.get("description"),
        patches=tuple(patches),
        notes=tuple(d.get("notes", ())),
        thread=dict(d.get("thread") or {}),
    )


@dataclass(frozen=True)
class BisectPatch:
    number: int
    subject: str
    message_id: str | None


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
    counts: dict[str, int]
    steps: tuple[dict[str, Any], ...]
    thread: dict[str, Any]
    base: dict[str, Any]
    exit_code: int


def _patch(d: dict[str, Any]) -> BisectPatch:
    return BisectPatch(d["number"], d["subject"], d.get("message_id"))


def load_bisect(path: Path) -> BisectFile:
    d = _read(path, "bisect.json")
    where = d["_path"]
    first = _field(d, "first_bad", where)
    return BisectFile(
        series=_field(d, "series", where),
        target=_field(d, "target", where),
        profile=_field(d, "profile", where),
        scenarios=tuple(_field(d, "scenarios", where)),
        verdict=_field(d, "verdict", where),
        reason=d.get("reason", ""),
        first_bad=_patch(first) if first else None,
        candidates=tuple(_patch(c) for c in d.get("candidates", ())),
        fails_differently=bool(d.get("fails_differently")),
        counts=dict(d.get("counts", {})),
        steps=tuple(d.get("steps", ())),
        thread=dict(d.get("thread") or {}),
        base=dict(d.get("base") or {}),
        exit_code=int(_field(d, "exit_code", where)),
    )
