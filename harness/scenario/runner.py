"""Runs one scenario on one booted guest.

A step runs a command (serial or SSH) and/or checks kernel-log events in a
window (since boot, or since the step began). The first failing step fails
the scenario with a reason that names it. Harness faults become ERROR."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.config.models import (
    EventExpectation,
    KnownFailure,
    KselftestRun,
    Profile,
    Scenario,
    Step,
    Target,
    Transport,
)
from harness.config.registry import load_known_failures
from harness.errors import GuestFailure, HarnessError
from harness.logwatch import Event, LogWatcher
from harness.logwatch.decoders import describe_fault
from harness.logwatch.signatures import GROUPS, expand
from harness.report import results as contract
from harness.report.results import CaseResult, ScenarioResult, StepResult, Verdict
from harness.scenario import dma_fuzz, kselftest, ktap
from harness.scenario import variables as V
from harness.scenario.claims import lost_capabilities
from harness.session.base import Completed

MAX_EVENTS_PER_RESULT = 200


class GuestControl(Protocol):
    """What the runner needs of a booted guest: a protocol, so the runner
    does not depend on how a guest is made. harness.session.guest.Guest is
    the real one; unit tests and front-ends (pytest, avocado) may bring
    their own."""

    watcher: LogWatcher

    @property
    def dead(self) -> bool: ...

    def run(
        self,
        transport: Transport,
        command: str,
        timeout: float,
        hang_probe_s: float | None = None,
        hang_timeout_s: float | None = None,
    ) -> Completed: ...

    def sync_console(self, timeout: float = 15.0) -> None: ...

    def settle(self, quiet_s: float = 0.5, limit_s: float = 5.0) -> None: ...

    def events_since(self, line: int) -> list[Event]: ...

    def qmp(
        self, command: str, arguments: Mapping[str, object], wait_event: str | None, timeout: float
    ) -> dict[str, object] | None: ...


@dataclass(frozen=True)
class ScenarioContext:
    target: Target
    profile: Profile
    capabilities: frozenset[str]
    console_log: str | None = None
    reproducer: str | None = None
    # Console line from which an IOMMU fault that no step claims fails the
    # scenario: 0 for the first scenario on a boot (faults during boot are
    # its business), None for "since this scenario began".
    faults_since: int | None = None
    boot: str | None = None  # the boot's id, for the result
    side: str | None = None
    # The kernel selftests' known failures (None: kselftests/known-failures.yaml).
    known_failures: tuple[KnownFailure, ...] | None = None

    def base_variables(self) -> dict[str, str]:
        out = {
            f"profile.{k}": str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in self.profile.expect.items()
        }
        out["profile.name"] = self.profile.name
        return out


class _StepFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _StepSkipped(_StepFailed):
    """Every KTAP test of the step was a SKIP: the step did not test anything
    (e.g. the kernel refused a feature the helper names), so it is not a pass."""


_FAULT_SIGNATURES = frozenset(GROUPS["iommu-fault"])


@dataclass
class _State:
    variables: dict[str, str]
    start_line: int  # console line where the scenario began
    metrics: dict[str, float] = field(default_factory=dict)
    # IOMMU-fault expectations of the steps that ran, with the variables of
    # that moment: a fault they match is expected ("claimed"); any other
    # fails the scenario.
    claims: list[tuple[EventExpectation, dict[str, str]]] = field(default_factory=list)
    evidence: dict[str, object] = field(default_factory=dict)
    cases: list[CaseResult] = field(default_factory=list)
    known: list[dict[str, object]] = field(default_factory=list)


def _event_matches(e: Event, exp: EventExpectation, variables: Mapping[str, str]) -> bool:
    if e.signature != exp.signature:
        return False
    return all(k in e.fields and V.value_matches(e.fields[k], v, variables) for k, v in exp.fields.items())


def _describe(exp: EventExpectation, variables: Mapping[str, str]) -> str:
    if not exp.fields:
        return exp.signature
    fields = ", ".join(
        f"{k}={V.substitute(v, variables) if isinstance(v, str) else v}" for k, v in exp.fields.items()
    )
    return f"{exp.signature}({fields})"


def _ended_early(step: Step, result: Completed, guest: GuestControl) -> str | None:
    """Why the command did not finish (a FAIL's reason), or None."""
    if result.ended_by == "timeout":
        return f"timed out after {step.timeout_s:.0f}s"
    if result.ended_by in ("kernel-fatal", "eof"):
        fatal = guest.watcher.fatal
        if fatal is None:
            raise HarnessError(f"guest went away during step {step.name} (no kernel message)")
        return fatal.summary()
    return None


def _check_command(step: Step, result: Completed, guest: GuestControl) -> None:
    if (why := _ended_early(step, result, guest)) is not None:
        raise _StepFailed(why)
    if step.expect_ktap:
        _check_ktap(step, result)
    if step.expect_status is not None and result.status != step.expect_status:
        last = result.output.strip().splitlines()[-1:] or ["no output"]
        raise _StepFailed(f"exit status {result.status}, expected {step.expect_status}: {last[0][:200]}")
    if step.expect_output and not re.search(step.expect_output, result.output, re.MULTILINE):
        raise _StepFailed(f"output does not match /{step.expect_output}/")
    if step.forbid_output and (m := re.search(step.forbid_output, result.output, re.MULTILINE)):
        raise _StepFailed(f"output matches forbidden /{step.forbid_output}/: {m.group(0)[:120]}")


def _do_qmp(step: Step, guest: GuestControl, state: _State) -> None:
    assert step.qmp is not None
    args = {
        k: V.substitute(v, state.variables) if isinstance(v, str) else v
        for k, v in step.qmp.arguments.items()
    }
    event = guest.qmp(step.qmp.command, args, step.qmp.wait_event, step.timeout_s)
    if step.qmp.wait_event and event is None:
        raise _StepFailed(
            f"QMP {step.qmp.command}: no {step.qmp.wait_event} event within"
            f" {step.timeout_s:.0f}s (the guest did not release the device?)"
        )


def _check_ktap(step: Step, result: Completed) -> None:
    report = ktap.parse(result.output)
    if report.bail_out is not None:
        raise HarnessError(f"step {step.name}: helper bailed out: {report.bail_out}")
    if not report.results:
        raise _StepFailed(f"no KTAP results (exit status {result.status})")
    failures = report.failures
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more failed)" if len(failures) > 1 else ""
        raise _StepFailed(f"{first.name}: {first.reason or 'not ok'}{more}")
    if report.planned and len(report.results) < report.planned:
        raise _StepFailed(f"KTAP plan 1..{report.planned} but only {len(report.results)} results")
    if all(r.skipped for r in report.results):
        first = report.results[0]
        raise _StepSkipped(f"all {len(report.results)} KTAP tests skipped: {first.reason or first.name}")


