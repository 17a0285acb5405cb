"""The run pipeline: config -> kernel -> image -> machine -> session ->
scenario -> report. Each stage's output is a frozen value handed to the next.

One boot per profile; a scenario that kills the guest gets the next
scenarios a fresh boot."""

from __future__ import annotations

import concurrent.futures
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness import __version__, ui, watchdog
from harness.config.models import Profile, Scenario, Target
from harness.errors import GuestFailure, HarnessError, Interrupted, MachineError
from harness.image import GuestImage, build_image
from harness.kernel import KernelBuild, build_kernel
from harness.kernel.selftests import build_selftests
from harness.kernel.symbols import SymbolTable
from harness.machine import qemu_version
from harness.machine.qemu import kill_all_machines
from harness.report import BootRecord, RunRecorder, RunResult, ScenarioResult, TargetRecord, Verdict, verdicts
from harness.report import results as contract
from harness.report.recorder import Cell

# Modules, not their functions: looked up at call time, so that a test (and
# the pytest plugin's own tests) can replace probing and running.
from harness.scenario import capabilities, runner
from harness.scenario.capabilities import CONFIG_TOKENS, KSELFTEST_CAP
from harness.scenario.runner import ScenarioContext, scenario_result
from harness.session.guest import Guest, booted_guest
from harness.session.liveness import LivenessPolicy, describe_vcpus


@dataclass(frozen=True)
class Artifacts:
    kernel: KernelBuild
    image: GuestImage
    seconds: float


def build_all(
    target: Target, jobs: int | None = None, upto: int | None = None, suites: Sequence[SuiteNeed] = ()
) -> Artifacts:
    """The kernel (at patch `upto` of the target's series, all when None)
    and the initramfs, with the kernel selftest `suites` packed in (those
    that a scenario able to run on this kernel needs)."""
    start = time.monotonic()
    kernel = build_kernel(target, jobs=jobs, upto=upto)
    ui.info("kernel", f"{target.name}: {kernel.version} {'(cached)' if kernel.cached else ''} {kernel.image}")
    image = build_image()
    ui.info(
        "image",
        f"initramfs {image.key[:16]} {'(cached)' if image.cached else ''}"
        f" helpers: {', '.join(image.helpers) or 'none'}",
    )
    artifacts = Artifacts(kernel, image, time.monotonic() - start)
    return with_selftests(artifacts, target, upto, suites, jobs)


@dataclass(frozen=True)
class SuiteNeed:
    """A kernel selftest suite a scenario needs (`requires: [kselftest:kvm]`),
    with the build options (config tokens) the same scenario requires:
    on a kernel without them the scenario skips, so the suite is not built
    for it (kselftest-iommufd on a kernel without CONFIG_IOMMUFD_TEST)."""

    suite: str
    config: frozenset[str]


def selftest_suites(scenarios: Iterable[Scenario]) -> tuple[SuiteNeed, ...]:
    needs = {
        SuiteNeed(req.removeprefix(KSELFTEST_CAP), frozenset(s.requires & CONFIG_TOKENS))
        for s in scenarios
        for req in s.requires
        if req.startswith(KSELFTEST_CAP)
    }
    return tuple(sorted(needs, key=lambda n: (n.suite, sorted(n.config))))


def with_selftests(
    artifacts: Artifacts,
    target: Target,
    upto: int | None,
    needs: Sequence[SuiteNeed],
    jobs: int | None = None,
) -> Artifacts:
    """`artifacts` whose image also carries the selftest suites `needs` asks
    for (built from the target's own source at the same series prefix;
    cached)."""
    config = capabilities.build_capabilities(artifacts.kernel, frozenset()) if needs else set()
    suites = sorted({n.suite for n in needs if n.config <= config})
    missing = [s for s in suites if s not in artifacts.image.metadata.get("kselftests", {})]
    if not missing:
        return artifacts
    start = time.monotonic()
    builds = [build_selftests(target, suite, upto=upto, jobs=jobs) for suite in missing]
    for b in builds:
        state = "(cached)" if b.cached else f"built in {b.metadata.get('build_seconds')}s"
        ui.info("kselftest", f"{target.name}: {b.suite}: {len(b.tests)} binaries {state}")
    image = artifacts.image.with_selftests(builds)
    return replace(artifacts, image=image, seconds=artifacts.seconds + time.monotonic() - start)


