"""pkvm-harness benchmark: prints figures and ratios against the targets.

    .venv/bin/python bench/bench.py [--target mainline-7.3] [--profile smmuv3-nested]
                                    [--boots 5] [--round-trips 50] [--cold] [--lava]

Measured in one run:
- build: cold (an empty harness cache; ccache stays warm unless --cold-ccache)
  only with --cold, because it takes minutes; warm (a cache hit) always;
- boot to the readiness marker, through the harness (QEMU start, QMP, cont);
- SSH ready after the marker;
- serial command round trip;
- the same kernel + initramfs booted by a bare `qemu-system-aarch64` under
  pexpect, and the ratio harness/bare.
- with --lava: the cell boot-health + dma-roundtrip + dma-fault-unmapped
  run directly and as a LAVA job under lava-run (export, lava-run, import),
  wall times side by side and their ratio.
- with --make-test: `make test` as a new machine runs it (a fresh clone of
  HEAD, a new venv, an empty harness cache and an empty ccache), its wall
  time against the CI budget (45 min), each phase ci/test.sh names, and
  the 25 slowest tests. With --make-run: the warm default suite (`make
  run` with the kernel cached) against its goal (180 s), then with -j 1
  (the ratio, and whether the verdicts agree).
- with --cells: the vm-lifecycle cell (goal 15 s) and the kselftest-kvm
  cell, in one boot.
Targets (from the project's issue): boot <= 2 s, SSH <= 0.5 s after the
marker, round trip <= 50 ms, ratio <= 1.10. Speed goals are reported here,
not asserted in tests.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

import pexpect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import pipeline
from harness.config import Registry
from harness.image.initramfs import READY_MARKER
from harness.machine.profile import MachineSpec, kernel_cmdline, reproducer_argv
from harness.machine.qemu import free_port
from harness.session.guest import booted_guest


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def line(name: str, value: float, unit: str, goal: float | None = None) -> None:
    verdict = ""
    if goal is not None:
        verdict = f"  (goal <= {goal:g} {unit}: {'met' if value <= goal else 'MISSED'})"
    print(f"{name:<38} {value:>10.3f} {unit}{verdict}")


def build_times(target_name: str, cold: bool) -> None:
    target = Registry().target(target_name)
    if cold:
        with tempfile.TemporaryDirectory(prefix="pkvm-bench-cache-") as cache:
            env_before = os.environ.get("PKVM_HARNESS_CACHE")
            os.environ["PKVM_HARNESS_CACHE"] = cache
            start = time.monotonic()
            pipeline.build_all(target)
            line("build, cold (empty harness cache)", time.monotonic() - start, "s")
            if env_before is None:
                del os.environ["PKVM_HARNESS_CACHE"]
            else:
                os.environ["PKVM_HARNESS_CACHE"] = env_before
    pipeline.build_all(target)  # make sure the real cache is populated
    warm = []
    for _ in range(3):
        start = time.monotonic()
        pipeline.build_all(target)
        warm.append(time.monotonic() - start)
    line("build, warm (cache hit, no make)", median(warm), "s", 2.0)


def harness_boots(
    artifacts: pipeline.Artifacts, profile_name: str, boots: int, round_trips: int
) -> tuple[float, float, float, float]:
    profile = Registry().profile(profile_name)
    to_marker, since_launch, ssh, rtt = [], [], [], []
    for i in range(boots):
        with (
            tempfile.TemporaryDirectory(prefix="pkvm-bench-") as tmp,
            booted_guest(profile, artifacts.kernel.image, artifacts.image, Path(tmp) / f"boot{i}") as guest,
        ):
            outcome = guest.boot_outcome
            assert outcome is not None and outcome.ready, outcome
            assert outcome.since_launch is not None
            since_launch.append(outcome.since_launch)
            to_marker.append(outcome.seconds)
            guest.ssh()
            assert guest.ssh_connect_s is not None
            ssh.append(guest.ssh_connect_s)
            if i == 0:
                for _ in range(round_trips):
                    r = guest.run("serial", "true", 5)
                    rtt.append(r.duration_s)
    return median(since_launch), median(to_marker), median(ssh), median(rtt)


def bare_boots(artifacts: pipeline.Artifacts, profile_name: str, boots: int) -> float:
    """The same machine with no harness: QEMU on stdio, pexpect waits for
    the marker. Measured from spawn, like the harness figure it is compared to."""
    profile = Registry().profile(profile_name)
    times = []
    for _ in range(boots):
        with tempfile.TemporaryDirectory(prefix="pkvm-bare-") as tmp:
            initrd = artifacts.image.with_overlay({}, Path(tmp) / "initrd.cpio")
            scratch = Path(tmp) / "scratch.img"  # the same machine: same devices
            with scratch.open("wb") as f:
                f.truncate(profile.scratch_disk_mb << 20)
            spec = MachineSpec(
                profile=profile,
                kernel=artifacts.kernel.image,
                initrd=initrd,
                cmdline=kernel_cmdline(profile),
                serial_socket=Path(tmp) / "s",
                qmp_socket=Path(tmp) / "q",
                console_log=Path(tmp) / "c",
                ssh_port=free_port(),
                scratch_disk=scratch if profile.scratch_disk_mb else None,
            )
            argv = reproducer_argv(spec)
            start = time.monotonic()
            child = pexpect.spawn(argv[0], argv[1:], timeout=120, encoding="utf-8", codec_errors="replace")
            try:
                child.expect(READY_MARKER)
                times.append(time.monotonic() - start)
            finally:
                child.terminate(force=True)
    return median(times)


def _cli(*args: str) -> tuple[int, float]:
    start = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.DEVNULL).returncode
    return rc, time.monotonic() - start


def matrix_ratio(matrix: str) -> None:
    """#8 §6: the same matrix with -j 1 and -j 2; same verdicts, wall ratio."""
    from harness.report import load_results

    walls, verdicts = {}, {}
    with tempfile.TemporaryDirectory(prefix="pkvm-bench-") as tmp:
        for jobs in (1, 2):
            out = Path(tmp) / f"j{jobs}"
            _, walls[jobs] = _cli("run", "--matrix", matrix, "-j", str(jobs), "--output", str(out))
            verdicts[jobs] = {(r.target, r.profile, r.scenario): r.verdict for r in load_results(out).results}
    line(f"matrix {matrix}: -j 1 wall", walls[1], "s")
    line(f"matrix {matrix}: -j 2 wall", walls[2], "s")
    line("ratio -j 2 / -j 1", walls[2] / walls[1], "x", 0.7)
    print(f"{'same verdicts with -j 1 and -j 2':<38} {verdicts[1] == verdicts[2]!s:>10}")


