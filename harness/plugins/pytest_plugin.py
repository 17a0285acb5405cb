"""pytest plugin: `pytest scenarios/` runs the harness's scenarios as pytest
tests, and scenarios written in Python get fixtures that boot guests.

It is registered through the `pytest11` entry point, so every pytest run in
an environment where pkvm-harness is installed loads it. It therefore stays
inert until it is used: collecting builds and boots nothing, and the heavy
stages (pipeline, session, capabilities) are imported only when an item
runs or a fixture is requested.

- Each YAML file in a directory called `scenarios` whose top level has
  `steps:` is collected as one item per selected profile, named like
  `boot-health[smmuv3-nested]`; the scenario's tags become markers, so
  `-m smoke` selects by tag. Only a `scenarios` directory the command line
  names (`pytest scenarios/`, one of its files, or the directory right
  above it: `pytest .`) is collected: a plain `pytest` of tests/ must not
  boot the scenarios kept as test data (tests/data/scenarios).
- Items of one target x profile share one boot, as `pkvm-harness run` does
  (see BootManager): the kernel and initramfs are built once per session,
  a profile boots when its first item runs, capabilities are probed once
  per boot, a scenario that kills its guest gets the next items a fresh
  boot, and an ERROR is retried once on a fresh boot. A boot is shut down
  after the last item of its profile; whatever is still up is shut down at
  the end of the session, also on Ctrl-C.
- Verdicts map onto pytest outcomes with the harness's reason as the
  message: FAIL -> failed, ERROR -> error (raised in the item's setup),
  SKIP and NOT_RUN -> skipped, XFAIL -> xfailed, XPASS -> failed (as a
  strict xfail that passed: the run's exit code fails too), PASS -> passed.
  The verdict, reason, boot and console log go into the report's user
  properties (so into --junitxml) and a "pkvm-harness" section.
  The plugin writes no results.json: `pkvm-harness run` does that.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
import yaml
from _pytest._code.code import ReprFileLocation, TerminalRepr
from _pytest._io import TerminalWriter

from harness import ui
from harness.config import Registry

# Re-exported: the defaults every front end shares, defined once.
from harness.config.defaults import DEFAULT_PROFILES as DEFAULT_PROFILES
from harness.config.defaults import DEFAULT_TARGET as DEFAULT_TARGET
from harness.config.models import Profile, Scenario, Target
from harness.config.registry import load_scenario
from harness.errors import HarnessError, MachineError
from harness.report import verdicts
from harness.report.results import ScenarioResult, Verdict, unknown_cell
from harness.report.verdicts import PytestOutcome

# A module, not its functions: looked up at call time, so a test can replace
# run_scenario without booting anything.
from harness.scenario import runner as scenario_runner

if TYPE_CHECKING:
    from harness.kernel.symbols import SymbolTable
    from harness.logwatch import Event
    from harness.pipeline import Artifacts, SuiteNeed
    from harness.scenario.cells import Boot, BootCells, ProfileCells
    from harness.scenario.runner import GuestControl, ScenarioContext
    from harness.session.guest import Guest


_STEPS_LINE = re.compile(r"^steps\s*:", re.MULTILINE)


class HarnessVerdict(Exception):
    """A harness verdict raised into pytest. The report shows `reason`
    alone (see pytest_runtest_makereport), not a traceback into this
    plugin: the reason is what the harness decided, the stack says nothing."""

    verdict = Verdict.ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @staticmethod
    def of(verdict: Verdict, reason: str) -> HarnessVerdict:
        """The exception that carries a FAIL or an ERROR into pytest."""
        return ScenarioFailed(reason) if verdict == Verdict.FAIL else ScenarioErrored(reason)


class ScenarioFailed(HarnessVerdict):
    """FAIL: the kernel under test misbehaved."""

    verdict = Verdict.FAIL


class ScenarioErrored(HarnessVerdict):
    """ERROR: the harness, its input or its infrastructure failed."""

    verdict = Verdict.ERROR


class BootFailed(ScenarioFailed):
    """A guest booted for a Python test did not come up, through the
    kernel's fault. `guest` is the dead guest (its console log, events)."""

    def __init__(self, reason: str, guest: Guest) -> None:
        super().__init__(reason)
        self.guest = guest


