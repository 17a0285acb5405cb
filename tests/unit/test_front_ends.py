"""One set of scenarios through every front end: `pkvm-harness run`, the
pytest plugin, the avocado plugin and `lava import` give the same verdicts,
reasons, attempts and exit codes, since they all drive the one boot-cell
engine (harness.scenario.cells) and the one verdict policy
(harness.report.verdicts).

The live front ends get fakes at the seams they share (build_all,
booted_guest, the probe, run_scenario): a pass, a FAIL, an ERROR that
passes on its retry, a skip, a failure the target declares as a known gap,
a known gap that passes (XPASS), a guest that dies (the next scenario gets
a fresh boot), and a series that does not build. `lava import` replays a
captured lava-run log; the same console replayed through run's adapter
(its ReplayGuest as the booted guest) gives the same results."""

from __future__ import annotations

import contextlib
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import cli, pipeline
from harness.config import Registry
from harness.config.models import KnownGap, Profile, Scenario, Target
from harness.config.registry import load_scenario
from harness.errors import BuildError, ExitCode
from harness.export import lava_import
from harness.export.lava import make_plan
from harness.plugins import avocado_plugin
from harness.report import RunRecorder, ScenarioResult, StepResult, Verdict, exit_code, load_results, verdicts
from harness.scenario import capabilities, runner
from harness.scenario.runner import ScenarioContext, scenario_result
from harness.session import guest as session_guest
from harness.session.guest import BootOutcome
from tests.unit.test_lava import FAULT, PANIC, _insert_after, _job_dir, _target, _target_index
from tests.unit.test_pytest_plugin import FakeGuest, write_scenario

pytest_plugins = ["pytester"]

PROFILE = "smmuv3-nested"
# name -> extra scenario YAML; in the order they run.
SCENARIOS = {
    "a-pass": "",
    "b-fail": "",
    "c-flaky": "",
    "d-skip": "requires: [virtio-iommu]\n",  # smmuv3-nested neither has nor claims it
    "e-gap": "",
    "f-xpass": "",
    "g-crash": "",
    "h-after": "",
}
GAPS = {
    "e-gap": KnownGap("noop", re.compile("known breakage"), "declared for the test"),
    "f-xpass": KnownGap("noop", re.compile("anything"), "stale"),
}

Outcome = tuple[str, str, int]  # verdict, reason, attempts


@dataclass
class Script:
    """The fakes every live front end gets, and what they saw."""

    build_error: BuildError | None = None
    errors_left: dict[str, int] = field(default_factory=dict)
    boots: list[FakeGuest] = field(default_factory=list)

    def reset(self) -> None:
        self.errors_left = {"c-flaky": 1}
        self.boots.clear()