@dataclass(frozen=True)
class RunRequest:
    target: Target
    profiles: tuple[Profile, ...]
    scenarios: tuple[Scenario, ...]
    output: Path
    boot_timeout: float = 120.0
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    side: str | None = None  # "base" | "tip" when a series is run against its base
    # An ERROR (the harness or infrastructure failed) is retried this many
    # times on a fresh boot; a FAIL never is.
    retries: int = 1
    upto: int | None = None  # the kernel at patch `upto` of the series (0: the base)

    def cells(self) -> list[Cell]:
        return [(self.target.name, self.side, p.name, s.name) for p in self.profiles for s in self.scenarios]


# The context of a scenario on a boot, from its capabilities and whether it
# is the first scenario to run there (boot-time faults are its business).
ContextFactory = Callable[[frozenset[str], bool], ScenarioContext]


class BootedCells:
    """The scenarios of one boot of a target x profile, run one at a time:
    the boot's own verdict when it did not come up, the capability probe
    (once, before the first scenario), skips, and each scenario's run.
    `pkvm-harness run` and the pytest plugin both drive it, so a cell's
    result follows the same rules in both."""

    def __init__(self, guest: Guest, kernel: KernelBuild, profile: Profile, context: ContextFactory) -> None:
        self.guest = guest
        self.kernel = kernel
        self.profile = profile
        self._context = context
        self._caps: frozenset[str] | None = None
        self._probe_error: str | None = None
        self._first = True
        self._state_unknown = False

    @property
    def failed(self) -> bool:
        """Every scenario on this boot gets the same verdict: it did not come
        up, or it could not be probed."""
        outcome = self.guest.boot_outcome
        return outcome is None or not outcome.ready or self._probe_error is not None

    @property
    def spent(self) -> bool:
        """The scenarios still to run need a fresh boot: the guest died
        (crash, hang), or a harness bug left its state unknown. Not a boot
        that failed: that gives the rest its verdict, it is not retried."""
        return not self.failed and (self.guest.dead or self._state_unknown)

    def run(self, scenario: Scenario) -> ScenarioResult:
        """One cell, under the cell watchdog (harness.watchdog): if it
        outlives its step timeouts plus a margin, control comes back here
        with the cell's evidence, the guest is killed (the next cell gets a
        fresh boot), and the cell is the harness's ERROR naming the wait it
        was stuck in, or the kernel's FAIL if it was still waiting on the
        guest."""
        prefix = ui.current_prefix()

        def cell() -> ScenarioResult:
            with ui.prefixed(prefix):
                return self._run(scenario)

        budget = watchdog.cell_budget(scenario)
        done = watchdog.run_within(cell, budget, name=f"cell:{scenario.name}")
        return self._overran(scenario, done) if isinstance(done, watchdog.Overrun) else done

    def _overran(self, scenario: Scenario, overrun: watchdog.Overrun) -> ScenarioResult:
        where = f"no result after {overrun.seconds:.0f}s, in {overrun.stuck_call}"
        ui.info("scenario", f"{scenario.name}: {where}")
        self._state_unknown = True
        # Evidence while QEMU still runs (QMP may be what is stuck: then the
        # vCPUs are missing, the console tail is there); then kill it, which
        # ends every wait on its sockets.
        evidence: dict[str, object] = dict(self.guest.evidence.collect(None))
        self.guest.machine.kill()
        released = overrun.join(timeout=5)
        evidence["harness_threads"] = overrun.threads
        evidence["stuck_call"] = overrun.stuck_call
        ctx = self._context(self._caps or frozenset(), False)
        limit = f"within {overrun.seconds:.0f}s (its step timeouts plus margin)"
        if overrun.harness_wait:
            after = "" if released else "; the call did not return when QEMU was killed"
            reason = f"harness stuck: no result {limit}, waiting in {overrun.stuck_call}{after}"
            return scenario_result(scenario, ctx, Verdict.ERROR, reason, evidence=evidence)
        reason = f"hang: no result {limit}, still waiting on the guest; {describe_vcpus(evidence)}"
        return scenario_result(scenario, ctx, Verdict.FAIL, reason, evidence=evidence)

    def _run(self, scenario: Scenario) -> ScenarioResult:
        outcome = self.guest.boot_outcome
        assert outcome is not None
        unprobed = self._context(frozenset(), False)
        if not outcome.ready:
            verdict = Verdict.FAIL if outcome.verdict == "fail" else Verdict.ERROR
            events = [e for e in self.guest.watcher.events if e.severity != "info"]
            evidence = dict(outcome.evidence or {})
            reason = outcome.reason
            return scenario_result(scenario, unprobed, verdict, reason, events=events, evidence=evidence)
        if self._probe_error is not None:
            return scenario_result(scenario, unprobed, Verdict.ERROR, self._probe_error)
        if self._caps is None:
            try:
                self._caps = capabilities.probe(self.guest, self.kernel, self.profile.features)
            except GuestFailure as exc:  # hung (or network dead) before the first scenario
                self._state_unknown = True
                reason = f"capability probe: {exc.reason}"
                return scenario_result(scenario, unprobed, Verdict.FAIL, reason, evidence=exc.evidence)
            except HarnessError as exc:
                self._probe_error = f"capability probe: {exc}"
                return scenario_result(scenario, unprobed, Verdict.ERROR, self._probe_error)
        ctx = self._context(self._caps, self._first)
        unmet = capabilities.requirement_verdict(scenario, ctx)
        if unmet is not None:
            return scenario_result(scenario, ctx, *unmet)
        self._first = False
        ui.info("scenario", f"{scenario.name} on {self.profile.name} ...")
        try:
            return runner.run_scenario(scenario, self.guest, ctx)
        except Exception as exc:  # a harness bug: this cell is an ERROR, the rest still run
            if os.environ.get("PKVM_HARNESS_DEBUG"):
                traceback.print_exc()
            self._state_unknown = True
            reason = f"internal error: {type(exc).__name__}: {exc}"
            return scenario_result(scenario, ctx, Verdict.ERROR, reason)


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


