"""The run's CPU gate (harness.scenario.cells.CpuGate): two workers never run
vCPU-saturating cells (the kselftests) at the same time on a host that only
has CPUs for one, and a worker whose heavy cell finds the slot taken runs
its light cells first, on the same boot (issue 23: the default suite's two
profiles both ran kselftest-kvm at once, each at half speed, while the
other's light cells could have used the CPU)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from harness.config import Registry
from harness.config.models import Scenario
from harness.report.results import ScenarioResult, Verdict
from harness.scenario.cells import CpuGate, ProfileCells
from harness.scenario.runner import ScenarioContext, scenario_result
from harness.session.guest import BootOutcome

REG = Registry()
HEAVY = REG.scenario("kselftest-kvm")
LIGHT = REG.scenario("boot-health")


def suite(prefix: str) -> list[Scenario]:
    heavy = replace(HEAVY, name=f"{prefix}-heavy")
    return [heavy, *(replace(LIGHT, name=f"{prefix}-light{i}") for i in range(3))]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.heavy_now = 0
        self.most_heavy_at_once = 0
        self.order: dict[str, list[str]] = {}
        self.boots: dict[str, int] = {}
        # Sequencing by events, not sleeps, so that a starved host (unit
        # tests run SCHED_IDLE beside a build) gives the same order: a's
        # heavy cell runs until b has run its light cells.
        self.a_heavy_running = threading.Event()
        self.b_lights_done = threading.Event()


class FakeCells:
    failed = False
    spent = False
    last_run: str | None = None
    boot = SimpleNamespace(record=lambda: None)

    def __init__(self, unit: str, tally: Tally) -> None:
        self.unit, self.tally = unit, tally

    def run(self, scenario: Scenario) -> ScenarioResult:
        with self.tally.lock:
            self.tally.order.setdefault(self.unit, []).append(scenario.name)
            if scenario.saturates_vcpus:
                self.tally.heavy_now += 1
                self.tally.most_heavy_at_once = max(self.tally.most_heavy_at_once, self.tally.heavy_now)
        if scenario.name == "a-heavy":
            self.tally.a_heavy_running.set()
            self.tally.b_lights_done.wait(10)
        if scenario.name == "b-light2":
            self.tally.b_lights_done.set()
        with self.tally.lock:
            if scenario.saturates_vcpus:
                self.tally.heavy_now -= 1
        return scenario_result(scenario, context(), Verdict.PASS, "")


def context() -> ScenarioContext:
    return ScenarioContext(
        target=REG.target("mainline-7.3"), profile=REG.profile("smmuv3-nested"), capabilities=frozenset()
    )


class FakeBooter:
    no_reboot = ""

    def __init__(self, unit: str, tally: Tally) -> None:
        self.unit, self.tally = unit, tally

    @contextlib.contextmanager
    def boot(self, n: int) -> Iterator[Any]:
        self.tally.boots[self.unit] = n
        yield SimpleNamespace(outcome=BootOutcome(True, Verdict.PASS, "", 1.0))

    def cells(self, boot: Any) -> Any:
        return FakeCells(self.unit, self.tally)

    def unbooted(self, scenario: Scenario) -> ScenarioContext:
        return context()


def run_units(
    gate: CpuGate | None, stop: threading.Event | None = None
) -> tuple[Tally, dict[str, list[str]]]:
    tally = Tally()
    recorded: dict[str, list[str]] = {"a": [], "b": []}

    def unit(name: str) -> None:
        if name == "b" and stop is None:
            tally.a_heavy_running.wait(10)  # b starts while a's heavy cell runs
        engine = ProfileCells(FakeBooter(name, tally), 0, "p", gate=gate)
        engine.run(
            suite(name), lambda r: recorded[name].append(r.scenario), stop.is_set if stop else lambda: False
        )
        engine.close()

    workers = [threading.Thread(target=unit, args=(n,)) for n in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return tally, recorded


def test_two_workers_never_run_saturating_cells_at_once_and_run_light_ones_meanwhile() -> None:
    tally, recorded = run_units(CpuGate(1))
    assert tally.most_heavy_at_once == 1
    assert tally.order["a"] == ["a-heavy", "a-light0", "a-light1", "a-light2"]
    # b's heavy cell found the slot taken: its light cells went first, then it waited.
    assert tally.order["b"] == ["b-light0", "b-light1", "b-light2", "b-heavy"]
    assert tally.boots == {"a": 1, "b": 1}  # deferring a cell costs no fresh boot
    assert sorted(recorded["b"]) == sorted(s.name for s in suite("b"))


def test_without_a_gate_the_order_is_the_suites_and_heavy_cells_overlap() -> None:
    tally, _ = run_units(None)
    assert tally.order["b"] == ["b-heavy", "b-light0", "b-light1", "b-light2"]
    assert tally.most_heavy_at_once == 2


def test_a_worker_waiting_for_the_slot_stops_when_the_run_is_interrupted() -> None:
    gate = CpuGate(1)
    assert gate.take()  # held elsewhere, never given back
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    tally, recorded = run_units(gate, stop)
    assert "a-heavy" not in recorded["a"] and "b-heavy" not in recorded["b"]
    assert tally.most_heavy_at_once == 0
