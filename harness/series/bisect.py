"""`pkvm-harness series bisect`: the first patch of a series that breaks a
scenario, the way syzbot reports it.

1. The base must pass and the tip fail (else: exit 2, nothing to bisect).
2. Binary search over the patches. Each step builds the kernel at patch k
   (incrementally, cached by prefix) and runs the scenarios on one profile.
   A step whose kernel does not build or apply, or whose run ended in an
   ERROR, is skipped like `git bisect skip`: never called bad.
3. A step that fails, but with another signature than the tip (another
   scenario or step, or other event signatures; addresses do not count), is
   bad, flagged "fails differently".
4. The answer is confirmed: the failing run again on that patch and the
   passing run again on its parent (`confirm` times each). If they disagree,
   the result is an ERROR "flaky" with both outcomes.
With skips around the answer, the result is the range of candidates, as
`git bisect` gives it."""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import pipeline, ui
from harness.config.models import Profile, Scenario, Target
from harness.errors import ExitCode, HarnessError
from harness.kernel import build_kernel
from harness.kernel.series import PatchSeries, load_series
from harness.report import RunResult, ScenarioResult, Verdict, verdicts
from harness.report.writers import atomic_write
from harness.series.check import thread_info

_ADDRESS = re.compile(r"0x[0-9a-f]+|\b[0-9a-f]{8,16}\b")


@dataclass(frozen=True)
class StepOutcome:
    patch: int  # k: the kernel at patch k (0 = base)
    state: str  # "good" | "bad" | "skip"
    reason: str
    signature: tuple[str, ...] = ()
    role: str = "bisect"  # "base" | "tip" | "bisect" | "confirm"
    results_dir: str | None = None
    booted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "patch": self.patch,
            "role": self.role,
            "state": self.state,
            "reason": self.reason,
            "signature": list(self.signature),
            "results": self.results_dir,
        }


BISECT_SCHEMA_VERSION = 1  # bisect.json: bisect.schema.json


@dataclass
class BisectReport:
    series: str
    target: str
    profile: str
    scenarios: tuple[str, ...]
    steps: list[StepOutcome] = field(default_factory=list)
    first_bad: int | None = None
    candidates: tuple[int, ...] = ()
    verdict: str = "error"  # "found" | "ambiguous" | "error"
    reason: str = ""
    fails_differently: bool = False
    builds: int = 0

    def boots(self, role: str | None = None) -> int:
        return sum(1 for s in self.steps if s.booted and (role is None or s.role == role))

    @property
    def exit_code(self) -> ExitCode:
        return verdicts.bisect_exit_code(found=self.verdict in ("found", "ambiguous"))

    def to_json(self, series: PatchSeries) -> dict[str, Any]:
        def patch(k: int) -> dict[str, Any]:
            p = series.patches[k - 1]
            return {"number": k, "subject": p.subject, "message_id": p.message_id}

        return {
            "schema_version": BISECT_SCHEMA_VERSION,
            "series": self.series,
            "target": self.target,
            "profile": self.profile,
            "scenarios": list(self.scenarios),
            "verdict": self.verdict,
            "reason": self.reason,
            "first_bad": patch(self.first_bad) if self.first_bad else None,
            "candidates": [patch(k) for k in self.candidates],
            "fails_differently": self.fails_differently,
            "thread": thread_info(series),
            "counts": {
                "builds": self.builds,
                "boots": self.boots(),
                "bisection_boots": self.boots("bisect"),
                "base_and_tip_boots": self.boots("base") + self.boots("tip"),
                "confirmation_boots": self.boots("confirm"),
            },
            "steps": [s.to_json() for s in self.steps],
            "exit_code": int(self.exit_code),
        }


def failure_signature(result: RunResult) -> tuple[str, ...]:
    """What a failure looks like, addresses masked: scenario, the failing
    step, and the non-info event signatures of each failed result."""
    out = []
    for r in result.results:
        if r.verdict != Verdict.FAIL:
            continue
        step = next((s.name for s in r.steps if s.verdict == Verdict.FAIL), "")
        events = sorted({str(e.get("signature")) for e in r.events if e.get("severity") != "info"})
        out.append(f"{r.scenario}/{step}:{','.join(events)}")
    return tuple(sorted(out))


def _first_failure(results: tuple[ScenarioResult, ...]) -> str:
    bad = next((r for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)), None)
    return f"{bad.scenario}: {_ADDRESS.sub('…', bad.reason)}" if bad else "all passed"


