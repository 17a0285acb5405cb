"""The pytest plugin on real boots: `pytest scenarios/` gives the verdicts
`pkvm-harness run` gives for the same cells, shares one boot per profile,
runs the Python example scenario, and leaves no QEMU behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.conftest import DEFAULT_SUITE, Run, qemu_pids

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ["boot-health", "dma-roundtrip", "dma-fault-unmapped"]


def run_pytest(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`pytest scenarios/ ARGS` as a user runs it (the plugin comes from the
    entry point); returns the process and its junit XML."""
    xml = tmp_path / "junit.xml"
    argv = [sys.executable, "-m", "pytest", *args, f"--junitxml={xml}", "-p", "no:cacheprovider"]
    argv += ["--pkvm-output", str(tmp_path / "pytest"), "-rA"]
    proc = subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    sys.stderr.write(proc.stdout[-3000:])
    return proc, xml


def junit_verdicts(xml: Path) -> dict[str, tuple[str, str]]:
    """testcase name -> (the verdict its junit outcome says, the verdict the
    harness put in its properties)."""
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.find("error") is not None:
            outcome = "error"
        elif case.find("failure") is not None:
            outcome = "fail"
        elif (skipped := case.find("skipped")) is not None:
            outcome = "xfail" if skipped.get("type") == "pytest.xfail" else "skip"
        else:
            outcome = "pass"
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        out[case.attrib["name"]] = (outcome, props.get("verdict", ""))
    return out


@pytest.mark.xdist_group(DEFAULT_SUITE)
@pytest.mark.usefixtures("no_leaked_qemu")
def test_pytest_gives_the_verdicts_of_run(tmp_path: Path, default_suite: Run) -> None:
    proc, xml = run_pytest(
        tmp_path,
        "scenarios/",
        "--target",
        "mainline-7.3",
        "--profile",
        "smmuv3-nested",
        "-k",
        " or ".join(SCENARIOS),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    by_pytest = junit_verdicts(xml)
    assert set(by_pytest) == {f"{s}[smmuv3-nested]" for s in SCENARIOS}

    by_run = {
        f"{s}[{p}]": v
        for (s, p), v in default_suite.verdicts().items()
        if s in SCENARIOS and p == "smmuv3-nested"
    }
    assert by_run == {name: "pass" for name in by_pytest}
    assert {name: outcome for name, (outcome, _) in by_pytest.items()} == by_run
    assert {name: verdict for name, (_, verdict) in by_pytest.items()} == by_run

    # The three items shared one boot, as run's cells of a profile do.
    boots = sorted(p.name for p in (tmp_path / "pytest" / "boots" / "mainline-7.3").iterdir())
    assert boots == ["smmuv3-nested-1"]
    console = tmp_path / "pytest" / "boots" / "mainline-7.3" / "smmuv3-nested-1" / "console.log"
    assert "Protected" in console.read_text(errors="replace")
    props = [
        {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        for case in ET.parse(xml).getroot().iter("testcase")
    ]
    assert all(p["console_log"] == str(console) for p in props)


@pytest.mark.usefixtures("no_leaked_qemu")
def test_python_scenario_with_fixtures(tmp_path: Path) -> None:
    proc, xml = run_pytest(tmp_path, "scenarios/test_example_python.py", "--profile", "smmuv3-nested")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert junit_verdicts(xml) == {"test_protected_mode_over_ssh": ("pass", "")}
    boots = sorted(p.name for p in (tmp_path / "pytest" / "boots" / "mainline-7.3").iterdir())
    assert boots == ["smmuv3-nested-1"]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_ctrl_c_leaves_no_qemu(tmp_path: Path) -> None:
    """SIGINT while a shared boot is up: pytest unwinds, the plugin shuts
    the boot down (the fixture checks for QEMUs with tmp_path in their
    command line)."""
    argv = [sys.executable, "-m", "pytest", "scenarios/", "-p", "no:cacheprovider"]
    argv += ["--profile", "smmuv3-nested", "-k", " or ".join(SCENARIOS)]
    argv += ["--pkvm-output", str(tmp_path / "pytest")]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A shell without job control starts background jobs with SIGINT
        # ignored, and Python keeps it so: give pytest the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 900
        while not qemu_pids(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert qemu_pids(str(tmp_path)), "no boot started"
        time.sleep(5)  # booting or running boot-health
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == pytest.ExitCode.INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
