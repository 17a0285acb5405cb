"""The boot-cell engine: the rules for the cells (scenarios) of one target x
profile, whoever drives them. `pkvm-harness run` (harness.pipeline), the
pytest plugin and `lava import` are adapters: they say how to boot, what to
run and where to write; the verdicts are decided here and in
harness.report.verdicts.

- `BootCells`: one boot's cells. The boot's own verdict when it did not
  come up, the capability probe (once, before the first scenario), skips,
  each scenario's run (under the cell watchdog for a live guest), which
  scenario answers for faults from boot (`faults_since`), and whether the
  rest need a fresh boot (`spent`).
- `Attempts`: ERROR retries; a FAIL is never retried.
- `ProfileCells`: the loop over boots: a fresh boot after a death or a
  harness bug, or for an ERROR to retry; a launch that fails; a boot that
  cannot be replaced (a LAVA job boots once); the BootRecord of each boot.

Everything goes through `GuestControl` (harness.scenario.runner), so a
replayed LAVA log is just another guest."""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from harness import ui, watchdog
from harness.config.models import Profile, Scenario, Target
from harness.errors import GuestFailure, HarnessError, MachineError
from harness.report import verdicts
from harness.report.results import BootRecord, ScenarioResult, Verdict

# A module, not its functions: looked up at call time, so that a test can
# replace running a scenario without a guest.
from harness.scenario import capabilities, runner
from harness.scenario.runner import GuestControl, ScenarioContext, scenario_result
from harness.session.guest import BootOutcome, Guest
from harness.session.liveness import describe_vcpus

# What the guest offers (the static claims and the guest's own answers).
ProbeGuest = Callable[[GuestControl], frozenset[str]]
RunScenario = Callable[[Scenario, GuestControl, ScenarioContext], ScenarioResult]


@dataclass(frozen=True)
class Boot:
    """One boot, as an adapter made it: where it is, its guest, how the boot
    went. `kill` (a live QEMU only) collects the guest's evidence and kills
    it: a cell that outlives its budget needs both; a replayed guest has no
    watchdog, since a replay cannot hang."""

    id: str  # unique in the run, e.g. "mainline-7.3/smmuv3-nested-2"
    target: Target
    profile: Profile
    side: str | None
    dir: str
    console_log: str
    guest: GuestControl
    outcome: BootOutcome
    kill: Callable[[], dict[str, object]] | None = None
    reproducer: str | None = None

    @classmethod
    def live(
        cls, id: str, target: Target, profile: Profile, side: str | None, run_dir: Path, guest: Guest
    ) -> Boot:
        """A boot of QEMU (harness.session.guest.booted_guest) in `run_dir`."""
        outcome = guest.boot_outcome
        assert outcome is not None

        def kill() -> dict[str, object]:
            evidence: dict[str, object] = dict(guest.evidence.collect(None))
            guest.machine.kill()
            return evidence

        return cls(
            id=id,
            target=target,
            profile=profile,
            side=side,
            dir=str(run_dir),
            console_log=str(guest.console_log),
            guest=guest,
            outcome=outcome,
            kill=kill,
            reproducer=str(run_dir / "reproduce-boot.sh"),
        )

    def context(self, caps: frozenset[str], first_on_boot: bool) -> ScenarioContext:
        """A scenario's context on this boot. The first scenario to run on a
        boot answers for the IOMMU faults since boot (faults_since 0);
        later ones for their own window only."""
        return ScenarioContext(
            target=self.target,
            profile=self.profile,
            capabilities=caps,
            console_log=self.console_log,
            reproducer=self.reproducer,
            faults_since=0 if first_on_boot else None,
            boot=self.id,
            side=self.side,
        )

    def record(self) -> BootRecord:
        """The boot as results.json keeps it: the one place a BootRecord is made."""
        return BootRecord(
            id=self.id,
            target=self.target.name,
            side=self.side,
            profile=self.profile.name,
            dir=self.dir,
            console_log=self.console_log,
            ready=self.outcome.ready,
            verdict=self.outcome.verdict,
            reason=self.outcome.reason,
            boot_s=self.outcome.seconds,
            events=tuple(e.to_json() for e in self.guest.watcher.events),
        )