def _run_kselftests(
    step: Step, run: KselftestRun, guest: GuestControl, state: _State, ctx: ScenarioContext
) -> tuple[str, Completed | None]:
    """Run a suite's binaries in the guest; every case goes to state.cases
    (known failures applied). Fails the step when a case FAILed."""
    command = kselftest.command(run)
    try:
        result = guest.run(step.transport, command, step.timeout_s, step.hang_probe_s, step.hang_timeout_s)
    except GuestFailure as exc:  # hung: no output to read, every case is unproven
        found = kselftest.cases("", run, exc.reason)
        _record_cases(found, run, state, ctx)
        raise
    if step.transport == "ssh":
        guest.sync_console()
    _save_log(ctx, step, result.output, state)
    cut = _ended_early(step, result, guest)
    try:
        found = kselftest.cases(result.output, run, cut)
    except ValueError as exc:  # the runner's "Bail out!"
        raise HarnessError(f"step {step.name}: kselftest runner bailed out: {exc}") from None
    results = _record_cases(found, run, state, ctx)
    if cut is not None:
        raise _StepFailed(cut)
    failed = [c for c in results if c.verdict == Verdict.FAIL]
    if failed:
        raise _StepFailed(
            f"kselftest {run.suite}: {len(failed)} of {len(results)} cases failed:"
            f" {kselftest.describe(results, Verdict.FAIL)}"
        )
    return command, result


def _record_cases(
    found: list[kselftest.Case], run: KselftestRun, state: _State, ctx: ScenarioContext
) -> list[CaseResult]:
    known = ctx.known_failures if ctx.known_failures is not None else load_known_failures()
    results, applied = kselftest.classify(found, known, run.suite, ctx.target.name, ctx.profile.name)
    state.cases += results
    state.known += applied
    return results


# The guest's uptime, as a fault_report_window_s step asks for it. Public:
# the LAVA importer answers it from what the job recorded for that step.
UPTIME_COMMAND = "cut -d' ' -f1 /proc/uptime"