def _behaviour(scenario: Scenario, guest: FakeGuest, ctx: ScenarioContext, script: Script) -> ScenarioResult:
    """What the kernel under test does in each scenario; the verdict policy
    and the engine decide the rest."""
    name = scenario.name
    if name == "b-fail":
        return scenario_result(scenario, ctx, Verdict.FAIL, "step noop: the kernel misbehaved")
    if script.errors_left.get(name):
        script.errors_left[name] -= 1
        return scenario_result(scenario, ctx, Verdict.ERROR, "ssh: connection lost")
    if name == "e-gap":
        step = StepResult("noop", Verdict.FAIL, "known breakage")
        return scenario_result(scenario, ctx, Verdict.FAIL, "step noop: known breakage", steps=(step,))
    if name == "g-crash":
        guest.crashed = True
        return scenario_result(scenario, ctx, Verdict.FAIL, "kernel panic")
    return scenario_result(scenario, ctx, Verdict.PASS, "")


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Script:
    fake = Script()
    fake.reset()
    meta = {"metadata": {}, "cached": True, "key": "fake", "target": "mainline-7.3"}

    def build_all(
        target: Target, jobs: int | None = None, upto: int | None = None, suites: object = ()
    ) -> Any:
        if fake.build_error is not None:
            raise fake.build_error
        kernel = SimpleNamespace(image=tmp_path / "Image", system_map=tmp_path / "System.map", **meta)
        return SimpleNamespace(kernel=kernel, image=SimpleNamespace(**meta), seconds=0.0)

    @contextlib.contextmanager
    def booted_guest(
        profile: Profile, kernel: Path, image: object, run_dir: Path, *rest: Any
    ) -> Iterator[Any]:
        run_dir.mkdir(parents=True, exist_ok=True)
        guest = FakeGuest(profile, run_dir, BootOutcome(True, Verdict.PASS, "", 1.0))
        fake.boots.append(guest)
        try:
            yield guest
        finally:
            guest.closed = True

    real_target = Registry.target

    def target(self: Registry, name: str) -> Target:
        return replace(real_target(self, name), known_gaps=GAPS)

    monkeypatch.setattr(pipeline, "build_all", build_all)
    monkeypatch.setattr(pipeline, "booted_guest", booted_guest)
    monkeypatch.setattr(session_guest, "booted_guest", booted_guest)
    monkeypatch.setattr(capabilities, "probe", lambda guest, kernel, features: features)
    monkeypatch.setattr(runner, "run_scenario", lambda s, g, c: _behaviour(s, g, c, fake))
    monkeypatch.setattr(Registry, "target", target)
    monkeypatch.setattr(cli, "install_signal_handlers", lambda: None)
    return fake


def _scenario_files(directory: Path) -> list[Path]:
    for name, extra in SCENARIOS.items():
        write_scenario(directory, name, extra=extra)
    return [directory / f"{name}.yaml" for name in SCENARIOS]


def through_run(files: list[Path], output: Path) -> tuple[dict[str, Outcome], ExitCode]:
    reg = Registry()
    request = pipeline.RunRequest(
        reg.target("mainline-7.3"), (reg.profile(PROFILE),), tuple(load_scenario(f) for f in files), output
    )
    with contextlib.suppress(BuildError):
        pipeline.run_units([request], output)
    run = load_results(output)
    return {r.scenario: (str(r.verdict), r.reason, r.attempts) for r in run.results}, exit_code(run.results)


def through_pytest(pytester: pytest.Pytester) -> tuple[dict[str, Outcome], int]:
    xml = pytester.path / "junit.xml"
    ran = pytester.runpytest("scenarios", "--profile", PROFILE, f"--junitxml={xml}")
    out: dict[str, Outcome] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        name = case.attrib["name"].split("[")[0]
        out[name] = (props["verdict"], props.get("reason", ""), int(props.get("attempts", "1")))
    return out, int(ran.ret)


def through_avocado(files: list[Path], output: Path, script: Script) -> dict[str, tuple[str, str, int]]:
    """Each cell as avocado's runner runs it: `pkvm-harness run` for the one
    cell (in this process, so the fakes apply), mapped to avocado's status."""

    real_run = subprocess.run

    def run_harness(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if argv[1:3] != ["-m", "harness.cli"]:  # the module is shared: others run for real
            return real_run(argv, **kwargs)
        return subprocess.CompletedProcess(argv, cli.main(argv[3:]), "", "")

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "run", run_harness)
        for f in files:
            status = avocado_plugin.run_cell(str(f), "mainline-7.3", PROFILE, output / f.stem)
            out[f.stem] = (status["result"], status.get("fail_reason", ""), status["returncode"])
    return out


