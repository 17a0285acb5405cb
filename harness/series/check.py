"""`pkvm-harness series check`: the reviewer's per-patch verdicts.

For each patch k in order: it applies (git am), the kernel at patch k builds
(incrementally, in the source's shared O= directory with ccache), it adds no
compiler warning (compared by file and message with patch k-1, units keeping
their warnings from their last compile), every requested config option is
still there, and optionally it boots and passes a smoke set. Results grow
on the terminal, in series.json and junit.xml as each patch finishes."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from junit_xml import TestCase, TestSuite, to_xml_report_string

from harness import pipeline, ui
from harness.config.models import Profile, Scenario, SourceSpec, Target
from harness.errors import BuildError, ExitCode, HarnessError, KconfigError, PatchError
from harness.image import build_image
from harness.kernel import KernelBuild, build_kernel, diagnostics
from harness.kernel.series import PatchSeries, load_series
from harness.kernel.source import check_base_commit
from harness.report import Verdict, exit_code, verdicts
from harness.report.writers import add_junit_outcome, atomic_write

CHECKS = ("apply", "kconfig", "build", "warnings", "boot")  # the order they run in


@dataclass(frozen=True)
class CheckResult:
    check: str
    verdict: Verdict
    reason: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "seconds": round(self.seconds, 1),
        }


SERIES_SCHEMA_VERSION = 1  # series.json: series.schema.json


@dataclass(frozen=True)
class PatchReport:
    number: int
    subject: str
    author: str | None
    message_id: str | None
    commit: str | None
    checks: tuple[CheckResult, ...]
    build_log: str | None = None
    new_warnings: tuple[str, ...] = ()

    @property
    def verdict(self) -> Verdict:
        verdicts = {c.verdict for c in self.checks}
        for v in (Verdict.ERROR, Verdict.FAIL):
            if v in verdicts:
                return v
        return Verdict.PASS if Verdict.PASS in verdicts else Verdict.NOT_RUN

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "subject": self.subject,
            "author": self.author,
            "message_id": self.message_id,
            "commit": self.commit,
            "verdict": str(self.verdict),
            "checks": [c.to_json() for c in self.checks],
            "new_warnings": list(self.new_warnings),
            "build_log": self.build_log,
        }


@dataclass(frozen=True)
class SeriesReport:
    series: str
    target: str
    base: dict[str, Any]
    description: str | None
    patches: tuple[PatchReport, ...] = ()
    notes: tuple[str, ...] = field(default=())
    thread: dict[str, Any] = field(default_factory=dict)  # what a reply threads under (thread_info)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SERIES_SCHEMA_VERSION,
            "series": self.series,
            "target": self.target,
            "base": self.base,
            "description": self.description,
            "thread": self.thread,
            "notes": list(self.notes),
            "exit_code": int(self.exit_code),
            "patches": [p.to_json() for p in self.patches],
        }

    @property
    def exit_code(self) -> ExitCode:
        return verdicts.series_exit_code(p.verdict for p in self.patches)


@dataclass(frozen=True)
class CheckOptions:
    profiles: tuple[Profile, ...] = ()  # boot and run the smoke set on these (none: no boot)
    scenarios: tuple[Scenario, ...] = ()
    allow_warnings: bool = False
    warnings_level: str | None = None  # make W=
    jobs: int | None = None


def _junit(report: SeriesReport) -> str:
    cases = []
    for p in report.patches:
        for c in p.checks:
            case = TestCase(
                name=f"{p.number:02d} {c.check}",
                classname=f"series.{report.target}.patch{p.number:02d}",
                elapsed_sec=c.seconds,
                stdout=p.subject,
            )
            add_junit_outcome(case, c.verdict, c.reason)
            cases.append(case)
    return str(to_xml_report_string([TestSuite(f"series {report.series}", cases)]))


def _write(report: SeriesReport, output: Path) -> None:
    atomic_write(output / "series.json", json.dumps(report.to_json(), indent=2) + "\n")
    atomic_write(output / "junit.xml", _junit(report))


def _row(p: PatchReport, total: int) -> str:
    cells = []
    for name in CHECKS:
        c = next((c for c in p.checks if c.check == name), None)
        cells.append("-" if c is None else {"pass": "ok"}.get(str(c.verdict), str(c.verdict).upper()))
    first_bad = next((c for c in p.checks if c.verdict in (Verdict.FAIL, Verdict.ERROR)), None)
    why = f"  {first_bad.check}: {first_bad.reason}" if first_bad else ""
    return f"{p.number:>3}/{total:<3} " + " ".join(f"{c:<8}" for c in cells) + f" {p.subject[:60]}{why}"


def _warning_check(
    previous: diagnostics.WarningMap, build: KernelBuild, allow: bool
) -> tuple[CheckResult, tuple[str, ...], diagnostics.WarningMap]:
    current = build.warnings
    if current is None:
        return CheckResult("warnings", Verdict.SKIP, "this build's warnings were not recorded"), (), previous
    new = tuple(f"{f}: warning: {m}" for f, m in diagnostics.added(previous, current))
    if not new:
        return CheckResult("warnings", Verdict.PASS), (), current
    more = f" (and {len(new) - 1} more)" if len(new) > 1 else ""
    if allow:
        return CheckResult("warnings", Verdict.PASS, f"new (allowed): {new[0]}{more}"), new, current
    return CheckResult("warnings", Verdict.FAIL, f"new {new[0]}{more}"), new, current


def _boot_check(
    target: Target, build: KernelBuild, k: int, options: CheckOptions, output: Path
) -> CheckResult:
    start = time.monotonic()
    artifacts = pipeline.Artifacts(build, build_image(), 0.0)
    request = pipeline.RunRequest(
        target, options.profiles, options.scenarios, output / f"patch-{k:02d}", upto=k
    )
    result = pipeline.run_with(request, artifacts)
    bad = [r for r in result.results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    seconds = time.monotonic() - start
    if not bad:
        return CheckResult("boot", Verdict.PASS, "", seconds)
    first = bad[0]
    verdict = Verdict.ERROR if exit_code(result.results) == ExitCode.ERROR else Verdict.FAIL  # XPASS: a FAIL
    return CheckResult("boot", verdict, f"{first.scenario} [{first.profile}]: {first.reason}", seconds)


def check_series(target: Target, output: Path, options: CheckOptions) -> SeriesReport:
    if target.series is None:
        raise HarnessError("series check: no series given (--series)")
    output.mkdir(parents=True, exist_ok=True)
    series = load_series(target.series)
    total = len(series.patches)
    ui.info("series", f"{total} patches from {series.spec.describe()} on {target.name}")
    base = build_kernel(target, upto=0, jobs=options.jobs, warnings_level=options.warnings_level)
    report = SeriesReport(
        series=series.spec.describe(),
        target=target.name,
        base={**_base_info(base, series, target.source), "cli_args": target.cli_args()},
        description=series.cover_subject,
        thread=thread_info(series),
    )
    if base.warnings is None:
        report = replace(report, notes=(*report.notes, "the base's warnings were not recorded"))
    previous = base.warnings or {}
    ui.info("series", "  #     " + " ".join(f"{c:<8}" for c in CHECKS) + " subject")
    for patch in series.patches:
        k = patch.index
        checks: list[CheckResult] = []
        new: tuple[str, ...] = ()
        commit = None
        log = None
        start = time.monotonic()
        try:
            build = build_kernel(target, upto=k, jobs=options.jobs, warnings_level=options.warnings_level)
        except PatchError as exc:
            if verdicts.failure_verdict(exc) != Verdict.FAIL:
                raise
            checks.append(CheckResult("apply", Verdict.FAIL, str(exc)))
        except KconfigError as exc:
            checks += [
                CheckResult("apply", Verdict.PASS),
                CheckResult("kconfig", verdicts.failure_verdict(exc), str(exc)),
            ]
        except BuildError as exc:
            seconds = time.monotonic() - start
            checks += [
                CheckResult("apply", Verdict.PASS),
                CheckResult("kconfig", Verdict.PASS),
                CheckResult("build", verdicts.failure_verdict(exc), exc.summary, seconds),
            ]
            log = _keep_log(str(exc.log), output / f"patch-{k:02d}-build.log") if exc.log else None
        else:
            commit = str(build.metadata.get("commit") or "") or None
            log = str(build.build_log)
            seconds = float(build.metadata.get("build_seconds", time.monotonic() - start))
            checks += [
                CheckResult("apply", Verdict.PASS),
                CheckResult("kconfig", Verdict.PASS),
                CheckResult("build", Verdict.PASS, "cached" if build.cached else "", seconds),
            ]
            warn, new, previous = _warning_check(previous, build, options.allow_warnings)
            checks.append(warn)
            if options.profiles:
                checks.append(_boot_check(target, build, k, options, output))
        entry = PatchReport(
            number=k,
            subject=patch.subject,
            author=patch.author,
            message_id=patch.message_id,
            commit=commit,
            checks=tuple(checks),
            build_log=log,
            new_warnings=new,
        )
        report = replace(report, patches=(*report.patches, entry))
        _write(report, output)
        ui.info("series", _row(entry, total))
        if any(c.check == "apply" and c.verdict == Verdict.FAIL for c in checks):
            break  # nothing after a patch that does not apply can be checked
    for patch in series.patches[len(report.patches) :]:
        skipped = PatchReport(
            patch.index,
            patch.subject,
            patch.author,
            patch.message_id,
            None,
            (CheckResult("apply", Verdict.NOT_RUN, "an earlier patch does not apply"),),
        )
        report = replace(report, patches=(*report.patches, skipped))
    _write(report, output)
    return report


def _keep_log(log: str, keep: Path) -> str:
    """A failed build's log, copied out of the shared O= directory (the next
    patch's build writes over it there); the original path if it cannot be."""
    try:
        shutil.copyfile(log, keep)
    except OSError:
        return log
    return str(keep)


def thread_info(series: PatchSeries) -> dict[str, Any]:
    """What a reply to the series needs: the cover letter's (or patch 1's)
    Message-ID and subject, the version and the length of the series."""
    first = series.patches[0] if series.patches else None
    return {
        "cover_message_id": series.cover_message_id,
        "cover_subject": series.cover_subject,
        "first_message_id": first.message_id if first else None,
        "first_subject": first.subject if first else None,
        "version": series.version,
        "total": series.total or len(series.patches),
    }


def _base_info(base: KernelBuild, series: PatchSeries, source: SourceSpec) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kernel_version": base.version,
        "source": source.describe(),
        "config_sha256": base.metadata.get("config_sha256"),
        "fragments": base.metadata.get("fragments"),
        "toolchain": base.metadata.get("toolchain"),
        "commit": base.metadata.get("commit"),
        "build_seconds": base.metadata.get("build_seconds"),
        "cached": base.cached,
    }
    if series.base_commit:
        info["series_base_commit"] = series.base_commit
        info["base_commit_check"] = check_base_commit(source, series.base_commit, base.version)
        ui.info("series", info["base_commit_check"])
    return info