# ---------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pkvm-harness", "pkvm-harness scenarios (pytest scenarios/)")
    group.addoption(
        "--target",
        "--pkvm-target",
        dest="pkvm_target",
        default=DEFAULT_TARGET,
        metavar="TARGET",
        help=f"target to build and boot: a name from targets/ or a target YAML (default: {DEFAULT_TARGET})",
    )
    group.addoption(
        "--profile",
        "--pkvm-profile",
        dest="pkvm_profiles",
        action="append",
        default=None,
        metavar="PROFILE",
        help=f"machine profile, repeatable (default: {', '.join(DEFAULT_PROFILES)})",
    )
    group.addoption(
        "--pkvm-output",
        dest="pkvm_output",
        default=None,
        metavar="DIR",
        help="directory for the boot directories (console.log, qemu.log, reproduce-boot.sh);"
        " default: a directory under pytest's basetemp",
    )
    group.addoption(
        "--pkvm-retries",
        dest="pkvm_retries",
        type=int,
        default=1,
        metavar="N",
        help="retry a scenario that ended in an ERROR N times on a fresh boot (default: 1, as `run`)",
    )
    group.addoption(
        "--pkvm-boot-timeout",
        dest="pkvm_boot_timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="seconds a guest may take to boot (default: 120)",
    )


def _profile_names(config: pytest.Config) -> tuple[str, ...]:
    given: list[str] | None = config.getoption("pkvm_profiles")
    return tuple(dict.fromkeys(given or DEFAULT_PROFILES))  # repeated names: once, in order


# ---------------------------------------------------------------- markers


_TAGS = pytest.StashKey[set[str]]()


def _register_tags(config: pytest.Config, tags: Iterable[str]) -> None:
    """Scenario tags become markers; registered ones raise no
    PytestUnknownMarkWarning (nor an error under --strict-markers)."""
    known = config.stash.setdefault(_TAGS, set())
    for tag in tags:
        if tag not in known:
            known.add(tag)
            config.addinivalue_line("markers", f"{tag}: pkvm-harness scenarios tagged '{tag}'")


def _is_scenario_file(path: Path) -> bool:
    """A YAML file in a `scenarios` directory with top-level `steps:`; other
    YAML there (or anywhere) is not a scenario."""
    if path.suffix not in (".yaml", ".yml") or path.parent.name != "scenarios":
        return False
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        # Broken YAML that looks like a scenario is collected, so that the
        # loader reports its file:line error instead of it silently vanishing.
        return bool(_STEPS_LINE.search(text))
    return isinstance(data, dict) and "steps" in data


def _scenario_dirs(config: pytest.Config) -> set[Path]:
    """The `scenarios` directories named on the command line, or directly
    under a directory named there: the only ones collected (see the module
    docstring). No tree walk: the plugin must cost nothing to runs that do
    not use it."""
    found: set[Path] = set()
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0])
        if path.is_file():
            path = path.parent
        for candidate in (path, path / "scenarios"):
            if candidate.name == "scenarios" and candidate.is_dir():
                found.add(candidate.resolve())
    return found


def _tags_in(directories: Iterable[Path]) -> set[str]:
    tags: set[str] = set()
    for directory in directories:
        for path in sorted(directory.iterdir()):
            if not _is_scenario_file(path):
                continue
            with contextlib.suppress(yaml.YAMLError, OSError):
                data = yaml.safe_load(path.read_text())
                raw = data.get("tags", []) if isinstance(data, dict) else []
                tags.update(t for t in raw if isinstance(t, str) and t.isidentifier())
    return tags


_SCENARIO_DIRS = pytest.StashKey[set[Path]]()


def pytest_configure(config: pytest.Config) -> None:
    directories = config.stash[_SCENARIO_DIRS] = _scenario_dirs(config)
    # Registered before collection, so `pytest --markers` lists them too.
    _register_tags(config, sorted(_tags_in(directories)))
    # Only names given explicitly are checked here, as a one-line usage
    # error: the defaults exist, and a run of tests/ should not load them.
    registry = Registry()
    try:
        if config.getoption("pkvm_target") != DEFAULT_TARGET:
            registry.target(config.getoption("pkvm_target"))
        for name in config.getoption("pkvm_profiles") or ():
            registry.profile(name)
    except HarnessError as exc:
        raise pytest.UsageError(f"pkvm-harness: {exc}") from None


# ---------------------------------------------------------------- boots