class _ProfileRun:
    """All scenarios of one target x profile: boot, then run the scenarios
    still pending on it (BootedCells) until done; a guest that died (crash,
    hang) is replaced by a fresh boot for the scenarios still to run. Every
    finished cell goes to the recorder at once."""

    def __init__(
        self, request: RunRequest, artifacts: Artifacts, profile: Profile, recorder: RunRecorder
    ) -> None:
        self.request = request
        self.artifacts = artifacts
        self.profile = profile
        self.recorder = recorder
        self.boots = 0
        self.symbols = SymbolTable.from_system_map(artifacts.kernel.system_map)
        self.by_name = {s.name: s for s in request.scenarios}
        self.attempts = Attempts(request.retries, profile.name)

    @property
    def _boot_name(self) -> str:
        side = f"{self.request.side}-" if self.request.side else ""
        return f"{side}{self.profile.name}-{self.boots}"

    @property
    def _boot_dir(self) -> Path:
        # Per target: a matrix runs several targets on the same profiles.
        return self.request.output / "boots" / self.request.target.name / self._boot_name

    def _ctx(self, guest: Guest | None, caps: frozenset[str], first_on_boot: bool) -> ScenarioContext:
        run_dir = self._boot_dir
        return ScenarioContext(
            target=self.request.target,
            profile=self.profile,
            capabilities=caps,
            console_log=str(guest.console_log) if guest else None,
            reproducer=str(run_dir / "reproduce-boot.sh"),
            faults_since=0 if first_on_boot else None,
            boot=f"{self.request.target.name}/{self._boot_name}",
            side=self.request.side,
        )

    def _record_boot(self, guest: Guest, run_dir: Path) -> None:
        outcome = guest.boot_outcome
        assert outcome is not None
        self.recorder.add_boot(
            BootRecord(
                id=f"{self.request.target.name}/{self._boot_name}",
                target=self.request.target.name,
                side=self.request.side,
                profile=self.profile.name,
                dir=str(run_dir),
                console_log=str(guest.console_log),
                ready=outcome.ready,
                verdict=Verdict(outcome.verdict),
                reason=outcome.reason,
                boot_s=outcome.seconds,
                events=tuple(e.to_json() for e in guest.watcher.events),
            )
        )

    def run(self) -> None:
        t = self.request.target.name
        while not self.recorder.frozen and (
            pending := self.recorder.pending(t, self.request.side, self.profile.name)
        ):
            self.boots += 1
            run_dir = self._boot_dir
            ui.info("machine", f"booting {t} on {self.profile.name} ({self._boot_name})")
            try:
                with booted_guest(
                    self.profile,
                    self.artifacts.kernel.image,
                    self.artifacts.image,
                    run_dir,
                    self.request.target.cmdline,
                    self.request.boot_timeout,
                    self.request.liveness,
                    self.symbols.lookup,
                ) as guest:
                    try:
                        self._on_guest(guest, [self.by_name[n] for n in pending])
                    finally:
                        self._record_boot(guest, run_dir)
            except MachineError as exc:  # QEMU would not start: no cell of this profile can run
                recorded = [self._record(self.by_name[n], Verdict.ERROR, f"machine: {exc}") for n in pending]
                if all(recorded):
                    return  # no retries left

    def _on_guest(self, guest: Guest, pending: list[Scenario]) -> None:
        outcome = guest.boot_outcome
        assert outcome is not None
        state = "ready" if outcome.ready else outcome.verdict.upper()
        ui.info("machine", f"{state} in {outcome.seconds:.2f}s {outcome.reason}")
        cells = BootedCells(
            guest, self.artifacts.kernel, self.profile, lambda caps, first: self._ctx(guest, caps, first)
        )
        for scenario in pending:
            if cells.spent or self.recorder.frozen:
                return  # the rest get a fresh boot (or, interrupted, none)
            # A boot that failed gives every pending cell its verdict (each
            # ERROR retried on the next boot); otherwise an ERROR to retry
            # ends this boot.
            if not self._finish(cells.run(scenario)) and not cells.failed:
                return

    def _record(self, scenario: Scenario, verdict: Verdict, reason: str) -> bool:
        ctx = self._ctx(None, frozenset(), first_on_boot=False)
        return self._finish(scenario_result(scenario, ctx, verdict, reason))

    def _finish(self, result: ScenarioResult) -> bool:
        """Record a finished cell, unless it is an ERROR with retries left:
        then it stays pending (False) and runs again on a fresh boot."""
        final = self.attempts.settle(result)
        if final is None:
            return False
        self.recorder.record(final)
        return True


