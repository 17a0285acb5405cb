"""The run pipeline: config -> kernel -> image -> machine -> session ->
scenario -> report. Each stage's output is a frozen value handed to the next.

One boot per profile; a scenario that kills the guest gets the next
scenarios a fresh boot."""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import __version__, ui
from harness.config.models import Profile, Scenario, Target
from harness.image import GuestImage, build_image
from harness.kernel import KernelBuild, build_kernel
from harness.machine import qemu_version
from harness.report import RunResult, ScenarioResult, Verdict, write_reports
from harness.scenario import ScenarioContext, run_scenario, skip_reason
from harness.scenario.capabilities import probe
from harness.session.guest import Guest, booted_guest


@dataclass(frozen=True)
class Artifacts:
    kernel: KernelBuild
    image: GuestImage
    seconds: float


def build_all(target: Target, jobs: int | None = None) -> Artifacts:
    start = time.monotonic()
    kernel = build_kernel(target, jobs=jobs)
    ui.info("kernel", f"{target.name}: {kernel.version} {'(cached)' if kernel.cached else ''} {kernel.image}")
    image = build_image()
    ui.info(
        "image",
        f"initramfs {image.key[:16]} {'(cached)' if image.cached else ''}"
        f" helpers: {', '.join(image.helpers) or 'none'}",
    )
    return Artifacts(kernel, image, time.monotonic() - start)


@dataclass(frozen=True)
class RunRequest:
    target: Target
    profiles: tuple[Profile, ...]
    scenarios: tuple[Scenario, ...]
    output: Path
    boot_timeout: float = 120.0


@dataclass
class _ProfileRun:
    request: RunRequest
    artifacts: Artifacts
    profile: Profile
    boots: list[dict[str, object]]
    results: list[ScenarioResult]

    def boot_dir(self) -> Path:
        return self.request.output / "boots" / f"{self.profile.name}-{len(self.boots) + 1}"

    @contextlib.contextmanager
    def guest(self) -> Iterator[Guest]:
        run_dir = self.boot_dir()
        ui.info("machine", f"booting {self.request.target.name} on {self.profile.name}")
        with booted_guest(
            self.profile,
            self.artifacts.kernel.image,
            self.artifacts.image,
            run_dir,
            self.request.target.cmdline,
            self.request.boot_timeout,
        ) as guest:
            outcome = guest.boot_outcome
            assert outcome is not None
            self.boots.append(
                {
                    "profile": self.profile.name,
                    "dir": str(run_dir),
                    "console_log": str(guest.console_log),
                    "ready": outcome.ready,
                    "verdict": outcome.verdict,
                    "reason": outcome.reason,
                    "boot_s": round(outcome.seconds, 3),
                    "events": [e.to_json() for e in guest.watcher.events],
                }
            )
            ui.info(
                "machine",
                f"{'ready' if outcome.ready else outcome.verdict.upper()}"
                f" in {outcome.seconds:.2f}s {outcome.reason}",
            )
            yield guest

    def run(self) -> None:
        pending = list(self.request.scenarios)
        while pending:
            with self.guest() as guest:
                outcome = guest.boot_outcome
                assert outcome is not None
                if not outcome.ready:
                    verdict = Verdict.FAIL if outcome.verdict == "fail" else Verdict.ERROR
                    for s in pending:
                        self._add(s, verdict, outcome.reason, guest)
                    return
                caps = probe(guest, self.artifacts.kernel, self.profile.features)
                while pending and not guest.dead:
                    scenario = pending.pop(0)
                    self._run_one(scenario, guest, caps)
                self.boots[-1]["events"] = [e.to_json() for e in guest.watcher.events]

    def _ctx(self, guest: Guest, caps: frozenset[str]) -> ScenarioContext:
        return ScenarioContext(
            target=self.request.target,
            profile=self.profile,
            capabilities=caps,
            console_log=str(guest.console_log),
            reproducer=str(guest.machine.run_dir / "reproduce-boot.sh"),
        )

    def _run_one(self, scenario: Scenario, guest: Guest, caps: frozenset[str]) -> None:
        ctx = self._ctx(guest, caps)
        why = skip_reason(scenario, ctx)
        if why is not None:
            self._add(scenario, Verdict.SKIP, why, guest)
            return
        ui.info("scenario", f"{scenario.name} on {self.profile.name} ...")
        result = run_scenario(scenario, guest, ctx)
        ui.info(
            "scenario", f"{scenario.name} on {self.profile.name}: {result.verdict.upper()} {result.reason}"
        )
        self.results.append(result)

    def _add(self, scenario: Scenario, verdict: Verdict, reason: str, guest: Guest) -> None:
        self.results.append(
            ScenarioResult(
                scenario=scenario.name,
                profile=self.profile.name,
                target=self.request.target.name,
                verdict=verdict,
                reason=reason,
                duration_s=0.0,
                events=tuple(e.to_json() for e in guest.watcher.events if e.severity != "info"),
                console_log=str(guest.console_log),
                reproducer=str(guest.machine.run_dir / "reproduce-boot.sh"),
            )
        )
        ui.info("scenario", f"{scenario.name} on {self.profile.name}: {verdict.upper()} {reason}")


def run(request: RunRequest) -> RunResult:
    qemu = qemu_version()
    artifacts = build_all(request.target)
    results: list[ScenarioResult] = []
    boots: list[dict[str, object]] = []
    start = time.monotonic()
    for profile in request.profiles:
        _ProfileRun(request, artifacts, profile, boots, results).run()
    run_result = RunResult(
        harness_version=__version__,
        qemu_version=qemu,
        target=request.target.name,
        kernel={
            **artifacts.kernel.metadata,
            "image": str(artifacts.kernel.image),
            "cached": artifacts.kernel.cached,
        },
        image={**artifacts.image.metadata, "key": artifacts.image.key, "cached": artifacts.image.cached},
        results=tuple(results),
        timings={
            "build_s": round(artifacts.seconds, 3),
            "boot_and_test_s": round(time.monotonic() - start, 3),
        },
        command=shlex.join(["pkvm-harness", *sys.argv[1:]]),
        boots=tuple(boots),
    )
    write_reports(run_result, request.output)
    _write_reproducer(request, run_result)
    return run_result


def _target_args(target: Target) -> list[str]:
    """Command-line arguments that rebuild exactly this target (overrides
    given on the command line included)."""
    args = ["--target", str(target.path) if target.path else target.name]
    if target.source.kind != "debian":
        args += ["--source", target.source.location]
    if target.series is not None:
        args += ["--series", target.series.location]
    args += ["--toolchain", target.toolchain]
    return args


def _write_reproducer(request: RunRequest, run_result: RunResult) -> None:
    lines = ["#!/bin/sh", "# Re-run exactly what failed in this run.", "set -e"]
    failed = [r for r in run_result.results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    rerun = request.output / "rerun"
    for r in failed:
        argv = [
            "pkvm-harness",
            "run",
            *_target_args(request.target),
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