def hang_to_fail() -> None:
    """#11 §7: from a silent hang to its FAIL (the pvm-hang negative series),
    against the 120 s boot timeout / 300 s step timeout it used to take."""
    from harness.report import load_results

    series = str(Path(__file__).resolve().parent.parent / "tests" / "data" / "series" / "pvm-hang.patch")
    with tempfile.TemporaryDirectory(prefix="pkvm-bench-") as tmp:
        _cli("run", "--series", series, "--profile", "smmuv3-nested", "--output", tmp, "pvm-rules")
        (result,) = load_results(Path(tmp)).results
        step = next(s for s in result.steps if s.verdict == "fail")
    print(f"{'hang: verdict':<38} {result.verdict!s:>10}")
    line("hang: failing step's duration", step.duration_s, "s", 30.0)


def series_costs() -> None:
    """#7: per-patch incremental build time (series check) and bisect wall."""
    from harness.series.load import load_bisect, load_series_report

    review = Path(__file__).resolve().parent.parent / "tests" / "data" / "series-review"
    with tempfile.TemporaryDirectory(prefix="pkvm-bench-") as tmp:
        _cli("series", "check", "--series", str(review / "new-warning.mbox"), "--output", f"{tmp}/c")
        report = load_series_report(Path(f"{tmp}/c"))
        seconds = [c.seconds for p in report.patches for c in p.checks if c.check == "build" and c.seconds]
        line("series check: median per-patch build", median(seconds), "s", 30.0)
        _, wall = _cli(
            "series", "bisect", "--series", str(review / "bisect-dma.mbox"), "--profile", "smmuv3-nested",
            "--output", f"{tmp}/b", str(review.parent / "scenarios" / "after-unmap-quick.yaml"),
        )  # fmt: skip
        counts = load_bisect(Path(f"{tmp}/b")).counts
        line("series bisect (7 patches): wall", wall, "s")
        print(f"{'series bisect: builds / boots':<38} {counts['builds']:>5} / {counts['boots']}")