def _target_record(artifacts: Artifacts, side: str | None) -> TargetRecord:
    return TargetRecord(
        name=artifacts.kernel.target,
        side=side,
        kernel={
            **artifacts.kernel.metadata,
            "image": str(artifacts.kernel.image),
            "cached": artifacts.kernel.cached,
        },
        image={**artifacts.image.metadata, "key": artifacts.image.key, "cached": artifacts.image.cached},
    )


def run(request: RunRequest, jobs: int = 1) -> RunResult:
    """Build, then run every cell, `jobs` profiles at a time; results.json
    is valid from the start (planned cells are `not-run`) and rewritten
    after every cell."""
    result = run_units([request], request.output, jobs)
    _write_reproducer(request, result)
    return result


def run_with(request: RunRequest, artifacts: Artifacts) -> RunResult:
    """`run` on a kernel and image already built (series check, bisect)."""
    result = run_units([request], request.output, built={_build_id(request): artifacts})
    _write_reproducer(request, result)
    return result


BuildId = tuple[str, str | None, int | None, str]


def _build_id(request: RunRequest) -> BuildId:
    series = request.target.series.describe() if request.target.series else ""
    return (request.target.name, request.side, request.upto, series)


def run_units(
    requests: Sequence[RunRequest],
    output: Path,
    jobs: int = 1,
    built: Mapping[BuildId, Artifacts] | None = None,
) -> RunResult:
    """Several requests into one results.json: a series' base and tip
    (`side`), or a matrix's target x profile groups. Each distinct kernel is
    built once, first; then the target x profile units run, `jobs` at a time
    (each with its own boot directory, ports, QEMU and log prefix)."""
    recorder = RunRecorder(output, __version__, qemu_version(), shlex.join(["pkvm-harness", *sys.argv[1:]]))
    for request in requests:
        recorder.plan(request.cells())
    progress = ui.Progress("cells", len(recorder.snapshot().results))
    recorder.on_record = progress.update
    timings: dict[str, float] = {}
    start = time.monotonic()
    try:
        artifacts = _build_each(requests, recorder, timings, dict(built or {}))
        units = [
            (request, artifacts[_build_id(request)], profile)
            for request in requests
            if _build_id(request) in artifacts
            for profile in request.profiles
        ]
        _run_pool(units, recorder, jobs)
    except KeyboardInterrupt as exc:
        why = f"interrupted by {exc.name}" if isinstance(exc, Interrupted) else "interrupted"
        recorder.freeze()
        kill_all_machines()
        recorder.fill_pending(Verdict.NOT_RUN, why)
        recorder.finish(timings, why)
        raise
    except HarnessError as exc:
        recorder.finish(timings, str(exc))
        raise
    except Exception as exc:
        why = f"internal error: {type(exc).__name__}: {exc}"
        recorder.fill_pending(Verdict.ERROR, why)
        recorder.finish(timings, why)
        raise
    finally:
        progress.done()
    timings["boot_and_test_s"] = round(time.monotonic() - start - timings.get("build_s", 0.0), 3)
    return recorder.finish(timings)


