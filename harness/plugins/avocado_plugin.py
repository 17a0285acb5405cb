"""avocado-framework front-end, in avocado's nrunner design: a *resolver*
turns `avocado run scenarios/<x>.yaml` into one runnable of kind
`pkvm-scenario` per profile, and a *runner* (`avocado-runner-pkvm-scenario`,
a standalone executable, as nrunner wants) runs it.

Why this design: nrunner runs every test as a standalone runnable, spawned
and isolated by avocado, with its results, logs and JUnit file in avocado's
own job-results layout; a resolver + runner pair is how avocado adds a test
type without touching its core. The runner calls `pkvm-harness run` for one
cell and maps the harness's verdict; whether something is the kernel's FAIL
or the harness's ERROR is still decided in one place, the harness. The cost
of the isolation is a boot per test (about 2 s under TCG); pytest's plugin
shares boots instead.

Selection: PKVM_HARNESS_TARGET (default mainline-7.3) and
PKVM_HARNESS_PROFILES (comma-separated; default smmuv3-nested,virtio-iommu),
or a reference `scenarios/x.yaml:profile` for one profile."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import yaml
from avocado.core.nrunner.app import BaseRunnerApp
from avocado.core.nrunner.runnable import Runnable
from avocado.core.nrunner.runner import BaseRunner
from avocado.core.plugin_interfaces import Resolver
from avocado.core.resolver import ReferenceResolution, ReferenceResolutionResult

from harness.config.defaults import DEFAULT_PROFILES, DEFAULT_TARGET
from harness.report.verdicts import AVOCADO, Verdict

KIND = "pkvm-scenario"


def _is_scenario(path: Path) -> bool:
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and "steps" in doc and "name" in doc


class ScenarioResolver(Resolver):  # type: ignore[misc]
    name = KIND
    description = "pkvm-harness scenario YAML files, one test per profile"

    def resolve(self, reference: str) -> Any:
        path_text, _, profile = reference.partition(":")
        path = Path(path_text)
        if not _is_scenario(path):
            return ReferenceResolution(reference, ReferenceResolutionResult.NOTFOUND)
        target = os.environ.get("PKVM_HARNESS_TARGET", DEFAULT_TARGET)
        env_profiles = os.environ.get("PKVM_HARNESS_PROFILES")
        profiles = (
            [profile] if profile else (env_profiles.split(",") if env_profiles else list(DEFAULT_PROFILES))
        )
        name = str(yaml.safe_load(path.read_text())["name"])
        runnables = [
            Runnable(KIND, f"{path.resolve()}:{p}", identifier=f"{name}[{p}]", target=target, profile=p)
            for p in profiles
        ]
        return ReferenceResolution(reference, ReferenceResolutionResult.SUCCESS, runnables)


def run_cell(scenario: str, target: str, profile: str, output: Path) -> dict[str, Any]:
    """One cell through the harness's own command; returns the status the
    runner reports, from results.json read through the loader."""
    from harness.report import load_results

    argv = [sys.executable, "-m", "harness.cli", "run", "--target", target, "--profile", profile]
    argv += ["--output", str(output), scenario]
    proc = subprocess.run(argv, capture_output=True, text=True)
    try:
        (result,) = load_results(output).results
    except Exception as exc:  # no results: the harness itself could not run
        last = (proc.stderr.strip().splitlines() or [str(exc)])[-1]
        return {"result": AVOCADO[Verdict.ERROR], "fail_reason": last, "returncode": proc.returncode}
    status: dict[str, Any] = {"result": AVOCADO[result.verdict], "returncode": proc.returncode}
    if result.reason:
        status["fail_reason"] = f"{result.verdict}: {result.reason}"
    return status


class ScenarioRunner(BaseRunner):  # type: ignore[misc]
    name = KIND
    description = "Runs one pkvm-harness scenario on one profile"

    def run(self, runnable: Any) -> Iterator[dict[str, Any]]:
        yield self.prepare_status("started")
        scenario, _, profile = str(runnable.uri).rpartition(":")
        target = runnable.kwargs.get("target", DEFAULT_TARGET)
        profile = runnable.kwargs.get("profile", profile)
        with tempfile.TemporaryDirectory(prefix="pkvm-avocado-") as tmp:
            out = Path(tmp) / "out"
            status = run_cell(scenario, target, profile, out)
            for name in ("results.json", "junit.xml"):
                if (out / name).exists():
                    data = (out / name).read_bytes()
                    yield self.prepare_status("running", {"type": "file", "path": name, "log": data})
            for console in sorted(out.glob("boots/*/*/console.log")):
                path = f"{console.parent.name}-console.log"
                data = console.read_bytes()
                yield self.prepare_status("running", {"type": "file", "path": path, "log": data})
            yield self.prepare_status("running", {"type": "stdout", "log": str(status).encode() + b"\n"})
        yield self.prepare_status("finished", status)


class RunnerApp(BaseRunnerApp):  # type: ignore[misc]
    PROG_NAME = "avocado-runner-pkvm-scenario"
    PROG_DESCRIPTION = "nrunner application for pkvm-harness scenarios"
    RUNNABLE_KINDS_CAPABLE: ClassVar[list[str]] = [KIND]


def main() -> None:
    RunnerApp(print).run()


if __name__ == "__main__":
    main()