class BootManager:
    """One per pytest session: builds once, and keeps one shared boot per
    profile, the way harness.pipeline's _ProfileRun does for `pkvm-harness
    run`. Every boot is entered on an ExitStack registered on the session's
    own stack, so `close()` (session end, Ctrl-C, config cleanup) shuts down
    every QEMU still up, whatever happened before."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.target_name: str = config.getoption("pkvm_target")
        self.profile_names = _profile_names(config)
        self.retries: int = config.getoption("pkvm_retries")
        self.boot_timeout: float = config.getoption("pkvm_boot_timeout")
        self.output_dir: Path | None = None
        self.boots_started = 0
        self._registry = Registry()
        self._target: Target | None = None
        self._profiles: dict[str, Profile] = {}
        self._artifacts: Artifacts | None = None
        self.suites: tuple[SuiteNeed, ...] = ()  # kernel selftest suites the collected scenarios need
        self._build_error: HarnessError | None = None
        self._symbols: SymbolTable | None = None
        self._engines: dict[str, ProfileCells] = {}  # profile -> its cells, with the shared boot
        self._stack = contextlib.ExitStack()

    # -- inputs, each loaded or built once

    def target(self) -> Target:
        if self._target is None:
            self._target = self._registry.target(self.target_name)
        return self._target

    def profile(self, name: str) -> Profile:
        if name not in self._profiles:
            self._profiles[name] = self._registry.profile(name)
        return self._profiles[name]

    def artifacts(self) -> Artifacts:
        """The kernel and initramfs, built (or found in the cache) once; a
        build that failed is not tried again for every item."""
        from harness import pipeline

        if self._build_error is not None:
            raise self._build_error
        if self._artifacts is None:
            try:
                self._artifacts = pipeline.build_all(self.target(), suites=self.suites)
            except HarnessError as exc:
                self._build_error = exc
                raise
        return self._artifacts

    def _symbol_table(self) -> SymbolTable:
        from harness.kernel.symbols import SymbolTable

        if self._symbols is None:
            self._symbols = SymbolTable.from_system_map(self.artifacts().kernel.system_map)
        return self._symbols

    def output(self) -> Path:
        if self.output_dir is None:
            given: str | None = self.config.getoption("pkvm_output")
            if given:
                self.output_dir = Path(given).resolve()
                self.output_dir.mkdir(parents=True, exist_ok=True)
            else:
                # pytest's own tmp factory, so boot directories live (and
                # are pruned) with the run's other temporary files.
                factory = getattr(self.config, "_tmp_path_factory", None)
                if isinstance(factory, pytest.TempPathFactory):
                    self.output_dir = factory.mktemp("pkvm-harness")
                else:  # the tmp_path plugin is disabled (-p no:tmpdir)
                    self.output_dir = Path(tempfile.mkdtemp(prefix="pkvm-harness-"))
        return self.output_dir

    # -- boots

    @contextlib.contextmanager
    def booted(self, profile: Profile) -> Iterator[tuple[str, Path, Guest]]:
        """Boot `profile` in a new boot directory; QEMU is shut down when the
        block ends, or at the latest when the session does."""
        from harness.session import guest as session_guest
        from harness.session.liveness import LivenessPolicy

        target, artifacts = self.target(), self.artifacts()
        boots = self.output() / "boots" / target.name
        n = 1
        while (boots / f"{profile.name}-{n}").exists():  # a reused --pkvm-output keeps earlier boots
            n += 1
        name = f"{profile.name}-{n}"
        ui.info("machine", f"booting {target.name} on {profile.name} ({name})")
        self.boots_started += 1
        with self._stack.enter_context(contextlib.ExitStack()) as stack:
            guest = stack.enter_context(
                session_guest.booted_guest(
                    profile,
                    artifacts.kernel.image,
                    artifacts.image,
                    boots / name,
                    target.cmdline,
                    self.boot_timeout,
                    LivenessPolicy(),
                    # The table's own bound lookup: the hang evidence uses
                    # the table behind it to name EL2 (hyp VA) PCs too.
                    self._symbol_table().lookup,
                )
            )
            yield f"{target.name}/{name}", boots / name, guest

    def _engine(self, profile: Profile) -> ProfileCells:
        from harness.scenario.cells import ProfileCells

        if profile.name not in self._engines:
            self._engines[profile.name] = ProfileCells(
                _SharedBoots(self, profile), self.retries, profile.name
            )
        return self._engines[profile.name]

    def release(self, profile_name: str) -> None:
        """Shut down the profile's shared boot (after its last item)."""
        engine = self._engines.get(profile_name)
        if engine is not None:
            engine.close()

    def close(self) -> None:
        """Idempotent: every QEMU this session started is shut down."""
        engines, self._engines = list(self._engines.values()), {}
        with contextlib.ExitStack() as stack:
            stack.callback(self._stack.close)
            for engine in engines:
                stack.callback(engine.close)

    # -- scenarios

    def result(self, scenario: Scenario, profile_name: str) -> ScenarioResult:
        """Run `scenario` on the profile's shared boot, by the boot-cell
        engine's rules (harness.scenario.cells, as `run`): an ERROR is
        retried on a fresh boot (`--pkvm-retries`), a FAIL never is."""
        try:
            target, profile = self.target(), self.profile(profile_name)
        except HarnessError as exc:
            return unknown_cell(scenario.name, self.target_name, profile_name, str(exc))
        try:
            self.artifacts()
        except HarnessError as exc:
            ctx = scenario_runner.ScenarioContext(target=target, profile=profile, capabilities=frozenset())
            return scenario_runner.scenario_result(scenario, ctx, *verdicts.build_failure(exc))
        results: list[ScenarioResult] = []
        self._engine(profile).run([scenario], results.append)
        (result,) = results
        return result