def _wait_fault_report_window(
    step: Step, window_s: float, guest: GuestControl
) -> tuple[str | None, Completed | None]:
    """The kernel prints IOMMU fault reports rate-limited (5 s windows from
    the first report of a burst): the next report is sure to be printed
    once `window_s` has passed, in guest time, since the last one the
    console showed. Wait only what is left of that, instead of a blind
    sleep; the check that the report came is the next step's, unchanged."""
    guest.sync_console()
    faults = [e for e in guest.watcher.events if e.kind == "iommu-fault"]
    stamps = [e.timestamp for e in faults if e.timestamp is not None]
    if not stamps:
        return None, None
    uptime = guest.run(step.transport, UPTIME_COMMAND, 30)
    try:
        since_last = float(uptime.output.strip().splitlines()[-1]) - max(stamps)
    except (ValueError, IndexError):
        since_last = 0.0  # unknown: wait the whole window
    left = window_s - since_last
    if left <= 0:
        return None, uptime
    command = f"sleep {left:.2f}"
    return command, guest.run(step.transport, command, left + 30)


def _save_log(ctx: ScenarioContext, step: Step, output: str, state: _State) -> None:
    """The runner's whole output beside the console log (a step keeps only
    its tail)."""
    if ctx.console_log is None:
        return
    path = Path(ctx.console_log).parent / f"kselftest-{step.name}.log"
    path.write_text(output)
    logs = state.evidence.setdefault("kselftest_logs", [])
    assert isinstance(logs, list)
    logs.append(str(path))


def _check_events(
    step: Step, events: list[Event], scenario_forbid: set[str], variables: Mapping[str, str]
) -> None:
    for exp in step.expect_events:
        seen = sum(1 for e in events if _event_matches(e, exp, variables))
        if seen < exp.min_count:
            same_sig = [e.summary() for e in events if e.signature == exp.signature][:2]
            hint = f" (saw: {'; '.join(same_sig)})" if same_sig else ""
            raise _StepFailed(f"expected event {_describe(exp, variables)} not seen (x{exp.min_count}){hint}")
    forbidden = expand(step.forbid_events) | scenario_forbid
    for e in events:
        if e.signature in forbidden:
            raise _StepFailed(f"forbidden event {e.summary()}")


def _run_step(
    step: Step, guest: GuestControl, state: _State, scenario_forbid: set[str], ctx: ScenarioContext
) -> StepResult:
    start = time.monotonic()
    mark = guest.watcher.lines_seen
    result: Completed | None = None
    command = None
    try:
        if step.qmp is not None:
            _do_qmp(step, guest, state)
        if step.kselftest is not None:
            command, result = _run_kselftests(step, step.kselftest, guest, state, ctx)
        elif step.fault_report_window_s is not None:
            command, result = _wait_fault_report_window(step, step.fault_report_window_s, guest)
        elif step.dma_fuzz is not None:
            fuzz = dma_fuzz.run_step(step, step.dma_fuzz, guest, state.variables, ctx.console_log)
            command, result = fuzz.command, fuzz.result
            state.claims += [(e, dict(state.variables)) for e in fuzz.claims]
            dma_fuzz.merge_evidence(state.evidence, fuzz.evidence)
            if fuzz.reason is not None:
                raise _StepFailed(fuzz.reason)
        elif step.run is not None:
            command = V.substitute(step.run, state.variables)
            result = guest.run(
                step.transport, command, step.timeout_s, step.hang_probe_s, step.hang_timeout_s
            )
            if step.transport == "ssh":
                guest.sync_console()
            state.variables.update(V.captures(result.output))
            state.metrics.update(V.metrics(result.output))
            _check_command(step, result, guest)
        if step.expect_events and step.run is None:
            guest.settle()  # a report may trail the action that caused it
        window_start = {"boot": 0, "scenario": state.start_line, "step": mark}[step.events_since]
        state.claims += [
            (e, dict(state.variables)) for e in step.expect_events if e.signature in _FAULT_SIGNATURES
        ]
        _check_events(step, guest.events_since(window_start), scenario_forbid, state.variables)
    except GuestFailure as failed:  # hung, or its network died: the kernel's FAIL
        state.evidence.update(failed.evidence)
        return _step_result(step, Verdict.FAIL, f"step {step.name}: {failed.reason}", start, command, result)
    except _StepSkipped as skipped:
        return _step_result(step, Verdict.SKIP, f"step {step.name}: {skipped.reason}", start, command, result)
    except _StepFailed as failed:
        reason = f"{step.fail_reason}: {failed.reason}" if step.fail_reason else failed.reason
        return _step_result(step, Verdict.FAIL, f"step {step.name}: {reason}", start, command, result)
    except V.UnknownVariable as exc:
        raise HarnessError(f"step {step.name}: unknown variable ${{{exc.args[0]}}}") from exc
    return _step_result(step, Verdict.PASS, "", start, command, result)