class BootCells:
    """The scenarios of one boot, run one at a time."""

    def __init__(self, boot: Boot, probe: ProbeGuest, run: RunScenario | None = None) -> None:
        self.boot = boot
        self._probe = probe
        self._context = boot.context
        self._run_scenario = run
        self._caps: frozenset[str] | None = None
        self._probe_error: str | None = None
        self._first = True
        self._state_unknown = False
        self.last_run: str | None = None  # the last scenario that ran on it

    @property
    def failed(self) -> bool:
        """Every scenario on this boot gets the same verdict: it did not come
        up, or it could not be probed."""
        return not self.boot.outcome.ready or self._probe_error is not None

    @property
    def spent(self) -> bool:
        """The scenarios still to run need a fresh boot: the guest died
        (crash, hang), or a harness bug left its state unknown. Not a boot
        that failed: that gives the rest its verdict, it is not retried."""
        return not self.failed and (self.boot.guest.dead or self._state_unknown)

    def run(self, scenario: Scenario) -> ScenarioResult:
        """One cell. A live guest's cell runs under the cell watchdog
        (harness.watchdog): if it outlives its step timeouts plus a margin,
        control comes back here with the cell's evidence, the guest is
        killed (the next cell gets a fresh boot), and the cell is the
        harness's ERROR naming the wait it was stuck in, or the kernel's
        FAIL if it was still waiting on the guest."""
        if self.boot.kill is None:
            return self._run(scenario)
        prefix = ui.current_prefix()

        def cell() -> ScenarioResult:
            with ui.prefixed(prefix):
                return self._run(scenario)

        budget = watchdog.cell_budget(scenario)
        done = watchdog.run_within(cell, budget, name=f"cell:{scenario.name}")
        return self._overran(scenario, done) if isinstance(done, watchdog.Overrun) else done

    def _overran(self, scenario: Scenario, overrun: watchdog.Overrun) -> ScenarioResult:
        assert self.boot.kill is not None
        ui.info(
            "scenario", f"{scenario.name}: no result after {overrun.seconds:.0f}s, in {overrun.stuck_call}"
        )
        self._state_unknown = True
        # Evidence while QEMU still runs (QMP may be what is stuck: then the
        # vCPUs are missing, the console tail is there); killing it ends
        # every wait on its sockets.
        evidence = self.boot.kill()
        released = overrun.join(timeout=5)
        evidence["harness_threads"] = overrun.threads
        evidence["stuck_call"] = overrun.stuck_call
        limit = f"within {overrun.seconds:.0f}s (its step timeouts plus margin)"
        verdict, reason = verdicts.stuck_cell(
            overrun.harness_wait, limit, overrun.stuck_call, released, describe_vcpus(evidence)
        )
        ctx = self._context(self._caps or frozenset(), False)
        return scenario_result(scenario, ctx, verdict, reason, evidence=evidence)

    def _run(self, scenario: Scenario) -> ScenarioResult:
        outcome = self.boot.outcome
        unprobed = self._context(frozenset(), False)
        if not outcome.ready:
            events = [e for e in self.boot.guest.watcher.events if e.severity != "info"]
            evidence = dict(outcome.evidence or {})
            return scenario_result(
                scenario, unprobed, outcome.verdict, outcome.reason, events=events, evidence=evidence
            )
        if self._probe_error is not None:
            return scenario_result(scenario, unprobed, Verdict.ERROR, self._probe_error)
        if self._caps is None:
            try:
                self._caps = self._probe(self.boot.guest)
            except GuestFailure as exc:  # hung (or network dead) before the first scenario
                self._state_unknown = True
                self.last_run = "the capability probe"
                verdict, reason = verdicts.probe_failure(exc.reason, guest_failed=True)
                return scenario_result(scenario, unprobed, verdict, reason, evidence=exc.evidence)
            except HarnessError as exc:
                verdict, self._probe_error = verdicts.probe_failure(str(exc), guest_failed=False)
                return scenario_result(scenario, unprobed, verdict, self._probe_error)
        ctx = self._context(self._caps, self._first)
        unmet = capabilities.requirement_verdict(scenario, ctx)
        if unmet is not None:
            return scenario_result(scenario, ctx, *unmet)
        self._first = False
        self.last_run = scenario.name
        ui.info("scenario", f"{scenario.name} on {self.boot.profile.name} ...")
        try:
            run = self._run_scenario or runner.run_scenario
            return run(scenario, self.boot.guest, ctx)
        except Exception as exc:  # a harness bug: this cell is an ERROR, the rest still run
            if os.environ.get("PKVM_HARNESS_DEBUG"):
                traceback.print_exc()
            self._state_unknown = True
            return scenario_result(scenario, ctx, *verdicts.internal_error(exc))