class _SharedBoots:
    """How the plugin boots a profile for the engine: in the session's boot
    directory, shut down at the latest with the session."""

    no_reboot = ""

    def __init__(self, manager: BootManager, profile: Profile) -> None:
        self.manager = manager
        self.profile = profile

    @contextlib.contextmanager
    def boot(self, n: int) -> Iterator[Boot]:
        from harness.scenario.cells import Boot

        with self.manager.booted(self.profile) as (boot_id, run_dir, guest):
            yield Boot.live(boot_id, self.manager.target(), self.profile, None, run_dir, guest)

    def cells(self, boot: Boot) -> BootCells:
        from harness.scenario import capabilities
        from harness.scenario.cells import BootCells

        kernel, features = self.manager.artifacts().kernel, self.profile.features
        return BootCells(boot, lambda guest: capabilities.probe(guest, kernel, features))

    def unbooted(self, scenario: Scenario) -> ScenarioContext:
        return scenario_runner.ScenarioContext(self.manager.target(), self.profile, frozenset())


_MANAGER = pytest.StashKey[BootManager]()


def _manager(config: pytest.Config) -> BootManager:
    manager = config.stash.get(_MANAGER, None)
    if manager is None:
        manager = config.stash[_MANAGER] = BootManager(config)
        # Also run when the session never reaches pytest_sessionfinish.
        config.add_cleanup(manager.close)
    return manager


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Runs on a normal end, on -x and on Ctrl-C (pytest unwinds through it).
    manager = session.config.stash.get(_MANAGER, None)
    if manager is not None:
        manager.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    manager = config.stash.get(_MANAGER, None)
    if manager is not None and manager.boots_started and manager.output_dir is not None:
        terminalreporter.write_line(
            f"pkvm-harness: {manager.boots_started} boot(s) of {manager.target_name},"
            f" boot directories in {manager.output_dir / 'boots'}"
        )


