"""End-to-end tests: real kernels built by the harness, booted under QEMU.

They need the host set up by ci/setup-host.sh (QEMU 10, cross gcc, kernel
sources). Builds are cached by content, so only the first run is slow."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.report import RunResult, load_results

HARNESS = [sys.executable, "-m", "harness.cli"]
SERIES = Path(__file__).resolve().parent.parent / "data" / "series"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    # The tests that read `make run`'s results go first and together (one
    # xdist worker, `--dist loadgroup`): that run is the longest piece. The
    # rest go longest first (as a cold `make test` measured them), so that
    # the last tests handed out are short and neither worker idles long at
    # the end. Unknown tests count as typical ones.
    seconds = _recorded_durations()
    typical = sorted(seconds.values())[len(seconds) // 2] if seconds else 0.0

    def order(item: pytest.Item) -> tuple[bool, float]:
        recorded = seconds.get(item.nodeid.split("@", 1)[0], typical)
        return item.get_closest_marker("xdist_group") is None, -recorded

    items.sort(key=order)


DURATIONS = Path(__file__).resolve().parent / "durations.json"


def _recorded_durations() -> dict[str, float]:
    """nodeid -> seconds, written by `bench/bench.py --make-test` from the
    e2e junit.xml of a cold `make test` (tests/e2e/durations.json)."""
    try:
        raw = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


@pytest.fixture(scope="session", autouse=True)
def host_ready() -> None:
    missing = [t for t in ("qemu-system-aarch64", "aarch64-linux-gnu-gcc") if not shutil.which(t)]
    if missing:
        pytest.fail(f"host not set up ({', '.join(missing)} missing): run sudo ci/setup-host.sh")


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    output: Path

    @property
    def run_result(self) -> RunResult:
        """Through the loader, as every reader: it validates the schema."""
        return load_results(self.output)

    @property
    def results(self) -> dict[str, Any]:
        return self.run_result.to_json()

    def verdicts(self) -> dict[tuple[str, str], str]:
        return {(r["scenario"], r["profile"]): r["verdict"] for r in self.results["results"]}


def harness(*args: str, output: Path | None = None, timeout: float = 3000) -> Run:
    argv = [*HARNESS, *args]
    if output is not None:
        argv += ["--output", str(output)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    sys.stderr.write(proc.stderr[-3000:])
    return Run(proc.returncode, proc.stdout, proc.stderr, output or Path("."))


def qemu_pids(pattern: str = "") -> set[int]:
    """QEMU processes, optionally only those whose command line contains
    `pattern` (a test's own output directory: other QEMUs on the machine
    are not this test's business)."""
    argv = (
        ["pgrep", "-f", f"qemu-system-aarch64.*{pattern}"] if pattern else ["pgrep", "-x", "qemu-system-aar"]
    )
    out = subprocess.run(argv, capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


@pytest.fixture
def no_leaked_qemu(tmp_path: Path) -> Any:
    yield
    leaked = qemu_pids(str(tmp_path))
    assert not leaked, f"QEMU processes left behind: {leaked}"


DEFAULT_SUITE = "default-suite"


@pytest.fixture(scope="session")
def default_suite(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`make run` itself: every scenario on the default target and both
    default profiles, run once for the whole test session and read by the
    tests that check its pieces (they are marked
    `xdist_group(DEFAULT_SUITE)`, so one xdist worker has them all; a file
    lock makes any other worker that asks wait for the same run instead of
    starting a second one)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    output = shared / DEFAULT_SUITE
    record = shared / f"{DEFAULT_SUITE}.json"
    with (shared / f"{DEFAULT_SUITE}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            run = harness("run", "--target", "mainline-7.3", output=output)
            assert not qemu_pids(str(output)), "QEMU processes left behind by `make run`'s suite"
            record.write_text(json.dumps({"rc": run.rc, "stdout": run.stdout, "stderr": run.stderr}))
        saved = json.loads(record.read_text())
    return Run(saved["rc"], saved["stdout"], saved["stderr"], output)


def run_scenarios(output: Path, target: str, profiles: list[str], scenarios: list[str], *extra: str) -> Run:
    """`pkvm-harness run` of `scenarios` on `target`, once per profile."""
    profile_args = [arg for p in profiles for arg in ("--profile", p)]
    return harness("run", "--target", target, *extra, *profile_args, *scenarios, output=output)


def run_broken(tmp_path: Path, series: str, profile: str, scenario: str) -> dict[str, Any]:
    """Run one scenario on mainline-7.3 carrying a NEGATIVE TEST series from
    tests/data/series; it must FAIL (exit 1). Returns its result."""
    run = run_scenarios(tmp_path, "mainline-7.3", [profile], [scenario], "--series", str(SERIES / series))
    assert run.rc == 1, (run.rc, run.stderr[-2000:])
    (result,) = run.results["results"]
    assert result["verdict"] == "fail"
    patches = run.results["targets"][0]["kernel"]["series"]["patches"]
    assert patches and all("NEGATIVE TEST" in p["subject"] for p in patches)
    return result  # type: ignore[no-any-return]


def interrupt_after_first_cell(args: list[str], output: Path, sig: int = 2) -> int:
    """Start `pkvm-harness ARGS --output OUTPUT`, send `sig` (SIGINT) once
    results.json holds a finished cell, and return the exit code."""
    import signal
    import time

    from harness.report import Verdict

    stderr = output.parent / f"{output.name}.stderr"
    with stderr.open("wb") as log:
        proc = subprocess.Popen([*HARNESS, *args, "--output", str(output)], stdout=log, stderr=log)
    results = output / "results.json"
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if results.exists() and any(r.verdict != Verdict.NOT_RUN for r in load_results(results).results):
                break
            time.sleep(0.2)
        proc.send_signal(signal.Signals(sig))
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # the harness prints its threads' stacks
            time.sleep(2)
            tail = stderr.read_text(errors="replace")[-6000:]
            raise AssertionError(f"no exit within 60s of the signal; its stderr ends:\n{tail}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