def _step_result(
    step: Step, verdict: Verdict, reason: str, start: float, command: str | None, result: Completed | None
) -> StepResult:
    return StepResult(
        name=step.name,
        verdict=verdict,
        reason=reason,
        duration_s=time.monotonic() - start,
        transport=step.transport if command else None,
        command=command,
        status=result.status if result else None,
        output=result.output[-4000:] if result else "",
    )


def unclaimed_faults(
    events: list[Event], claims: list[tuple[EventExpectation, dict[str, str]]]
) -> list[Event]:
    """IOMMU faults that no step expected: a step claims only the faults
    from the device and address range its expectation declares."""
    return [
        e
        for e in events
        if e.signature in _FAULT_SIGNATURES and not any(_event_matches(e, exp, v) for exp, v in claims)
    ]


def _drivers(guest: GuestControl, bdfs: set[str]) -> dict[str, str]:
    """The guest's driver for each PCI device, asked now (a device may have
    been rebound to vfio-pci since boot); empty if the guest cannot answer."""
    if not bdfs or guest.dead:
        return {}
    script = "; ".join(
        f'd=$(readlink /sys/bus/pci/devices/{b}/driver); echo "{b}=${{d##*/}}"' for b in sorted(bdfs)
    )
    try:
        result = guest.run("serial", script, 15)
    except (HarnessError, GuestFailure):
        return {}
    return dict(ln.split("=", 1) for ln in result.output.splitlines() if "=" in ln)


def _fault_reason(faults: list[Event], guest: GuestControl) -> str:
    drivers = _drivers(guest, {str(e.fields["bdf"]) for e in faults if "bdf" in e.fields})
    shown = next((e for e in faults if e.complete), faults[0])  # all its lines are in
    first = describe_fault(shown.fields, shown.signature, drivers)
    devices = sorted({str(e.fields.get("bdf", "?")) for e in faults})
    more = f" ({len(faults)} faults from {', '.join(devices)})" if len(faults) > 1 else ""
    return f"unexpected IOMMU fault: {first}{more}"


def scenario_result(
    scenario: Scenario,
    ctx: ScenarioContext,
    verdict: Verdict,
    reason: str,
    duration_s: float = 0.0,
    events: list[Event] | tuple[dict[str, object], ...] = (),
    steps: tuple[StepResult, ...] = (),
    metrics: Mapping[str, float] | None = None,
    evidence: Mapping[str, object] | None = None,
    cases: tuple[CaseResult, ...] = (),
) -> ScenarioResult:
    """A ScenarioResult for `scenario` in `ctx`'s cell, through the one
    constructor (harness.report.results.scenario_result: known gaps, XPASS)."""
    return contract.scenario_result(
        scenario.name,
        ctx.target,
        ctx.profile.name,
        verdict,
        reason,
        side=ctx.side,
        boot=ctx.boot,
        console_log=ctx.console_log,
        reproducer=ctx.reproducer,
        duration_s=duration_s,
        events=[e.to_json() if isinstance(e, Event) else e for e in events[:MAX_EVENTS_PER_RESULT]],
        steps=steps,
        metrics=metrics,
        evidence=evidence,
        cases=cases,
    )