def lava_vs_direct(target: str, profile: str) -> None:
    """#8 §5: the same cell run by the harness and by LAVA's dispatcher
    (export, lava-run with the generated device, import): wall times, ratio,
    and whether the verdicts agree. Reported, not asserted."""
    from harness.export.lava import run_job_locally
    from harness.report import load_results

    cell = ["boot-health", "dma-roundtrip", "dma-fault-unmapped"]
    picks = [a for s in cell for a in ("--scenario", s)]
    with tempfile.TemporaryDirectory(prefix="pkvm-bench-") as tmp:
        _, direct = _cli("run", "--target", target, "--profile", profile, "--output", f"{tmp}/direct", *cell)
        _, export = _cli(
            "lava", "export", "--target", target, "--profile", profile, *picks, "--device-dict",
            "--output", f"{tmp}/export",
        )  # fmt: skip
        rc, lava_run = run_job_locally(Path(tmp) / "export" / f"{target}_{profile}", Path(tmp) / "lava")
        _, imported = _cli("lava", "import", f"{tmp}/lava", "--output", f"{tmp}/imported")
        verdicts = [
            {r.scenario: r.verdict for r in load_results(Path(tmp) / d).results}
            for d in ("direct", "imported")
        ]
    print(f"LAVA vs direct: {target} x {profile} x {' + '.join(cell)}")
    line("direct `pkvm-harness run` wall", direct, "s")
    line("lava export wall (cached build)", export, "s")
    line(f"lava-run wall (rc {rc})", lava_run, "s")
    line("lava import wall", imported, "s")
    line("ratio lava-run / direct", lava_run / direct, "x")
    line("ratio export+lava-run+import / direct", (export + lava_run + imported) / direct, "x")
    print(f"{'same verdicts via LAVA and direct':<38} {verdicts[0] == verdicts[1]!s:>10}")


_PHASE = re.compile(r"^== (?P<name>.+) \((?P<at>\d\d:\d\d:\d\d)\)$", re.MULTILINE)
MAKE_TEST_BUDGET_S = 45 * 60
MAKE_RUN_WARM_GOAL_S = 180


def _phases(output: str, start: float, end: float) -> list[tuple[str, float]]:
    """`make setup` (to ci/test.sh's first line), then ci/test.sh's
    `== phase (HH:MM:SS, UTC)` lines as (phase, seconds): from each line to
    the next one, the last to the end."""
    day = time.strftime("%Y-%m-%d", time.gmtime(start))
    marks = [
        (m["name"], float(calendar.timegm(time.strptime(f"{day} {m['at']}", "%Y-%m-%d %H:%M:%S"))))
        for m in _PHASE.finditer(output)
    ]
    if not marks:
        return []
    bounds = [t for _, t in marks[1:]] + [end]
    return [("setup (make setup)", marks[0][1] - start)] + [
        (name, max(0.0, until - at)) for (name, at), until in zip(marks, bounds, strict=True)
    ]