# ---------------------------------------------------------------- YAML scenarios


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    wanted = parent.config.stash.get(_SCENARIO_DIRS, set())
    if file_path.parent.resolve() in wanted and _is_scenario_file(file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            scenario = load_scenario(self.path)
        except HarnessError as exc:  # a schema or event-name error, with file:line
            raise self.CollectError(str(exc)) from None
        if scenario.name != self.path.stem:  # the CLI names scenarios by file
            raise self.CollectError(f"{self.path}:1: name '{scenario.name}' differs from file name")
        _register_tags(self.config, scenario.tags)
        for profile in _profile_names(self.config):
            item = ScenarioItem.from_parent(
                self, name=f"{scenario.name}[{profile}]", scenario=scenario, profile=profile
            )
            for tag in scenario.tags:
                item.add_marker(tag)
            yield item


class ScenarioItem(pytest.Item):
    """One scenario x profile. The scenario runs in setup(), so that an
    ERROR is pytest's "error" outcome; runtest() turns the verdict into the
    test's outcome."""

    def __init__(self, *, scenario: Scenario, profile: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.profile_name = profile
        self.result: ScenarioResult | None = None

    def setup(self) -> None:
        result = self.result = _manager(self.config).result(self.scenario, self.profile_name)
        _attach(self, result)
        outcome = verdicts.PYTEST[result.verdict]
        if outcome == PytestOutcome.ERROR:
            raise ScenarioErrored(result.reason)
        if outcome == PytestOutcome.SKIPPED:
            # Located at the scenario file, not at this line of the plugin.
            raise pytest.skip.Exception(result.reason, _use_item_location=True)

    def runtest(self) -> None:
        assert self.result is not None
        outcome = verdicts.PYTEST[self.result.verdict]
        if outcome == PytestOutcome.FAILED:
            raise ScenarioFailed(self.result.reason)
        if outcome == PytestOutcome.XFAILED:
            pytest.xfail(self.result.reason)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.name} on {self.config.getoption('pkvm_target')}"


def _attach(item: pytest.Item, result: ScenarioResult) -> None:
    """The harness's view of the result, for junit (user properties) and the
    terminal (a report section, shown with the failure)."""
    props = {
        "verdict": str(result.verdict),
        "reason": result.reason,
        "target": result.target,
        "profile": result.profile,
        "boot": result.boot,
        "console_log": result.console_log,
        "reproducer": result.reproducer,
        "attempts": str(result.attempts) if result.attempts > 1 else None,
    }
    item.user_properties += [(k, v) for k, v in props.items() if v]
    item.add_report_section("setup", "pkvm-harness", describe(result))


def describe(result: ScenarioResult) -> str:
    lines = [
        f"{result.verdict.upper()} {result.scenario} on {result.target} / {result.profile}"
        f" ({result.duration_s:.1f}s, boot {result.boot or 'none'})",
    ]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    if result.console_log:
        lines.append(f"console log: {result.console_log}")
    if result.reproducer:
        lines.append(f"reproducer: {result.reproducer}")
    for step in result.steps:
        why = f" {step.reason}" if step.reason else ""
        lines.append(f"  step {step.name}: {step.verdict.upper()}{why}")
    problems = [e for e in result.events if e.get("severity") != "info"]
    for event in problems[:10]:
        lines.append(f"  event line {event.get('line')}: {event.get('signature')}: {event.get('message')}")
    if len(problems) > 10:
        lines.append(f"  ... and {len(problems) - 10} more events")
    return "\n".join(lines)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The items of one profile run one after the other, so that they share
    one boot. Last, so that no other plugin's reordering splits them again;
    other items keep their places."""
    scenario_items = [item for item in items if isinstance(item, ScenarioItem)]
    if not scenario_items:
        return
    from harness.pipeline import selftest_suites

    _manager(scenario_items[0].config).suites = selftest_suites(item.scenario for item in scenario_items)
    order: dict[str, int] = {}
    for item in scenario_items:
        order.setdefault(item.profile_name, len(order))
    grouped = sorted(scenario_items, key=lambda item: order[item.profile_name])  # stable
    first = items.index(scenario_items[0])
    rest = [item for item in items[first:] if not isinstance(item, ScenarioItem)]
    items[:] = items[:first] + grouped + rest


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last item of a profile (in a row), its boot is shut down, so
    that boots of different profiles (or a Python test's own) never run side
    by side; an item of the profile coming later just boots again."""
    if not isinstance(item, ScenarioItem):
        return
    if isinstance(nextitem, ScenarioItem) and nextitem.profile_name == item.profile_name:
        return
    manager = item.config.stash.get(_MANAGER, None)
    if manager is not None:
        manager.release(item.profile_name)


class VerdictRepr(TerminalRepr):
    """The harness's reason as a report's longrepr: printed as the failure
    (no traceback into the plugin) and, as `reprcrash`, the message of the
    short summary line and of junit's <failure message=...>."""

    def __init__(self, reason: str, where: str) -> None:
        self.reason = reason
        self.reprcrash = ReprFileLocation(where, 1, reason)

    def toterminal(self, tw: TerminalWriter) -> None:
        for line in self.reason.splitlines() or [""]:
            tw.line(line)

    def __str__(self) -> str:
        return self.reason


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, HarnessVerdict):
        # The harness's reason is the message (also junit's), not a traceback.
        reason = exc.reason
        if exc.verdict == Verdict.ERROR and call.when == "call":
            # pytest has no "error" outcome for the call phase (a Python
            # test's own machine() boot): say which verdict it was.
            reason = f"ERROR (the harness or its infrastructure, not the kernel): {exc.reason}"
        report.longrepr = VerdictRepr(reason, item.location[0])
    elif isinstance(item, ScenarioItem) and call.when == "call" and report.passed:
        result = item.result
        if result is not None and verdicts.PYTEST[result.verdict] == PytestOutcome.XPASS_STRICT:
            # As pytest words a strict xfail that passed.
            report.outcome = "failed"
            report.longrepr = VerdictRepr(f"[XPASS(strict)] {result.reason}", item.location[0])
    return report