class Attempts:
    """ERROR retries of the cells of one target x profile: an ERROR (the
    harness or the infrastructure failed) runs again on a fresh boot, up to
    `retries` times; a FAIL never does. The final result carries the number
    of attempts and the earlier ERRORs' reasons."""

    def __init__(self, retries: int, profile: str) -> None:
        self.retries = retries
        self.profile = profile
        self._earlier: dict[str, list[str]] = {}  # scenario -> reasons of its ERROR attempts

    def settle(self, result: ScenarioResult) -> ScenarioResult | None:
        """The result to record, or None: run it again on a fresh boot."""
        earlier = self._earlier.setdefault(result.scenario, [])
        where = f"{result.scenario} on {self.profile}"
        if result.verdict == Verdict.ERROR and len(earlier) < self.retries:
            earlier.append(result.reason)
            ui.info("scenario", f"{where}: ERROR {result.reason}; retrying on a fresh boot")
            return None
        if earlier:
            evidence = {**result.evidence, "earlier_attempts": list(earlier)}
            result = replace(result, attempts=len(earlier) + 1, evidence=evidence)
        # A pass's reason names what it skipped: "PASS (viommu skipped: ...)".
        why = f"({result.reason})" if result.verdict == Verdict.PASS and result.reason else result.reason
        ui.info("scenario", f"{where}: {result.verdict.upper()} {why}".rstrip())
        return result


class Booter(Protocol):
    """How an adapter boots: `boot(n)` enters the n-th boot of the profile
    (1, 2, ...) and yields it (QEMU is torn down when the block ends), or
    yields None when no further boot can be made (a LAVA job boots once:
    `no_reboot` says why). `cells(boot)` gives its BootCells (the probe and
    the contexts are the adapter's choice)."""

    no_reboot: str

    def boot(self, n: int) -> contextlib.AbstractContextManager[Boot | None]: ...

    def cells(self, boot: Boot) -> BootCells: ...

    def unbooted(self, scenario: Scenario) -> ScenarioContext:
        """The context of a cell with no boot (QEMU would not start)."""
        ...


class CpuGate:
    """At most `slots` vCPU-saturating cells (Scenario.saturates_vcpus) at
    once across the workers of one run. Under TCG each vCPU is a host
    thread: two guests that both keep their vCPUs busy on a 2-CPU host each
    get half of it, while the other worker's light cells (waits, single
    DMAs) would have left CPU idle. A worker whose heavy cell finds no free
    slot runs its light cells first; one with only heavy cells left waits
    for a slot."""

    def __init__(self, slots: int) -> None:
        self._free = threading.Semaphore(max(1, slots))

    def take(self) -> bool:
        return self._free.acquire(blocking=False)

    def wait(self, stop: Callable[[], bool]) -> bool:
        """A slot, or False once `stop()` (an interrupted run)."""
        while not stop():
            if self._free.acquire(timeout=0.5):
                return True
        return False

    def give_back(self) -> None:
        self._free.release()