def _same_everywhere(
    pytester: pytest.Pytester, script: Script, tmp_path: Path
) -> tuple[dict[str, Outcome], ExitCode]:
    files = _scenario_files(pytester.path / "scenarios")
    by_run, run_code = through_run(files, tmp_path / "run")
    script.reset()
    by_pytest, pytest_code = through_pytest(pytester)
    script.reset()
    by_avocado = through_avocado(files, tmp_path / "avocado", script)

    assert by_pytest == by_run
    # pytest's own exit code: 0 when nothing failed or errored, 1 otherwise.
    assert (pytest_code == 0) == (run_code == ExitCode.OK)
    for name, (verdict, reason, _) in by_run.items():
        status, fail_reason, code = by_avocado[name]
        assert status == verdicts.AVOCADO[Verdict(verdict)]
        assert fail_reason == (f"{verdict}: {reason}" if reason else "")
        # One cell's run: its exit code is the policy's for that verdict.
        assert code == verdicts.exit_code([Verdict(verdict)])
    return by_run, run_code


def test_every_front_end_gives_the_same_verdicts_reasons_and_exit_codes(
    pytester: pytest.Pytester, script: Script, tmp_path: Path
) -> None:
    by_run, code = _same_everywhere(pytester, script, tmp_path)
    verdict = {name: Verdict(v) for name, (v, _, _) in by_run.items()}
    # Each rule took effect (not merely agreed): the retry, the skip, the
    # known gap, the stale gap, the death and the fresh boot after it.
    assert by_run["c-flaky"][2] == 2 and verdict["c-flaky"] == verdict["a-pass"]
    assert "lacks: virtio-iommu" in by_run["d-skip"][1]
    assert by_run["e-gap"][1].startswith("known gap of mainline-7.3: declared for the test")
    assert "remove it from known_gaps" in by_run["f-xpass"][1]
    assert len({verdict[n] for n in ("a-pass", "b-fail", "d-skip", "e-gap", "f-xpass")}) == 5
    assert verdict["g-crash"] == verdict["b-fail"] and verdict["h-after"] == verdict["a-pass"]
    assert code == verdicts.exit_code(verdict.values())


def test_a_series_that_does_not_build_is_the_same_fail_everywhere(
    pytester: pytest.Pytester, script: Script, tmp_path: Path
) -> None:
    """#15: run built this result itself, skipping the known-gap rule the
    pytest plugin applied; now one constructor makes it for both."""
    script.build_error = BuildError("make failed: drivers/iommu/x.c:1: error", series_defect=True)
    by_run, code = _same_everywhere(pytester, script, tmp_path)
    assert {v for v, _, _ in by_run.values()} == {str(verdicts.build_failure(script.build_error)[0])}
    assert by_run["e-gap"][1].startswith("series: make failed") and "not the known gap" in by_run["e-gap"][1]
    assert code == verdicts.error_exit_code(script.build_error)
    assert not script.boots


# ---------------------------------------------------------------- lava import


class _ReplayedBoot(lava_import.ReplayGuest):
    """The captured console as the guest `run` boots."""

    def __init__(self, job: Path, run_dir: Path, plan: Any) -> None:
        log = lava_import.read_job_log(job)
        super().__init__(log.console, plan)
        self.console_log = run_dir / "console.log"
        self.boot_outcome = lava_import._boot_outcome(log, self)