def make_test_cold(keep: Path | None) -> None:
    """`make test` on what a new machine has: setup is idempotent (the host
    packages stay), everything the project builds or caches starts empty.
    With `keep`, the clone, the caches and the log (make-test.log) stay
    there for a look afterwards."""
    repo = Path(__file__).resolve().parent.parent
    with contextlib.ExitStack() as stack:
        if keep is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pkvm-bench-make-test-"))
        else:
            keep.mkdir(parents=True, exist_ok=False)
            tmp = str(keep)
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        env = {
            **os.environ,
            "PKVM_HARNESS_CACHE": str(Path(tmp) / "cache"),
            "CCACHE_DIR": str(Path(tmp) / "ccache"),
            "CI": "true",
        }
        start = time.time()
        proc = subprocess.run(
            ["make", "test"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        end = time.time()
        (Path(tmp) / "make-test.log").write_text(proc.stdout)
        junit = clone / "out" / "e2e-junit.xml"
        if proc.returncode == 0 and junit.is_file():
            record_e2e_durations(junit, repo / "tests" / "e2e" / "durations.json")
    output = proc.stdout
    line("make test, new machine: wall", end - start, "s", MAKE_TEST_BUDGET_S)
    print(f"{'make test exit code':<38} {proc.returncode:>10}")
    for name, seconds in _phases(output, start, end):
        line(f"  {name[:36]}", seconds, "s")
    # pytest's --durations table of the end-to-end run (the last one printed).
    table = output[output.rfind("slowest") :].splitlines()[1:26] if "slowest" in output else []
    for row in table:
        print(f"    {row}")


def record_e2e_durations(junit: Path, out: Path) -> None:
    """Each e2e test's seconds on a cold `make test` (its junit.xml), for
    the longest-first order of tests/e2e/conftest.py."""
    root = ElementTree.parse(junit).getroot()
    seconds: dict[str, float] = {}
    for case in root.iter("testcase"):
        # junit names a test by dotted class and name; pytest's nodeid is
        # the file path, "::" and the name (with its parameters).
        path = case.get("classname", "").replace(".", "/") + ".py"
        nodeid = f"{path}::{case.get('name', '')}".split("@", 1)[0]
        seconds[nodeid] = round(seconds.get(nodeid, 0.0) + float(case.get("time", 0) or 0), 1)
    ordered = dict(sorted(seconds.items(), key=lambda kv: -kv[1]))
    out.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"{'e2e durations recorded':<38} {len(ordered):>10}  ({out})")


# The cells #23 made shorter, and each one's goal (s); None: no goal.
CELL_GOALS: dict[str, float | None] = {"vm-lifecycle": 15.0, "kselftest-kvm": None}


def cell_times(target: str, profile: str) -> None:
    """#23: the cells of the slowest scenarios, run in one boot. Before:
    vm-lifecycle 57-60 s (100 + 10 cycles, MemFree), kselftest-kvm 55-61 s
    (one binary at a time), on an idle 2-CPU machine. Measured 2026-12-03
    in back-to-back pairs on a shared host, before / after: vm-lifecycle
    104 / 10.9 s and 101 / 10.3 s; kselftest-kvm 101 / 63 s (0.63) and
    114 / 44 s (0.39)."""
    from harness.report import load_results

    names = list(CELL_GOALS)
    with tempfile.TemporaryDirectory(prefix="pkvm-bench-cells-") as tmp:
        _cli("run", "--target", target, "--profile", profile, "--output", tmp, *names)
        results = {r.scenario: r for r in load_results(Path(tmp)).results}
    for name in names:
        r = results[name]
        line(f"cell {name} ({r.verdict})", r.duration_s, "s", CELL_GOALS[name])


def make_run_warm(target: str) -> None:
    """The default suite with the kernel cached, as `make run` runs it (its
    profiles side by side, a worker per CPU), then the same with -j 1: the
    walls, their ratio, and whether the verdicts agree. Each run goes to a
    new directory, so neither is ordered by the other's history."""
    from harness.report import load_results

    walls, verdicts, codes = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="pkvm-bench-run-") as tmp:
        for jobs in ("default", "1"):
            out = Path(tmp) / f"j{jobs}"
            extra = [] if jobs == "default" else ["-j", jobs]
            codes[jobs], walls[jobs] = _cli("run", "--target", target, *extra, "--output", str(out))
            verdicts[jobs] = {(r.profile, r.scenario): r.verdict for r in load_results(out).results}
    line("make run, warm: wall", walls["default"], "s", MAKE_RUN_WARM_GOAL_S)
    print(f"{'make run exit code':<38} {codes['default']:>10}")
    line("the same suite, -j 1: wall", walls["1"], "s")
    line("ratio make run / -j 1", walls["default"] / walls["1"], "x")
    print(f"{'same verdicts with -j 1':<38} {verdicts['default'] == verdicts['1']!s:>10}")