class ProfileCells:
    """The cells of one target x profile across boots. The current boot is
    kept between calls of `run` (the pytest plugin asks one item at a time)
    until it is spent, an ERROR is to be retried, or `close()`."""

    def __init__(
        self,
        booter: Booter,
        retries: int,
        profile: str,
        on_boot: Callable[[BootRecord], None] = lambda record: None,
        gate: CpuGate | None = None,
    ) -> None:
        self.booter = booter
        self.gate = gate
        self.attempts = Attempts(retries, profile)
        self.profile = profile
        self.on_boot = on_boot
        self.boots = 0
        self._stack: contextlib.ExitStack | None = None
        self._cells: BootCells | None = None

    def run(
        self,
        scenarios: Sequence[Scenario],
        record: Callable[[ScenarioResult], None],
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Run `scenarios` in order (a vCPU-saturating one may wait for the
        gate's slot behind the light ones), each final result to `record`,
        until done or `stop()` (an interrupted run)."""
        pending = list(scenarios)
        while pending and not stop():
            try:
                cells = self._current()
            except MachineError as exc:  # QEMU would not start: no cell of this profile can run
                self.close()
                finals = [
                    self._settle(s, self.booter.unbooted(s), *verdicts.launch_failure(exc)) for s in pending
                ]
                for s, final in zip(list(pending), finals, strict=True):
                    if final is not None:
                        record(final)
                        pending.remove(s)
                continue
            if cells is None:  # no fresh boot: what is left never runs
                for s in pending:
                    why = f"the guest died in {self._died_in}: {self.booter.no_reboot}"
                    record(scenario_result(s, self.booter.unbooted(s), Verdict.NOT_RUN, why))
                return
            tried: set[str] = set()
            while not (cells.spent or stop()):  # else the rest get a fresh boot (or, interrupted, none)
                scenario, slot = self._next(cells, [s for s in pending if s.name not in tried], stop)
                if scenario is None:
                    break
                tried.add(scenario.name)
                try:
                    result = cells.run(scenario)
                finally:
                    if slot and self.gate is not None:
                        self.gate.give_back()
                final = self.attempts.settle(result)
                if final is not None:
                    record(final)
                    pending.remove(scenario)
                elif not cells.failed:
                    break  # an ERROR to retry ends this boot
                # A boot that failed gives every pending cell its verdict
                # (each ERROR retried on the next boot).
            if pending or (self._cells is not None and self._cells.spent):
                self.close()

    def _next(
        self, cells: BootCells, candidates: Sequence[Scenario], stop: Callable[[], bool]
    ) -> tuple[Scenario | None, bool]:
        """The next cell to run on this boot, in order, but a vCPU-saturating
        one only with a slot of the gate (else a light one after it goes
        first), and whether it holds a slot."""
        gate = self.gate
        if not candidates or gate is None or cells.failed:  # a failed boot runs nothing
            return (candidates[0] if candidates else None), False
        for scenario in candidates:
            if not scenario.saturates_vcpus:
                return scenario, False
            if gate.take():
                return scenario, True
        return (candidates[0], True) if gate.wait(stop) else (None, False)

    def _settle(
        self, scenario: Scenario, ctx: ScenarioContext, verdict: Verdict, reason: str
    ) -> ScenarioResult | None:
        return self.attempts.settle(scenario_result(scenario, ctx, verdict, reason))

    _died_in = "an earlier scenario"

    def _current(self) -> BootCells | None:
        if self._cells is not None:
            return self._cells
        self.boots += 1
        stack = contextlib.ExitStack()
        try:
            boot = stack.enter_context(self.booter.boot(self.boots))
        except BaseException:
            stack.close()
            raise
        if boot is None:
            stack.close()
            return None
        state = "ready" if boot.outcome.ready else boot.outcome.verdict.upper()
        ui.info("machine", f"{state} in {boot.outcome.seconds:.2f}s {boot.outcome.reason}")
        self._stack, self._cells = stack, self.booter.cells(boot)
        if self._cells.failed:
            self._shut_down()  # nothing will run on it; its outcome and events stay readable
        return self._cells

    def _shut_down(self) -> None:
        """QEMU down, the boot's record out; its cells stay (a failed boot
        still gives the scenarios asking after it its verdict)."""
        stack, self._stack = self._stack, None
        if stack is None or self._cells is None:
            return
        try:
            self.on_boot(self._cells.boot.record())
        finally:
            stack.close()

    def close(self) -> None:
        """Shut the current boot down (its BootRecord goes to `on_boot`);
        the next scenario gets a fresh boot."""
        if self._cells is not None and self._cells.last_run is not None:
            self._died_in = self._cells.last_run
        try:
            self._shut_down()
        finally:
            self._cells = None