def _build_each(
    requests: Sequence[RunRequest],
    recorder: RunRecorder,
    timings: dict[str, float],
    built: dict[BuildId, Artifacts],
) -> dict[BuildId, Artifacts]:
    """Every distinct kernel, once. A kernel that cannot be built makes its
    cells ERRORs (bad input) or FAILs (a series' own defect); the others run."""
    failed: set[BuildId] = set()
    distinct = {_build_id(r) for r in requests}
    suites: dict[BuildId, tuple[SuiteNeed, ...]] = {}
    for r in requests:
        suites[_build_id(r)] = (*suites.get(_build_id(r), ()), *selftest_suites(r.scenarios))
    for request in requests:
        key = _build_id(request)
        if key in failed:
            continue
        try:
            if key in built:
                built[key] = with_selftests(built[key], request.target, request.upto, suites[key])
                if not any(
                    t.name == request.target.name and t.side == request.side for t in recorder.targets()
                ):
                    recorder.add_target(_target_record(built[key], request.side))
                continue
            built[key] = build_all(request.target, upto=request.upto, suites=suites[key])
        except HarnessError as exc:
            failed.add(key)
            verdict, why = verdicts.build_failure(exc, request.side)
            if verdict == Verdict.ERROR and len(distinct) == 1:
                recorder.fill_pending(verdict, why)
                raise  # the one kernel of this run: a one-line error, exit 2
            for r in requests:
                if _build_id(r) == key:
                    for _, cell_side, profile_name, scenario in r.cells():
                        recorder.record(
                            contract.scenario_result(
                                scenario, r.target, profile_name, verdict, why, side=cell_side
                            )
                        )
            continue
        recorder.add_target(_target_record(built[key], request.side))
        timings["build_s"] = round(timings.get("build_s", 0.0) + built[key].seconds, 3)
    return built


def _run_pool(units: list[tuple[RunRequest, Artifacts, Profile]], recorder: RunRecorder, jobs: int) -> None:
    side_by_side = jobs > 1 and len(units) > 1  # only then do log lines need a unit prefix

    def one(unit: tuple[RunRequest, Artifacts, Profile]) -> None:
        request, artifacts, profile = unit
        side = f"{request.side}:" if request.side else ""
        with ui.prefixed(f"{request.target.name}/{side}{profile.name}" if side_by_side else None):
            _ProfileRun(request, artifacts, profile, recorder).run()

    if not side_by_side:
        for unit in units:
            one(unit)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="worker") as pool:
        futures = [pool.submit(one, unit) for unit in units]
        try:
            # Poll, so that SIGINT (raised in this thread) is seen at once.
            while not all(f.done() for f in futures):
                concurrent.futures.wait(futures, timeout=0.5)
        except BaseException:
            recorder.freeze()
            for f in futures:
                f.cancel()
            kill_all_machines()  # the workers' steps end at once, on EOF
            raise
        for f in futures:
            f.result()  # a worker's own exception (a harness bug) surfaces here


def _write_reproducer(request: RunRequest, run_result: RunResult) -> None:
    lines = ["#!/bin/sh", "# Re-run exactly what failed in this run.", "set -e"]
    failed = [r for r in run_result.results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    rerun = request.output / "rerun"
    for r in failed:
        argv = [
            "pkvm-harness",
            "run",
            *request.target.cli_args(request.upto),
            "--profile",
            r.profile,
            "--output",
            str(rerun),
            r.scenario,
        ]
        lines.append(shlex.join(argv))
    if not failed:
        lines.append("# nothing failed")
    path = request.output / "reproduce.sh"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
