"""The pytest plugin without booting: collection (names, tags, what is not
a scenario), verdicts mapped onto pytest outcomes, and how boots are shared,
replaced and always shut down, with the pipeline's stages replaced by fakes
at the seams the plugin calls (build_all, booted_guest, probe, run_scenario)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import cli, pipeline
from harness.config.models import Profile, Scenario
from harness.logwatch import Event, LogWatcher
from harness.plugins import pytest_plugin
from harness.report import ScenarioResult, Verdict
from harness.scenario import capabilities, runner
from harness.scenario.runner import ScenarioContext, scenario_result
from harness.session import guest as session_guest
from harness.session.base import Completed
from harness.session.guest import BootOutcome

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def collect(*args: str) -> list[str]:
    """Node ids that `pytest --collect-only` finds in the repository, as a
    user runs it (a subprocess: the entry point loads the plugin)."""
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_defaults_are_those_of_the_cli() -> None:
    assert pytest_plugin.DEFAULT_TARGET == cli.DEFAULT_TARGET
    assert pytest_plugin.DEFAULT_PROFILES == cli.DEFAULT_PROFILES


def test_collects_every_scenario_once_per_profile_and_the_python_example() -> None:
    names = sorted(p.stem for p in (REPO / "scenarios").glob("*.yaml"))
    assert len(names) >= 16
    ids = collect("scenarios/", "-W", "error::pytest.PytestUnknownMarkWarning")
    expected = {f"scenarios/{n}.yaml::{n}[{p}]" for n in names for p in ("smmuv3-nested", "virtio-iommu")}
    assert len(ids) == 2 * len(names) + 1
    assert set(ids) == expected | {"scenarios/test_example_python.py::test_protected_mode_over_ssh"}
    # The items of one profile are adjacent (they share a boot).
    profiles = [i.rsplit("[", 1)[1].rstrip("]") for i in ids if i.endswith("]")]
    assert profiles == sorted(profiles, key=("smmuv3-nested", "virtio-iommu").index)


def test_tags_are_markers() -> None:
    ids = collect("scenarios/", "-m", "smoke", "--strict-markers", "-W", "error")
    assert sorted(ids) == sorted(
        f"scenarios/{n}.yaml::{n}[{p}]"
        for n in ("boot-health", "dma-roundtrip")
        for p in ("smmuv3-nested", "virtio-iommu")
    )


def test_profile_and_target_options() -> None:
    ids = collect("scenarios/boot-health.yaml", "--profile", "virtio-iommu", "--target", "stable-6.12")
    assert ids == ["scenarios/boot-health.yaml::boot-health[virtio-iommu]"]
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", "scenarios/"]
    proc = subprocess.run(
        [*argv, "--profile", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown profile 'nope'" in proc.stderr


def test_plain_pytest_collects_no_scenario() -> None:
    """tests/ holds scenarios as test data: `pytest` must not boot them."""
    assert not [i for i in collect() if ".yaml::" in i]


def write_scenario(directory: Path, name: str, tags: str = "[smoke]", extra: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(
        f"name: {name}\ntags: {tags}\n{extra}steps:\n  - name: noop\n    run: 'true'\n"
    )


def test_only_yaml_with_steps_in_a_scenarios_directory_is_collected(pytester: pytest.Pytester) -> None:
    write_scenario(pytester.path / "scenarios", "real")
    (pytester.path / "scenarios" / "notes.yaml").write_text("name: notes\nitems: [1, 2]\n")
    write_scenario(pytester.path / "elsewhere", "stray")
    result = pytester.runpytest("--collect-only", "-q", ".", "--profile", "smmuv3-nested")
    result.stdout.fnmatch_lines(["scenarios/real.yaml::real[[]smmuv3-nested[]]", "1 test collected*"])

    (pytester.path / "scenarios" / "broken.yaml").write_text("name: broken\nsteps:\n  - nme: x\n")
    result = pytester.runpytest("--collect-only", "-q", "scenarios", "--profile", "smmuv3-nested")
    result.stdout.fnmatch_lines(["*broken.yaml:3*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run


REASONS = {
    "passes": Verdict.PASS,
    "fails": Verdict.FAIL,
    "errs": Verdict.ERROR,
    "skips": Verdict.SKIP,
    "xfails": Verdict.XFAIL,
    "xpasses": Verdict.XPASS,
    "not-run": Verdict.NOT_RUN,
}


def test_verdicts_map_onto_pytest_outcomes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_result(self: pytest_plugin.BootManager, scenario: Scenario, profile: str) -> ScenarioResult:
        return ScenarioResult(
            scenario.name,
            profile,
            self.target_name,
            REASONS[scenario.name],
            f"reason of {scenario.name}",
            0.5,
            console_log=f"/boots/{profile}-1/console.log",
            boot=f"{self.target_name}/{profile}-1",
        )

    monkeypatch.setattr(pytest_plugin.BootManager, "result", fake_result)
    for name in REASONS:
        write_scenario(pytester.path / "scenarios", name)
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest("scenarios", "--profile", "smmuv3-nested", f"--junitxml={xml}", "-rA")
    result.assert_outcomes(passed=1, failed=2, errors=1, skipped=2, xfailed=1)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED scenarios/fails.yaml::fails[[]smmuv3-nested[]] - reason of fails",
            "ERROR scenarios/errs.yaml::errs[[]smmuv3-nested[]] - reason of errs",
            "SKIPPED [[]1[]] scenarios/skips.yaml:1: reason of skips",
            "SKIPPED [[]1[]] scenarios/not-run.yaml:1: reason of not-run",
            "XFAIL scenarios/xfails.yaml::xfails[[]smmuv3-nested[]] - reason of xfails",
            "FAILED scenarios/xpasses.yaml::xpasses[[]smmuv3-nested[]] - [[]XPASS(strict)[]]*",
        ]
    )
    # The reason is the message, not a traceback into the plugin.
    result.stdout.no_fnmatch_line("*pytest_plugin.py*")

    cases = {c.attrib["name"]: c for c in ET.parse(xml).getroot().iter("testcase")}
    failure = cases["fails[smmuv3-nested]"].find("failure")
    assert failure is not None and failure.attrib["message"] == "reason of fails"
    error = cases["errs[smmuv3-nested]"].find("error")
    assert error is not None and "reason of errs" in error.attrib["message"]
    xfail = cases["xfails[smmuv3-nested]"].find("skipped")
    assert xfail is not None and xfail.attrib == {"type": "pytest.xfail", "message": "reason of xfails"}
    skipped = cases["skips[smmuv3-nested]"].find("skipped")
    assert skipped is not None and "reason of skips" in skipped.attrib["message"]
    props = {p.attrib["name"]: p.attrib["value"] for p in cases["fails[smmuv3-nested]"].iter("property")}
    assert props["verdict"] == "fail" and props["reason"] == "reason of fails"
    assert props["console_log"] == "/boots/smmuv3-nested-1/console.log"
    assert cases["passes[smmuv3-nested]"].find("failure") is None


# -- boots shared, replaced and shut down, with fakes for the heavy stages


class FakeGuest:
    def __init__(self, profile: Profile, run_dir: Path, outcome: BootOutcome) -> None:
        self.profile = profile.name
        self.dir = run_dir
        self.console_log = run_dir / "console.log"
        self.watcher = LogWatcher()
        self.boot_outcome = outcome
        self.crashed = False
        self.closed = False
        self.commands: list[str] = []

    @property
    def dead(self) -> bool:
        return self.crashed or self.closed

    def run(self, transport: str, command: str, timeout: float) -> Completed:
        self.commands.append(command)
        self.watcher.feed("[    1.000000] WARNING: CPU: 0 PID: 1 at fake.c:1 fake_warn\n")
        return Completed(command, "ok\n", 0, 0.01)

    def settle(self, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
        pass

    def events_since(self, line: int) -> list[Event]:
        return self.watcher.since(line)


@dataclass
class Fakes:
    boots: list[FakeGuest] = field(default_factory=list)
    open_at_boot: list[int] = field(default_factory=list)  # guests up when each boot began
    runs: list[tuple[str, str, int | None, str | None]] = field(default_factory=list)
    builds: int = 0
    probes: int = 0
    outcome: BootOutcome = field(default_factory=lambda: BootOutcome(True, Verdict.PASS, "", 1.0))
    errors_left: dict[str, int] = field(default_factory=dict)  # scenario -> ERRORs before it passes
    dead_at_boot: bool = False  # QEMU is gone once the boot ends (a panic at boot)

    @property
    def open(self) -> list[FakeGuest]:
        return [g for g in self.boots if not g.closed]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Fakes:
    fake = Fakes()

    def build_all(
        target: object, jobs: int | None = None, upto: int | None = None, suites: object = ()
    ) -> Any:
        fake.builds += 1
        kernel = SimpleNamespace(
            image=tmp_path / "Image", system_map=tmp_path / "System.map", version="7.3.4"
        )
        return SimpleNamespace(kernel=kernel, image=SimpleNamespace(), seconds=0.0)

    @contextlib.contextmanager
    def booted_guest(
        profile: Profile, kernel_image: Path, image: object, run_dir: Path, *rest: Any
    ) -> Iterator[Any]:
        fake.open_at_boot.append(len(fake.open))
        run_dir.mkdir(parents=True)
        guest = FakeGuest(profile, run_dir, fake.outcome)
        guest.crashed = fake.dead_at_boot
        fake.boots.append(guest)
        try:
            yield guest
        finally:
            guest.closed = True

    def probe(guest: FakeGuest, kernel: object, features: frozenset[str]) -> frozenset[str]:
        fake.probes += 1
        return features

    def run_scenario(scenario: Scenario, guest: FakeGuest, ctx: ScenarioContext) -> ScenarioResult:
        fake.runs.append((guest.dir.name, scenario.name, ctx.faults_since, ctx.boot))
        if scenario.name == "b-crash":
            guest.crashed = True
            return scenario_result(scenario, ctx, Verdict.FAIL, "kernel panic")
        if scenario.name == "ctrl-c":
            raise KeyboardInterrupt
        if fake.errors_left.get(scenario.name):
            fake.errors_left[scenario.name] -= 1
            return scenario_result(scenario, ctx, Verdict.ERROR, "ssh connection lost")
        return scenario_result(scenario, ctx, Verdict.PASS, "")

    monkeypatch.setattr(pipeline, "build_all", build_all)
    monkeypatch.setattr(session_guest, "booted_guest", booted_guest)
    monkeypatch.setattr(pipeline, "booted_guest", booted_guest)
    monkeypatch.setattr(capabilities, "probe", probe)
    monkeypatch.setattr(runner, "run_scenario", run_scenario)
    return fake


PROFILES = ("--profile", "smmuv3-nested", "--profile", "virtio-iommu")


def test_items_of_a_profile_share_a_boot_and_a_dead_guest_is_replaced(
    pytester: pytest.Pytester, fakes: Fakes
) -> None:
    for name in ("a-first", "b-crash", "c-after", "d-last"):
        write_scenario(pytester.path / "scenarios", name)
    result = pytester.runpytest("scenarios", *PROFILES, "--pkvm-output", "out")
    result.assert_outcomes(passed=6, failed=2)
    assert fakes.builds == 1
    # b-crash kills its guest: c-after gets a fresh boot, and is the first
    # scenario on it (boot-time faults are its business: faults_since 0).
    assert fakes.runs == [
        ("smmuv3-nested-1", "a-first", 0, "mainline-7.3/smmuv3-nested-1"),
        ("smmuv3-nested-1", "b-crash", None, "mainline-7.3/smmuv3-nested-1"),
        ("smmuv3-nested-2", "c-after", 0, "mainline-7.3/smmuv3-nested-2"),
        ("smmuv3-nested-2", "d-last", None, "mainline-7.3/smmuv3-nested-2"),
        ("virtio-iommu-1", "a-first", 0, "mainline-7.3/virtio-iommu-1"),
        ("virtio-iommu-1", "b-crash", None, "mainline-7.3/virtio-iommu-1"),
        ("virtio-iommu-2", "c-after", 0, "mainline-7.3/virtio-iommu-2"),
        ("virtio-iommu-2", "d-last", None, "mainline-7.3/virtio-iommu-2"),
    ]
    assert fakes.probes == 4  # once per boot
    # One QEMU at a time: a profile's boot is shut down after its last item.
    assert fakes.open_at_boot == [0, 0, 0, 0]
    assert not fakes.open
    assert all(g.dir.parent == pytester.path / "out" / "boots" / "mainline-7.3" for g in fakes.boots)
    result.stdout.fnmatch_lines(["*4 boot(s) of mainline-7.3, boot directories in*out/boots"])


def test_an_error_is_retried_on_a_fresh_boot(pytester: pytest.Pytester, fakes: Fakes) -> None:
    write_scenario(pytester.path / "scenarios", "flaky")
    write_scenario(pytester.path / "scenarios", "broken")
    fakes.errors_left = {"flaky": 1, "broken": 5}
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest("scenarios", "--profile", "smmuv3-nested", f"--junitxml={xml}")
    result.assert_outcomes(passed=1, errors=1)
    assert [(boot, name) for boot, name, _, _ in fakes.runs] == [
        ("smmuv3-nested-1", "broken"),
        ("smmuv3-nested-2", "broken"),  # a final ERROR keeps the boot, as `run` does
        ("smmuv3-nested-2", "flaky"),
        ("smmuv3-nested-3", "flaky"),
    ]
    cases = {c.attrib["name"]: c for c in ET.parse(xml).getroot().iter("testcase")}
    props = {p.attrib["name"]: p.attrib["value"] for p in cases["flaky[smmuv3-nested]"].iter("property")}
    assert props["attempts"] == "2" and props["verdict"] == "pass"
    # The boot directories default to pytest's basetemp.
    assert all("basetemp" in str(g.dir) for g in fakes.boots)
    assert not fakes.open


def _both_drivers(
    pytester: pytest.Pytester, fakes: Fakes, tmp_path: Path, names: tuple[str, ...]
) -> tuple[dict[str, tuple[str, int]], list[tuple[str, str, int | None]], int]:
    """The scenarios `names` through `pkvm-harness run`'s pipeline, then
    through the plugin: their verdicts and attempts, and the runs on boots,
    when both agree; and the number of boots each made."""
    from harness.config import Registry
    from harness.config.registry import load_scenario

    for name in names:
        write_scenario(pytester.path / "scenarios", name)
    errors = dict(fakes.errors_left)
    registry = Registry()
    request = pipeline.RunRequest(
        target=registry.target("mainline-7.3"),
        profiles=(registry.profile("smmuv3-nested"),),
        scenarios=tuple(load_scenario(pytester.path / "scenarios" / f"{n}.yaml") for n in names),
        output=tmp_path / "run",
    )
    meta = {"metadata": {}, "cached": True, "key": "fake", "target": "mainline-7.3"}
    kernel = SimpleNamespace(image=tmp_path / "Image", system_map=tmp_path / "System.map", **meta)
    artifacts: Any = SimpleNamespace(kernel=kernel, image=SimpleNamespace(**meta), seconds=0.0)
    ran = pipeline.run_units([request], request.output, built={pipeline._build_id(request): artifacts})
    by_run = {r.scenario: (r.verdict.value, r.attempts) for r in ran.results}
    runs_of_run = [(boot, name, since) for boot, name, since, _ in fakes.runs]
    boots_of_run = len(fakes.boots)

    fakes.runs.clear()
    fakes.errors_left = errors
    xml = pytester.path / "junit.xml"
    pytester.runpytest("scenarios", "--profile", "smmuv3-nested", f"--junitxml={xml}")
    by_plugin = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        by_plugin[case.attrib["name"].split("[")[0]] = (props["verdict"], int(props.get("attempts", "1")))
    runs_of_plugin = [(boot, name, since) for boot, name, since, _ in fakes.runs]
    assert by_run == by_plugin
    assert runs_of_run == runs_of_plugin
    assert len(fakes.boots) - boots_of_run == boots_of_run
    assert not fakes.open
    return by_run, runs_of_run, boots_of_run


def test_the_plugin_and_pkvm_harness_run_follow_the_same_rules(
    pytester: pytest.Pytester, fakes: Fakes, tmp_path: Path
) -> None:
    """Both drive pipeline.BootedCells and pipeline.Attempts: the same
    scenarios give the same boots, the same runs on them, and the same
    verdicts and attempts."""
    fakes.errors_left = {"c-flaky": 1, "d-broken": 5}
    names = ("a-first", "b-crash", "c-flaky", "d-broken", "e-last")
    by_run, runs_of_run, boots = _both_drivers(pytester, fakes, tmp_path, names)
    assert by_run == {
        "a-first": ("pass", 1),
        "b-crash": ("fail", 1),
        "c-flaky": ("pass", 2),
        "d-broken": ("error", 2),
        "e-last": ("pass", 1),
    }
    assert runs_of_run == [
        ("smmuv3-nested-1", "a-first", 0),
        ("smmuv3-nested-1", "b-crash", None),  # kills its guest
        ("smmuv3-nested-2", "c-flaky", 0),  # ERROR: retried on a fresh boot
        ("smmuv3-nested-3", "c-flaky", 0),
        ("smmuv3-nested-3", "d-broken", None),  # ERROR: retried on a fresh boot, then final
        ("smmuv3-nested-4", "d-broken", 0),
        ("smmuv3-nested-4", "e-last", None),  # a final ERROR keeps the boot
    ]
    assert boots == 4


def test_a_boot_that_fails_gives_every_scenario_its_fail_once(
    pytester: pytest.Pytester, fakes: Fakes, tmp_path: Path
) -> None:
    # A hyp panic at boot: QEMU is gone (the guest is dead) and the boot's
    # FAIL is every scenario's, on that one boot: no reboot, no retry.
    fakes.outcome = BootOutcome(False, Verdict.FAIL, "boot: hyp-panic", 2.0)
    fakes.dead_at_boot = True
    by_run, runs, boots = _both_drivers(pytester, fakes, tmp_path, ("a-first", "b-second"))
    assert by_run == {"a-first": ("fail", 1), "b-second": ("fail", 1)}
    assert runs == [] and boots == 1


def test_ctrl_c_shuts_every_boot_down(pytester: pytest.Pytester, fakes: Fakes) -> None:
    for name in ("a-first", "ctrl-c", "d-last"):
        write_scenario(pytester.path / "scenarios", name)
    reprec = pytester.inline_run("scenarios", *PROFILES, no_reraise_ctrlc=True)
    assert reprec.ret == pytest.ExitCode.INTERRUPTED
    assert [name for _, name, _, _ in fakes.runs] == ["a-first", "ctrl-c"]
    assert len(fakes.boots) == 1 and not fakes.open


def test_collecting_builds_and_boots_nothing(pytester: pytest.Pytester, fakes: Fakes) -> None:
    write_scenario(pytester.path / "scenarios", "a-first")
    pytester.runpytest("--collect-only", "scenarios").assert_outcomes()
    assert fakes.builds == 0 and not fakes.boots


PYTHON_SCENARIO = """
def test_fixtures(guest, machine, log_events, kernel_build):
    assert guest.profile == "smmuv3-nested"  # the first --profile
    assert kernel_build.kernel.version == "7.3.4"
    other = machine("virtio-iommu")
    assert other.profile == "virtio-iommu" and other is not guest
    assert list(log_events) == []
    guest.run("ssh", "cat /proc/cmdline", 60)
    assert [e.signature for e in log_events.problems()] == ["warning"]