Edit = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _lava_and_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Edit | None
) -> tuple[dict[str, Outcome], ExitCode, dict[str, Outcome], ExitCode]:
    """The captured job (edited) through `lava import`, and the same console
    through run's adapter (the replayed console as its booted guest, the
    job's probe, each scenario replayed from its markers), both on a target
    declaring a known gap that covers a fault in dma-roundtrip and a stale
    one on dma-fault-unmapped."""
    reg = Registry()
    base = reg.target("mainline-7.3")
    gaps = {
        "dma-roundtrip": KnownGap("roundtrip", re.compile("smmuv3-event"), "declared for the test"),
        "dma-fault-unmapped": KnownGap("dma-to-unmapped", re.compile("never"), "stale"),
    }
    monkeypatch.setattr(Registry, "target", lambda self, name: replace(base, known_gaps=gaps))
    job = _job_dir(tmp_path, edit)
    imported = lava_import.import_results(job, tmp_path / "imported", reg)
    by_lava = {r.scenario: (str(r.verdict), r.reason, r.attempts) for r in imported.results}

    meta = lava_import.read_job_log(job).metadata
    profile = reg.profile(meta["pkvm-harness.profile"])
    scenarios = tuple(reg.scenario(n) for n in meta["pkvm-harness.scenarios"].split(","))
    static = frozenset(c for c in meta.get("pkvm-harness.static-caps", "").split(",") if c)
    plan = make_plan(base, profile, list(scenarios), static)

    @contextlib.contextmanager
    def booted_guest(
        profile: Profile, kernel: Path, image: object, run_dir: Path, *rest: Any
    ) -> Iterator[Any]:
        run_dir.mkdir(parents=True, exist_ok=True)
        yield _ReplayedBoot(job, run_dir, plan.commands)

    def probe(guest: Any, kernel: object, features: object) -> frozenset[str]:
        return static | capabilities.guest_capabilities(guest)

    real_run = runner.run_scenario
    monkeypatch.setattr(pipeline, "booted_guest", booted_guest)
    monkeypatch.setattr(capabilities, "probe", probe)
    monkeypatch.setattr(
        runner, "run_scenario", lambda s, g, c: lava_import._replay_scenario(s, g, c, run=real_run)
    )
    request = pipeline.RunRequest(reg.target("x"), (profile,), scenarios, tmp_path / "run", retries=0)
    kernel = SimpleNamespace(image=tmp_path / "Image", system_map=tmp_path / "System.map")
    artifacts = SimpleNamespace(kernel=kernel, image=SimpleNamespace())
    recorder = RunRecorder(request.output, "test", "qemu", "test")
    recorder.plan(request.cells())
    pipeline._ProfileRun(request, artifacts, profile, recorder).run()  # type: ignore[arg-type]
    ran = recorder.snapshot().results
    by_run = {r.scenario: (str(r.verdict), r.reason, r.attempts) for r in ran}
    return by_lava, exit_code(imported.results), by_run, exit_code(ran)


def test_lava_import_and_run_give_the_same_results_from_one_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_lava, lava_code, by_run, run_code = _lava_and_run(
        tmp_path, monkeypatch, _insert_after("@@PKVM-LAVA:BEGIN:dma-roundtrip.roundtrip", FAULT)
    )
    assert by_lava == by_run and lava_code == run_code
    # The known gap covered the fault, the stale one is an XPASS, boot-health passed.
    assert by_lava["dma-roundtrip"][1].startswith("known gap of mainline-7.3: declared for the test")
    assert "remove it from known_gaps" in by_lava["dma-fault-unmapped"][1]
    assert len({v for v, _, _ in by_lava.values()}) == 3


def test_a_guest_that_dies_in_a_lava_job_fails_its_cell_as_in_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A panic mid-step: the cell is the same FAIL by both routes; the rest
    differ only where they must: run boots again (here: the replayed
    console, which ends at the panic), a LAVA job cannot."""

    def panic(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = _target_index(entries, "@@PKVM-LAVA:BEGIN:dma-roundtrip.roundtrip")
        tail = [e for e in entries[i + 1 :] if e["lvl"] not in ("target", "results")]
        return entries[: i + 1] + [_target(t, entries[i]["dt"]) for t in PANIC] + tail

    by_lava, lava_code, by_run, _ = _lava_and_run(tmp_path, monkeypatch, panic)
    assert by_lava["boot-health"] == by_run["boot-health"]
    assert by_lava["dma-roundtrip"] == by_run["dma-roundtrip"]
    assert "not the known gap" in by_lava["dma-roundtrip"][1]  # a panic is no declared gap
    assert by_lava["dma-fault-unmapped"][0] == str(Verdict.NOT_RUN)
    assert "a LAVA job boots once" in by_lava["dma-fault-unmapped"][1]
    assert lava_code == verdicts.exit_code([Verdict.NOT_RUN])