def run_scenario(scenario: Scenario, guest: GuestControl, ctx: ScenarioContext) -> ScenarioResult:
    start = time.monotonic()
    now = guest.watcher.lines_seen
    start_line = 0 if scenario.check_boot_log else now
    # IOMMU faults are answered for from now (or from boot by the first
    # scenario on a boot), even by a scenario that reads the boot log:
    # earlier scenarios' faults were theirs to claim.
    faults_since = now if ctx.faults_since is None else min(ctx.faults_since, now)
    state = _State(variables=ctx.base_variables(), start_line=start_line)
    forbid = expand(scenario.forbid_events)
    steps: list[StepResult] = []
    verdict, reason = Verdict.PASS, ""
    try:
        for step in scenario.steps:
            missing = sorted(step.requires - ctx.capabilities)
            lost = lost_capabilities(ctx.capabilities, missing)
            if lost:  # claimed by the target and profile: the kernel lost it
                verdict, reason = Verdict.FAIL, f"step {step.name}: {'; '.join(lost)}"
                steps.append(StepResult(step.name, verdict, reason))
                break
            if missing:
                steps.append(StepResult(step.name, Verdict.SKIP, f"needs {', '.join(missing)}"))
                continue
            if time.monotonic() - start > scenario.timeout_s:
                verdict, reason = Verdict.FAIL, f"scenario timed out after {scenario.timeout_s}s"
                break
            res = _run_step(step, guest, state, forbid, ctx)
            steps.append(res)
            if res.verdict == Verdict.FAIL:
                verdict, reason = Verdict.FAIL, res.reason
                break
        if not guest.dead:
            guest.settle()  # late messages belong to this scenario, not the next
        if verdict == Verdict.PASS:
            # Scenario-wide: also catches what came between or after steps.
            bad = next((e for e in guest.events_since(start_line) if e.signature in forbid), None)
            if bad is not None:
                verdict, reason = Verdict.FAIL, f"forbidden event {bad.summary()}"
        if verdict == Verdict.PASS:
            faults = unclaimed_faults(guest.events_since(faults_since), state.claims)
            if faults:
                verdict, reason = Verdict.FAIL, _fault_reason(faults, guest)
        if verdict == Verdict.PASS:
            verdict, reason = _skipped_steps_verdict(scenario, steps)
        if verdict == Verdict.PASS and state.cases:
            verdict, reason = _cases_verdict(state.cases)
    except GuestFailure as exc:  # from settle/sync between steps
        state.evidence.update(exc.evidence)
        verdict, reason = Verdict.FAIL, exc.reason
    except HarnessError as exc:
        verdict, reason = Verdict.ERROR, str(exc)
    if state.cases:
        state.evidence["kselftest_counts"] = kselftest.counts(state.cases)
        state.evidence["known_failures"] = state.known
    return scenario_result(
        scenario,
        ctx,
        verdict,
        reason,
        duration_s=time.monotonic() - start,
        events=guest.events_since(min(start_line, faults_since)),
        steps=tuple(steps),
        metrics=state.metrics,
        evidence=state.evidence,
        cases=tuple(state.cases),
    )


def _skipped_steps_verdict(scenario: Scenario, steps: list[StepResult]) -> tuple[Verdict, str]:
    """A scenario whose steps passed or skipped. Skipped steps are never
    silent: a PASS names them (its reason), and a scenario none of whose
    essential steps ran (or none at all, without essential steps) is a SKIP."""
    skipped = [s for s in steps if s.verdict == Verdict.SKIP]
    if not skipped:
        return Verdict.PASS, ""
    essential = {s.name for s in scenario.steps if s.essential}
    ran = {s.name for s in steps if s.verdict != Verdict.SKIP}
    if not ran or (essential and not essential & ran):
        what = "every essential step skipped" if essential and ran else "no step applies"
        return Verdict.SKIP, f"{what}: {skipped[0].reason.removeprefix(f'step {skipped[0].name}: ')}"
    return Verdict.PASS, "; ".join(
        f"{s.name} skipped: {s.reason.removeprefix(f'step {s.name}: ')}" for s in skipped
    )


def _cases_verdict(cases: list[CaseResult]) -> tuple[Verdict, str]:
    """A scenario whose steps passed, judged by its cases: a known failure
    that passed makes it XPASS (the list is stale and must be updated),
    known failures alone make it an xfail, all skipped a skip."""
    if any(c.verdict == Verdict.XPASS for c in cases):
        stale = kselftest.describe(cases, Verdict.XPASS)
        return Verdict.XPASS, f"listed as known failures but passed: {stale}"
    xfails = [c for c in cases if c.verdict == Verdict.XFAIL]
    if xfails:
        return Verdict.XFAIL, f"{len(xfails)} known failures: {kselftest.describe(cases, Verdict.XFAIL)}"
    if all(c.verdict == Verdict.SKIP for c in cases):
        return Verdict.SKIP, "every case skipped: " + kselftest.describe(cases, Verdict.SKIP, 1)
    return Verdict.PASS, ""
