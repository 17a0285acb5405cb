from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ExitCode


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"  # the kernel under test misbehaved
    ERROR = "error"  # the harness, its input or its infrastructure failed
    SKIP = "skip"  # not applicable here (profile or kernel lacks a feature)
    XFAIL = "xfail"  # failed in a way the target declares as a known gap


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
            "duration_s": round(self.duration_s, 3),
            "transport": self.transport,
            "command": self.command,
            "status": self.status,
            "output": self.output,
        }


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

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "target": self.target,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
            "events": list(self.events),
            "steps": [s.to_json() for s in self.steps],
            "metrics": self.metrics,
            "console_log": self.console_log,
            "reproducer": self.reproducer,
        }


@dataclass(frozen=True)
class RunResult:
    harness_version: str
    qemu_version: str
    target: str
    kernel: dict[str, Any]
    image: dict[str, Any]
    results: tuple[ScenarioResult, ...]
    timings: dict[str, float]
    command: str
    boots: tuple[dict[str, Any], ...] = ()

    def counts(self) -> dict[str, int]:
        out = {str(v): 0 for v in Verdict}
        for r in self.results:
            out[str(r.verdict)] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "harness_version": self.harness_version,
            "qemu_version": self.qemu_version,
            "target": self.target,
            "kernel": self.kernel,
            "image": self.image,
            "command": self.command,
            "timings": self.timings,
            "boots": list(self.boots),
            "summary": self.counts(),
            "exit_code": int(exit_code(self.results)),
            "results": [r.to_json() for r in self.results],
        }


def exit_code(results: tuple[ScenarioResult, ...] | list[ScenarioResult]) -> ExitCode:
    """ERROR outranks FAIL: a run whose infrastructure broke proves nothing
    either way, so CI must look at it before trusting any verdict."""
    verdicts = {r.verdict for r in results}
    if Verdict.ERROR in verdicts:
        return ExitCode.ERROR
    if Verdict.FAIL in verdicts:
        return ExitCode.FAIL
    return ExitCode.OK