# ---------------------------------------------------------------- fixtures for Python scenarios


class MachineFactory(Protocol):
    def __call__(self, profile: str | None = None) -> Guest: ...


class LogEvents:
    """The kernel-log events of the test's guest since the test began (its
    boot included: the guest is booted for the test). Read live: each
    access first lets the console settle, since the kernel messages an SSH
    command causes arrive on the console, not on the SSH channel."""

    def __init__(self, guest: GuestControl, since_line: int = 0) -> None:
        self.guest = guest
        self.since_line = since_line

    def all(self) -> list[Event]:
        if not self.guest.dead:
            self.guest.settle()
        return self.guest.events_since(self.since_line)

    def problems(self) -> list[Event]:
        """Everything above info: errors, warnings, faults, crashes."""
        return [e for e in self.all() if e.severity != "info"]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def __repr__(self) -> str:
        return f"LogEvents({[e.summary() for e in self.guest.events_since(self.since_line)]!r})"


_DEFERRED_FAIL = pytest.StashKey[BootFailed]()


@pytest.fixture(scope="session")
def kernel_build(pytestconfig: pytest.Config) -> Artifacts:
    """The target's kernel and initramfs (pipeline.Artifacts: .kernel is the
    KernelBuild, .image the GuestImage), built or taken from the cache once
    per session."""
    try:
        return _manager(pytestconfig).artifacts()
    except HarnessError as exc:
        raise HarnessVerdict.of(*verdicts.build_failure(exc)) from None


@pytest.fixture
def machine(request: pytest.FixtureRequest, kernel_build: Artifacts) -> Iterator[MachineFactory]:
    """`machine(profile_name)` boots a guest of that profile (default: the
    first --profile) for this test alone; every guest it booted is shut
    down when the test ends. A boot that fails through the kernel's fault
    raises BootFailed (the test fails), through the harness's
    ScenarioErrored."""
    manager = _manager(request.config)
    with contextlib.ExitStack() as stack:

        def boot(profile: str | None = None) -> Guest:
            name = profile or manager.profile_names[0]
            try:
                chosen = manager.profile(name)
            except HarnessError as exc:
                raise ScenarioErrored(str(exc)) from None
            try:
                boot_id, _, guest = stack.enter_context(manager.booted(chosen))
            except MachineError as exc:
                raise HarnessVerdict.of(*verdicts.launch_failure(exc)) from None
            request.node.user_properties.append(("console_log", str(guest.console_log)))
            outcome = guest.boot_outcome
            assert outcome is not None
            state = "ready" if outcome.ready else outcome.verdict.upper()
            ui.info("machine", f"{state} in {outcome.seconds:.2f}s {outcome.reason}")
            if outcome.ready:
                return guest
            reason = f"{boot_id}: {outcome.reason}"
            if outcome.verdict == Verdict.FAIL:
                raise BootFailed(reason, guest)
            raise HarnessVerdict.of(outcome.verdict, reason)

        yield boot


@pytest.fixture
def guest(request: pytest.FixtureRequest, machine: MachineFactory) -> Guest:
    """A guest of the first --profile, booted for this test; use
    `.run(transport, command, timeout)` ("serial" or "ssh")."""
    try:
        return machine()
    except BootFailed as exc:
        # A boot FAIL is the kernel's: the test must fail, not "error" as
        # anything raised in a fixture would, so it is raised again at the
        # start of the call phase (pytest_runtest_call below).
        request.node.stash[_DEFERRED_FAIL] = exc
        return exc.guest


@pytest.fixture
def log_events(guest: Guest) -> LogEvents:
    """The guest's kernel-log events since the test began (see LogEvents)."""
    return LogEvents(guest, since_line=0)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    deferred = item.stash.get(_DEFERRED_FAIL, None)
    if deferred is not None:
        raise deferred
