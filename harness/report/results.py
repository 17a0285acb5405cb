"""The results contract: typed, frozen, versioned.

`RunResult` is what `results.json` holds. Writers serialise it with
`to_json`; every reader (report, compare, merge, the pytest plugin, the LAVA
importer) goes through `load_results`, which validates the file against the
shipped JSON Schema (`results.schema.json`) before building the dataclasses.
Nobody parses results.json by hand.

Schema version 1 already holds what later features put in it:
- several targets in one file (merged shards): `targets` is a list and every
  result names its target;
- both sides of a series-against-base run: `side` ("base" or "tip") on
  targets, boots and results (None for a plain run);
- per-case results inside a scenario (kselftest cases): `cases`;
- cells that never ran (an interrupted run): verdict `not-run` with a reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from harness.config.models import KnownFailure, Target
from harness.errors import ExitCode, HarnessError
from harness.report import verdicts
from harness.report.verdicts import Verdict as Verdict  # re-exported: the contract names it

SCHEMA_VERSION = 1
SCHEMA_FILE = "results.schema.json"


def _round(x: float) -> float:
    return round(x, 3)


@dataclass(frozen=True)
class CaseResult:
    """One case inside a scenario (e.g. one kselftest), with its own verdict."""

    name: str
    verdict: Verdict
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": str(self.verdict), "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaseResult:
        return cls(d["name"], Verdict(d["verdict"]), d.get("reason", ""))


@dataclass(frozen=True)
class StepResult:
    name: str
    verdict: Verdict
    reason: str = ""
    duration_s: float = 0.0
    transport: str | None = None
    command: str | None = None
    status: int | None = None
    output: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "duration_s": _round(self.duration_s),
            "transport": self.transport,
            "command": self.command,
            "status": self.status,
            "output": self.output,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StepResult:
        return cls(
            name=d["name"],
            verdict=Verdict(d["verdict"]),
            reason=d.get("reason", ""),
            duration_s=d.get("duration_s", 0.0),
            transport=d.get("transport"),
            command=d.get("command"),
            status=d.get("status"),
            output=d.get("output", ""),
        )


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    profile: str
    target: str
    verdict: Verdict
    reason: str
    duration_s: float
    events: tuple[dict[str, Any], ...] = ()
    steps: tuple[StepResult, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    console_log: str | None = None
    reproducer: str | None = None
    side: str | None = None  # "base" | "tip" in a series-against-base run
    boot: str | None = None  # id of the boot it ran on (see RunResult.boots)
    cases: tuple[CaseResult, ...] = ()
    # Evidence beyond kernel-log events, e.g. a hang's console tail, QMP
    # status and vCPU PCs.
    evidence: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1  # > 1 when an infrastructure ERROR was retried

    @property
    def cell(self) -> tuple[str, str | None, str, str]:
        return (self.target, self.side, self.profile, self.scenario)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "target": self.target,
            "side": self.side,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "duration_s": _round(self.duration_s),
            "boot": self.boot,
            "attempts": self.attempts,
            "events": list(self.events),
            "steps": [s.to_json() for s in self.steps],
            "cases": [c.to_json() for c in self.cases],
            "metrics": self.metrics,
            "evidence": self.evidence,
            "console_log": self.console_log,
            "reproducer": self.reproducer,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScenarioResult:
        return cls(
            scenario=d["scenario"],
            profile=d["profile"],
            target=d["target"],
            verdict=Verdict(d["verdict"]),
            reason=d["reason"],
            duration_s=d["duration_s"],
            events=tuple(d.get("events", ())),
            steps=tuple(StepResult.from_json(s) for s in d.get("steps", ())),
            metrics=dict(d.get("metrics", {})),
            console_log=d.get("console_log"),
            reproducer=d.get("reproducer"),
            side=d.get("side"),
            boot=d.get("boot"),
            cases=tuple(CaseResult.from_json(c) for c in d.get("cases", ())),
            evidence=dict(d.get("evidence", {})),
            attempts=d.get("attempts", 1),
        )


@dataclass(frozen=True)
class BootRecord:
    """One QEMU boot: where its files are and how it went."""

    id: str  # unique in the run, e.g. "mainline-7.3/smmuv3-nested-2"
    target: str
    profile: str
    dir: str
    console_log: str
    ready: bool
    verdict: Verdict
    reason: str
    boot_s: float
    side: str | None = None
    events: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "side": self.side,
            "profile": self.profile,
            "dir": self.dir,
            "console_log": self.console_log,
            "ready": self.ready,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "boot_s": _round(self.boot_s),
            "events": list(self.events),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BootRecord:
        return cls(
            id=d["id"],
            target=d["target"],
            profile=d["profile"],
            dir=d["dir"],
            console_log=d["console_log"],
            ready=d["ready"],
            verdict=Verdict(d["verdict"]),
            reason=d["reason"],
            boot_s=d["boot_s"],
            side=d.get("side"),
            events=tuple(d.get("events", ())),
        )


@dataclass(frozen=True)
class TargetRecord:
    """A kernel the run used: its build metadata and initramfs."""

    name: str
    kernel: dict[str, Any]
    image: dict[str, Any]
    side: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "side": self.side, "kernel": self.kernel, "image": self.image}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TargetRecord:
        return cls(d["name"], dict(d["kernel"]), dict(d["image"]), d.get("side"))


@dataclass(frozen=True)
class RunResult:
    harness_version: str
    qemu_version: str
    command: str
    targets: tuple[TargetRecord, ...]
    results: tuple[ScenarioResult, ...]
    timings: dict[str, float] = field(default_factory=dict)
    boots: tuple[BootRecord, ...] = ()
    complete: bool = True  # False while running, or when interrupted
    interrupted: str | None = None  # why the run ended early
    schema_version: int = SCHEMA_VERSION

    def counts(self) -> dict[str, int]:
        out = {str(v): 0 for v in Verdict}
        for r in self.results:
            out[str(r.verdict)] += 1
        return out

    def target(self, name: str, side: str | None = None) -> TargetRecord:
        for t in self.targets:
            if t.name == name and t.side == side:
                return t
        raise KeyError((name, side))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "harness_version": self.harness_version,
            "qemu_version": self.qemu_version,
            "command": self.command,
            "complete": self.complete,
            "interrupted": self.interrupted,
            "targets": [t.to_json() for t in self.targets],
            "timings": self.timings,
            "boots": [b.to_json() for b in self.boots],
            "summary": self.counts(),
            "exit_code": int(exit_code(self.results)),
            "results": [r.to_json() for r in self.results],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        return cls(
            harness_version=d["harness_version"],
            qemu_version=d["qemu_version"],
            command=d["command"],
            targets=tuple(TargetRecord.from_json(t) for t in d["targets"]),
            results=tuple(ScenarioResult.from_json(r) for r in d["results"]),
            timings=dict(d.get("timings", {})),
            boots=tuple(BootRecord.from_json(b) for b in d.get("boots", ())),
            complete=d["complete"],
            interrupted=d.get("interrupted"),
            schema_version=d["schema_version"],
        )


def exit_code(results: Iterable[ScenarioResult]) -> ExitCode:
    """The exit code of a run: the rule is harness.report.verdicts.exit_code."""
    return verdicts.exit_code(r.verdict for r in results)


# The constructors: the only places a ScenarioResult or a CaseResult is
# made (the recorder's not-run placeholders aside), so the policy of
# harness.report.verdicts applies to every result.


def scenario_result(
    scenario: str,
    target: Target,
    profile: str,
    verdict: Verdict,
    reason: str,
    *,
    side: str | None = None,
    boot: str | None = None,
    console_log: str | None = None,
    reproducer: str | None = None,
    duration_s: float = 0.0,
    events: Sequence[dict[str, Any]] = (),
    steps: tuple[StepResult, ...] = (),
    metrics: Mapping[str, float] | None = None,
    evidence: Mapping[str, object] | None = None,
    cases: tuple[CaseResult, ...] = (),
) -> ScenarioResult:
    """The one place a ScenarioResult is made, and so where a target's
    declared known gap applies, whoever produced the verdict (a step, the
    boot, the probe, a build of the series). The gap turns into an xfail
    only the failure it declares (its step, its reason); any other failure
    of the scenario stays a FAIL, and a pass is an XPASS (the declaration
    is stale)."""
    gap = target.known_gaps.get(scenario)
    if gap is not None and verdict == Verdict.FAIL:
        failed_step = steps[-1].name if steps and steps[-1].verdict == Verdict.FAIL else None
        if gap.covers(failed_step, reason):
            verdict = Verdict.XFAIL
            reason = f"known gap of {target.name}: {gap.why} ({reason})"
        else:
            reason = f"{reason} (not the known gap of {target.name}, which is {gap.describe()})"
    elif gap is not None and verdict == Verdict.PASS:
        verdict = Verdict.XPASS
        reason = (
            f"passed unexpectedly: {target.name} declares a known gap here ({gap.why});"
            " remove it from known_gaps"
        )
    return ScenarioResult(
        scenario=scenario,
        profile=profile,
        target=target.name,
        side=side,
        verdict=verdict,
        reason=reason,
        duration_s=duration_s,
        events=tuple(events),
        steps=steps,
        metrics=dict(metrics or {}),
        evidence=dict(evidence or {}),
        console_log=console_log,
        reproducer=reproducer,
        boot=boot,
        cases=cases,
    )


def planned_cell(scenario: str, target: str, profile: str, side: str | None = None) -> ScenarioResult:
    """A cell planned and not started yet: results.json lists every cell
    of a run from its start (an interrupted run's unfinished cells stay
    `not-run`, which proves nothing and exits 2)."""
    return ScenarioResult(scenario, profile, target, Verdict.NOT_RUN, "not started", 0.0, side=side)


def unknown_cell(
    scenario: str, target: str, profile: str, reason: str, side: str | None = None
) -> ScenarioResult:
    """A cell whose target or profile could not even be loaded: an ERROR (bad
    input), with no known gap to apply since there is no target."""
    return ScenarioResult(scenario, profile, target, Verdict.ERROR, reason, 0.0, side=side)


def case_result(
    name: str,
    verdict: Verdict,
    reason: str = "",
    known: KnownFailure | None = None,
    timed_out: bool = False,
    subtests: Sequence[CaseResult] = (),
) -> CaseResult:
    """The one place a CaseResult is made. `known` is the known-failure
    entry listing this case: a failure it covers (not a timeout) is an
    xfail with its reason, another failure stays a FAIL naming the entry,
    a pass is an XPASS (the list is stale). `subtests` are the case's own
    subtests' results: a failure (not a timeout) whose failing subtests
    are all known failures (xfails) and none a FAIL is an xfail too."""
    result = CaseResult(name, verdict, reason)
    if known is not None and verdict == Verdict.FAIL and not timed_out and known.covers(reason):
        result = CaseResult(name, Verdict.XFAIL, f"known failure: {known.reason} (got: {reason})")
    elif known is not None and verdict == Verdict.FAIL:
        result = CaseResult(
            name, verdict, f"{reason} (not its known failure /{known.failure.pattern}/, {known.where})"
        )
    elif known is not None and verdict == Verdict.PASS:
        result = CaseResult(name, Verdict.XPASS, f"listed as a known failure ({known.where}) but passed")
    known_subs = [s.name for s in subtests if s.verdict == Verdict.XFAIL]
    if (
        result.verdict == Verdict.FAIL
        and not timed_out
        and known_subs
        and not any(s.verdict == Verdict.FAIL for s in subtests)
    ):
        return CaseResult(
            name, Verdict.XFAIL, f"only known failures among its subtests: {', '.join(known_subs)}"
        )
    return result


def schema(package: str, name: str) -> dict[str, Any]:
    """A JSON Schema shipped in `package` (package data)."""
    return json.loads(resources.files(package).joinpath(name).read_text())  # type: ignore[no-any-return]


def results_schema() -> dict[str, Any]:
    return schema("harness.report", SCHEMA_FILE)


class ResultsError(HarnessError):
    """A results file that cannot be read, or does not follow the schema."""


def validate_versioned(
    data: object, origin: str, file_schema: dict[str, Any], version: int, error: type[HarnessError]
) -> None:
    """`data` is a file of this schema and version; else one line naming
    `origin` (and where in it), as `error`."""
    if isinstance(data, dict):
        found = data.get("schema_version")
        if found != version:
            raise error(
                f"{origin}: schema_version {found!r} is not supported (this harness reads version {version})"
            )
    try:
        jsonschema.validate(data, file_schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise error(f"{origin}: {where}: {exc.message}") from None


def load_versioned(
    path: Path, name: str, file_schema: dict[str, Any], version: int, error: type[HarnessError]
) -> tuple[Path, dict[str, Any]]:
    """Read a harness file (`path`, or `name` in the directory `path`) and
    check it against its schema: the file's path and its data, or one line
    naming the file, as `error`."""
    if path.is_dir():
        path = path / name
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    validate_versioned(data, str(path), file_schema, version, error)
    return path, data


def validate_results(data: object, origin: str = "results.json") -> None:
    validate_versioned(data, origin, results_schema(), SCHEMA_VERSION, ResultsError)


def load_results(path: Path) -> RunResult:
    """Read and validate a results.json (or a results directory)."""
    _, data = load_versioned(path, "results.json", results_schema(), SCHEMA_VERSION, ResultsError)
    return RunResult.from_json(data)
