"""Keeps a run's results as they come, and writes them after every cell.

The run plans its cells up front (all `not-run`, "not started"); each
finished cell replaces its placeholder and the files are rewritten
atomically. An interrupted or crashed run therefore leaves a valid
results.json holding every finished cell, the rest `not-run` with the reason.
Thread-safe, for workers that finish cells concurrently."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from harness.errors import HarnessError
from harness.report.results import BootRecord, RunResult, ScenarioResult, TargetRecord, Verdict, planned_cell
from harness.report.writers import write_reports

Cell = tuple[str, str | None, str, str]  # target, side, profile, scenario


class RunRecorder:
    def __init__(self, output: Path, harness_version: str, qemu_version: str, command: str) -> None:
        try:
            output.mkdir(parents=True, exist_ok=True)
            probe = output / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise HarnessError(f"--output {output}: cannot write there: {exc.strerror}") from None
        self.output = output
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._run = RunResult(
            harness_version=harness_version,
            qemu_version=qemu_version,
            command=command,
            targets=(),
            results=(),
            complete=False,
        )
        self._order: list[Cell] = []
        self._cells: dict[Cell, ScenarioResult] = {}
        self._frozen = False
        # Called with the number of finished cells after each one (progress).
        self.on_record: Callable[[int], None] | None = None

    def freeze(self) -> None:
        """Take no more results: after an interrupt, whatever a worker still
        reports (its QEMU killed under it) is not a verdict."""
        with self._lock:
            self._frozen = True

    @property
    def frozen(self) -> bool:
        """The run is being interrupted: workers stop starting new work."""
        return self._frozen

    def targets(self) -> tuple[TargetRecord, ...]:
        with self._lock:
            return self._run.targets

    def plan(self, cells: Iterable[Cell]) -> None:
        with self._lock:
            for cell in cells:
                if cell in self._cells:
                    continue
                target, side, profile, scenario = cell
                self._order.append(cell)
                self._cells[cell] = planned_cell(scenario, target, profile, side)
        self.flush()

    def add_target(self, target: TargetRecord) -> None:
        with self._lock:
            self._run = replace(self._run, targets=(*self._run.targets, target))
        self.flush()

    def add_boot(self, boot: BootRecord) -> None:
        with self._lock:
            boots = tuple(b for b in self._run.boots if b.id != boot.id)
            self._run = replace(self._run, boots=(*boots, boot))

    def record(self, result: ScenarioResult) -> None:
        with self._lock:
            if self._frozen:
                return
            if result.cell not in self._cells:
                self._order.append(result.cell)
            self._cells[result.cell] = result
            done = sum(1 for r in self._cells.values() if r.verdict != Verdict.NOT_RUN)
        self.flush()
        if self.on_record is not None:
            self.on_record(done)

    def pending(self, target: str, side: str | None, profile: str) -> list[str]:
        with self._lock:
            return [
                c[3]
                for c in self._order
                if c[:3] == (target, side, profile) and self._cells[c].verdict == Verdict.NOT_RUN
            ]

    def fill_pending(self, verdict: Verdict, reason: str) -> None:
        """Give every unfinished cell this verdict and reason (a build that
        failed for all, or the reason a run stopped early)."""
        with self._lock:
            for cell, r in self._cells.items():
                if r.verdict == Verdict.NOT_RUN:
                    self._cells[cell] = replace(r, verdict=verdict, reason=reason)
        self.flush()

    def finish(self, timings: dict[str, float], interrupted: str | None = None) -> RunResult:
        with self._lock:
            self._run = replace(
                self._run, timings=timings, complete=interrupted is None, interrupted=interrupted
            )
        return self.flush()

    def snapshot(self) -> RunResult:
        with self._lock:
            return replace(self._run, results=tuple(self._cells[c] for c in self._order))

    def flush(self) -> RunResult:
        with self._write_lock:  # one writer at a time, and the newest snapshot wins
            run = self.snapshot()
            write_reports(run, self.output)
        return run