"""


def test_python_scenario_fixtures_boot_for_the_test_and_shut_down(
    pytester: pytest.Pytester, fakes: Fakes
) -> None:
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "test_mine.py").write_text(PYTHON_SCENARIO)
    result = pytester.runpytest("scenarios", *PROFILES)
    result.assert_outcomes(passed=1)
    assert [g.profile for g in fakes.boots] == ["smmuv3-nested", "virtio-iommu"]
    assert not fakes.open


@pytest.mark.parametrize(("verdict", "outcome"), [("fail", {"failed": 1}), ("error", {"errors": 1})])
def test_a_failed_boot_of_a_python_scenario(
    pytester: pytest.Pytester, fakes: Fakes, verdict: str, outcome: dict[str, int]
) -> None:
    """The kernel's FAIL fails the test (not an error of its fixture); the
    harness's ERROR is an error."""
    fakes.outcome = BootOutcome(False, Verdict(verdict), "boot: Kernel panic - not syncing", 3.0)
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "test_mine.py").write_text(
        "def test_it(guest):\n    raise AssertionError\n"
    )
    result = pytester.runpytest("scenarios", "-rA")
    result.assert_outcomes(**outcome)
    result.stdout.fnmatch_lines(["mainline-7.3/smmuv3-nested-1: boot: Kernel panic - not syncing"])
    assert not fakes.open
