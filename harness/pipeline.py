"""The run pipeline: config -> kernel -> image -> machine -> session ->
scenario -> report. Each stage's output is a frozen value handed to the next.

One boot per profile; a scenario that kills the guest gets the next
scenarios a fresh boot."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness import __version__, ui
from harness.config.models import Profile, Scenario, Target
from harness.errors import HarnessError, Interrupted
from harness.image import GuestImage, build_image
from harness.kernel import KernelBuild, build_kernel
from harness.kernel.selftests import build_selftests
from harness.kernel.symbols import SymbolTable
from harness.machine import qemu_version
from harness.machine.qemu import kill_all_machines
from harness.report import RunRecorder, RunResult, TargetRecord, Verdict, verdicts
from harness.report import results as contract
from harness.report.recorder import Cell

# A module, not its functions: looked up at call time, so that a test (and
# the pytest plugin's own tests) can replace probing.
from harness.scenario import capabilities
from harness.scenario.capabilities import CONFIG_TOKENS, KSELFTEST_CAP
from harness.scenario.cells import Boot, BootCells, CpuGate, ProfileCells
from harness.scenario.runner import GuestControl, ScenarioContext
from harness.session.guest import booted_guest
from harness.session.liveness import LivenessPolicy


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


@dataclass(frozen=True)
class RunOrder:
    """The order each unit runs its cells in: what failed in the output
    directory's last run first (a developer re-running it sees that verdict
    soonest), then the longest first (a long cell then overlaps the other
    workers' short ones, and no unit ends with a long tail), then cells with
    no history: the vCPU-saturating ones (the kselftests, the longest cells
    of a suite) first, so that the CPU gate staggers them at the start
    rather than leaving one to run alone at the end, then the suite's
    order. Results keep the suite's order."""

    failed: frozenset[Cell] = frozenset()
    seconds: Mapping[Cell, float] = field(default_factory=dict)

    @classmethod
    def of_previous(cls, output: Path) -> RunOrder:
        try:
            previous = contract.load_results(output / "results.json")
        except HarnessError:  # none there (a new directory), or not one of ours
            return cls()
        ran = [r for r in previous.results if r.verdict != Verdict.NOT_RUN]
        return cls(
            frozenset(r.cell for r in ran if r.verdict in (Verdict.FAIL, Verdict.ERROR)),
            {r.cell: r.duration_s for r in ran},
        )

    def sort(self, cells: Sequence[Cell], heavy: Callable[[Cell], bool] = lambda cell: False) -> list[Cell]:
        def key(indexed: tuple[int, Cell]) -> tuple[bool, bool, float, bool, int]:
            i, cell = indexed
            known = cell in self.seconds
            return (
                cell not in self.failed,
                not known,
                -self.seconds.get(cell, 0.0),
                known or not heavy(cell),
                i,
            )

        return [cell for _, cell in sorted(enumerate(cells), key=key)]


class _ProfileRun:
    """All scenarios of one target x profile for `pkvm-harness run`: the
    adapter between the boot-cell engine (harness.scenario.cells, which
    decides every verdict, retry and fresh boot) and this run: how to boot
    (QEMU, in OUTPUT/boots/TARGET/), how to probe, and the recorder every
    finished cell and boot goes to at once."""

    no_reboot = ""  # a live run can always boot again

    def __init__(
        self,
        request: RunRequest,
        artifacts: Artifacts,
        profile: Profile,
        recorder: RunRecorder,
        gate: CpuGate | None = None,
        order: RunOrder = RunOrder(),
    ) -> None:
        self.request = request
        self.order = order
        self.artifacts = artifacts
        self.profile = profile
        self.recorder = recorder
        self.symbols = SymbolTable.from_system_map(artifacts.kernel.system_map)
        self.by_name = {s.name: s for s in request.scenarios}
        self.engine = ProfileCells(self, request.retries, profile.name, recorder.add_boot, gate)

    def _boot_name(self, n: int) -> str:
        side = f"{self.request.side}-" if self.request.side else ""
        return f"{side}{self.profile.name}-{n}"

    def _boot_dir(self, n: int) -> Path:
        # Per target: a matrix runs several targets on the same profiles.
        return self.request.output / "boots" / self.request.target.name / self._boot_name(n)

    @contextlib.contextmanager
    def boot(self, n: int) -> Iterator[Boot]:
        t, run_dir = self.request.target.name, self._boot_dir(n)
        ui.info("machine", f"booting {t} on {self.profile.name} ({self._boot_name(n)})")
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
            yield Boot.live(
                f"{t}/{self._boot_name(n)}",
                self.request.target,
                self.profile,
                self.request.side,
                run_dir,
                guest,
            )

    def cells(self, boot: Boot) -> BootCells:
        def probe(guest: GuestControl) -> frozenset[str]:
            return capabilities.probe(guest, self.artifacts.kernel, self.profile.features)

        return BootCells(boot, probe)

    def unbooted(self, scenario: Scenario) -> ScenarioContext:
        """A cell whose boot would not start: named after that boot."""
        n = self.engine.boots
        return ScenarioContext(
            target=self.request.target,
            profile=self.profile,
            capabilities=frozenset(),
            reproducer=str(self._boot_dir(n) / "reproduce-boot.sh"),
            boot=f"{self.request.target.name}/{self._boot_name(n)}",
            side=self.request.side,
        )

    def run(self) -> None:
        unit = (self.request.target.name, self.request.side, self.profile.name)
        pending = self.order.sort(
            [(*unit, n) for n in self.recorder.pending(*unit)],
            lambda cell: self.by_name[cell[3]].saturates_vcpus,
        )
        try:
            self.engine.run(
                [self.by_name[cell[3]] for cell in pending],
                self.recorder.record,
                lambda: self.recorder.frozen,
            )
        finally:
            self.engine.close()


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
    order = RunOrder.of_previous(output)  # before this run overwrites it
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
        _run_pool(units, recorder, jobs, order)
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


def _run_pool(
    units: list[tuple[RunRequest, Artifacts, Profile]], recorder: RunRecorder, jobs: int, order: RunOrder
) -> None:
    side_by_side = jobs > 1 and len(units) > 1  # only then do log lines need a unit prefix
    # One vCPU-saturating cell per host CPUs' worth of guest vCPUs at a time.
    vcpus = max(profile.smp for _, _, profile in units) if units else 1
    gate = CpuGate((os.cpu_count() or 1) // vcpus) if side_by_side else None

    def one(unit: tuple[RunRequest, Artifacts, Profile]) -> None:
        request, artifacts, profile = unit
        side = f"{request.side}:" if request.side else ""
        with ui.prefixed(f"{request.target.name}/{side}{profile.name}" if side_by_side else None):
            _ProfileRun(request, artifacts, profile, recorder, gate, order).run()

    if not side_by_side:
        for unit in units:
            one(unit)
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="worker")
    finished: queue.SimpleQueue[None] = queue.SimpleQueue()
    futures: list[concurrent.futures.Future[None]] = []
    try:
        # Submitted inside the try: an interrupt between two submits still
        # freezes the recorder, which is what stops the workers started.
        for unit in units:
            futures.append(pool.submit(one, unit))
            futures[-1].add_done_callback(lambda _: finished.put(None))
        # SIGINT is raised in this thread wherever it happens to be. Here it
        # lands in a C call that holds no lock: concurrent.futures.wait,
        # interrupted while taking the futures' locks one by one, keeps some
        # of them, and every worker then blocks forever in set_result.
        left = len(futures)
        while left:
            with contextlib.suppress(queue.Empty):
                finished.get(timeout=0.5)
                left -= 1
    except BaseException:
        recorder.freeze()
        kill_all_machines()  # the workers' steps end at once, on EOF; no QEMU starts after
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
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
