"""An interrupted parallel run ends at once (issue 22, CI's hang of
test_sigint_in_the_middle_of_a_parallel_matrix): SIGINT may land anywhere in
the main thread while workers run, and no QEMU may start once the run is
being interrupted."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from harness import pipeline
from harness.errors import MachineError
from harness.machine import qemu
from harness.machine.qemu import QemuMachine, kill_all_machines
from harness.report import RunRecorder
from tests.unit.test_qmp_deadlines import spec


def test_no_qemu_starts_once_the_machines_were_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "_no_more_machines", False)  # process-wide; restored after the test
    kill_all_machines()
    machine = QemuMachine(spec(tmp_path, "answer"), tmp_path / "run")
    with pytest.raises(MachineError, match="not started: the run is being interrupted"):
        machine.__enter__()
    assert machine.proc is None


class _Unit:
    """Stands in for _ProfileRun: runs until the recorder freezes (or, if
    the pool never freezes it, for 30 s: a failing test must not leave
    threads that hold up the interpreter's exit)."""

    started: ClassVar[list[int]] = []
    first_started = threading.Event()

    def __init__(
        self, request: Any, artifacts: Any, profile: Any, recorder: RunRecorder, gate: Any, order: Any
    ) -> None:
        self.n, self.recorder = int(request.n), recorder

    def run(self) -> None:
        _Unit.started.append(self.n)
        _Unit.first_started.set()
        deadline = time.monotonic() + 30
        while not self.recorder.frozen and time.monotonic() < deadline:
            time.sleep(0.001)


@pytest.mark.parametrize("seed", range(20))
def test_sigint_anywhere_in_a_parallel_pool_ends_it_and_starts_no_queued_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(pipeline, "_ProfileRun", _Unit)
    monkeypatch.setattr(pipeline, "kill_all_machines", lambda: None)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    _Unit.started = []
    _Unit.first_started.clear()
    recorder = RunRecorder(tmp_path, "test", "qemu", "pkvm-harness run")
    target = SimpleNamespace(name="t")
    units: Any = [
        (SimpleNamespace(n=n, side=None, target=target), None, SimpleNamespace(name=f"p{n}", smp=2))
        for n in range(4)
    ]
    main = threading.main_thread().ident
    assert main is not None
    delay = random.Random(seed).uniform(0.0, 0.3)

    def interrupt() -> None:
        # Once a worker runs (the pool may still be submitting), whatever
        # the host's load: the signal must land inside _run_pool.
        if _Unit.first_started.wait(60):
            time.sleep(delay)
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt, daemon=True)
    try:
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            pipeline._run_pool(units, recorder, 2, pipeline.RunOrder())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert recorder.frozen
    assert 0 in _Unit.started and set(_Unit.started) <= {0, 1}  # the queued units never started
    assert not [t for t in threading.enumerate() if t.name.startswith("worker")]