class Bisector:
    def __init__(
        self, target: Target, profile: Profile, scenarios: tuple[Scenario, ...], output: Path, confirm: int
    ) -> None:
        if target.series is None:
            raise HarnessError("series bisect: no series given (--series)")
        self.target, self.profile, self.scenarios = target, profile, scenarios
        self.output, self.confirm = output, confirm
        self.series = load_series(target.series)
        self.report = BisectReport(
            self.series.spec.describe(), target.name, profile.name, tuple(s.name for s in scenarios)
        )
        self._built: set[int] = set()

    def test(self, k: int, role: str) -> StepOutcome:
        run_dir = self.output / "steps" / f"{role}-patch-{k:02d}-{len(self.report.steps)}"
        if k not in self._built:
            self._built.add(k)
            try:
                kernel = build_kernel(self.target, upto=k)
            except HarnessError as exc:
                if verdicts.failure_verdict(exc) != Verdict.FAIL:
                    raise
                return self._add(StepOutcome(k, "skip", f"does not build/apply: {exc}", role=role))
            if not kernel.cached:
                self.report.builds += 1
        request = pipeline.RunRequest(
            self.target, (self.profile,), self.scenarios, run_dir, upto=k, retries=1
        )
        try:
            result = pipeline.run(request)
        except HarnessError as exc:
            if verdicts.failure_verdict(exc) != Verdict.FAIL:
                raise
            return self._add(StepOutcome(k, "skip", f"does not build/apply: {exc}", role=role))
        state = verdicts.bisect_state(r.verdict for r in result.results)
        sig = failure_signature(result)
        return self._add(StepOutcome(k, state, _first_failure(result.results), sig, role, str(run_dir), True))

    def _add(self, outcome: StepOutcome) -> StepOutcome:
        self.report.steps.append(outcome)
        ui.info("bisect", f"patch {outcome.patch} ({outcome.role}): {outcome.state.upper()} {outcome.reason}")
        self._write()
        return outcome

    def _write(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.output / "bisect.json", json.dumps(self.report.to_json(self.series), indent=2) + "\n"
        )

    def run(self) -> BisectReport:
        n = len(self.series.patches)
        rep = self.report
        base = self.test(0, "base")
        tip = self.test(n, "tip")
        if base.state != "good" or tip.state != "bad":
            rep.verdict = "error"
            rep.reason = (
                f"nothing to bisect: the base is {base.state} ({base.reason}) and the tip is"
                f" {tip.state} ({tip.reason}); bisect needs a passing base and a failing tip"
            )
            self._write()
            return rep
        good, bad = 0, n
        skipped: set[int] = set()
        while True:
            middle = [k for k in range(good + 1, bad) if k not in skipped]
            if not middle:
                break
            centre = (good + bad) / 2
            k = min(middle, key=lambda m: (abs(m - centre), m))
            out = self.test(k, "bisect")
            if out.state == "good":
                good = k
            elif out.state == "bad":
                bad = k
                if out.signature != tip.signature:
                    rep.fails_differently = True
            else:
                skipped.add(k)
        rep.candidates = tuple(range(good + 1, bad + 1))
        if len(rep.candidates) > 1:
            rep.verdict = "ambiguous"
            rep.reason = (
                f"the first bad patch is one of {', '.join(map(str, rep.candidates))} (skipped: untestable)"
            )
            self._write()
            return rep
        rep.first_bad = bad
        self._confirm(good, bad)
        self._write()
        self._reproducer()
        return rep

    def _confirm(self, good: int, bad: int) -> None:
        rep = self.report
        outcomes = []
        for _ in range(self.confirm):
            outcomes.append(self.test(bad, "confirm"))
            outcomes.append(self.test(good, "confirm"))
        flaky = [o for o in outcomes if o.state != ("bad" if o.patch == bad else "good")]
        last_bad = next(s for s in reversed(rep.steps) if s.patch == bad and s.state == "bad")
        if flaky:
            rep.verdict = "error"
            rep.reason = "flaky: " + "; ".join(f"patch {o.patch} was {o.state} ({o.reason})" for o in flaky)
            return
        rep.verdict = "found"
        p = self.series.patches[bad - 1]
        diff = " (fails differently from the tip)" if rep.fails_differently else ""
        rep.reason = (
            f"first bad patch {bad}/{len(self.series.patches)} '{p.subject}': {last_bad.reason}{diff}"
        )

    def _reproducer(self) -> None:
        rep = self.report
        assert rep.first_bad is not None and self.target.series is not None
        argv = ["pkvm-harness", "run", *self.target.cli_args(rep.first_bad), "--profile", self.profile.name]
        argv += ["--output", str(self.output / "reproduce"), *rep.scenarios]
        path = self.output / "reproduce.sh"
        path.write_text(
            "#!/bin/sh\n# Build exactly the first bad prefix and run the failing scenarios.\n"
            + shlex.join(argv)
            + "\n"
        )
        path.chmod(0o755)


def max_bisection_boots(n: int) -> int:
    """The bound the issue sets: ceil(log2 N) + 1, base/tip/confirm excluded."""
    return math.ceil(math.log2(n)) + 1 if n > 1 else 1