def boot_medians(args: argparse.Namespace) -> None:
    build_times(args.target, args.cold)
    artifacts = pipeline.build_all(Registry().target(args.target))
    launch, marker, ssh, rtt = harness_boots(artifacts, args.profile, args.boots, args.round_trips)
    line("boot: cont -> readiness marker", marker, "s", 2.0)
    line("boot: QEMU launch -> marker (harness)", launch, "s")  # QMP attach + cont included
    line("ssh ready after the marker", ssh, "s", 0.5)
    line("serial command round trip", rtt * 1000, "ms", 50)
    bare = bare_boots(artifacts, args.profile, args.boots)
    line("boot: bare qemu + pexpect -> marker", bare, "s")
    line("ratio harness / bare", launch / bare, "x", 1.10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="mainline-7.3")
    ap.add_argument("--profile", default="smmuv3-nested")
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--round-trips", type=int, default=50)
    ap.add_argument("--cold", action="store_true", help="also time a cold build (minutes)")
    ap.add_argument("--matrix", help="also time this matrix with -j 1 and -j 2 (e.g. smoke)")
    ap.add_argument("--faults", action="store_true", help="also time hang -> FAIL (pvm-hang series)")
    ap.add_argument("--series", action="store_true", help="also time series check and bisect")
    ap.add_argument("--lava", action="store_true", help="also time the cell under lava-run vs direct")
    ap.add_argument("--only-lava", action="store_true", help="only the LAVA comparison (no boot medians)")
    ap.add_argument("--no-boots", action="store_true", help="skip the build and boot medians")
    ap.add_argument(
        "--make-test", action="store_true", help="also time `make test` as a new machine (~45 min)"
    )
    ap.add_argument("--make-run", action="store_true", help="also time the warm default suite (`make run`)")
    ap.add_argument("--cells", action="store_true", help="also time the vm-lifecycle and kselftest-kvm cells")
    ap.add_argument("--keep", type=Path, help="with --make-test: run in this new directory and keep it")
    args = ap.parse_args()

    qemu = subprocess.run(["qemu-system-aarch64", "--version"], capture_output=True, text=True)
    print(
        f"pkvm-harness benchmark: {args.target} on {args.profile}, {os.cpu_count()} CPUs,"
        f" {qemu.stdout.splitlines()[0]}, medians of {args.boots} boots"
    )
    if args.only_lava:  # the LAVA figures alone (no boot medians)
        lava_vs_direct(args.target, args.profile)
        return 0
    if not args.no_boots:
        boot_medians(args)
    if args.matrix:
        matrix_ratio(args.matrix)
    if args.faults:
        hang_to_fail()
    if args.series:
        series_costs()
    if args.lava:
        lava_vs_direct(args.target, args.profile)
    if args.cells:
        cell_times(args.target, args.profile)
    if args.make_run:
        make_run_warm(args.target)
    if args.make_test:
        make_test_cold(args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
