"""`avocado run scenarios/<x>.yaml` (through the shipped nrunner resolver and
runner) gives the verdicts `pkvm-harness run` gives, in avocado's own
job-results layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import load_results
from tests.e2e.conftest import DEFAULT_SUITE, Run

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ["boot-health", "dma-fault-unmapped"]


@pytest.mark.xdist_group(DEFAULT_SUITE)
@pytest.mark.usefixtures("no_leaked_qemu")
def test_avocado_run_gives_the_harness_verdicts(tmp_path: Path, default_suite: Run) -> None:
    avocado = str(Path(sys.executable).parent / "avocado")
    env = {**os.environ, "PKVM_HARNESS_TARGET": "mainline-7.3", "PKVM_HARNESS_PROFILES": "smmuv3-nested"}
    refs = [str(ROOT / "scenarios" / f"{s}.yaml") for s in SCENARIOS]
    proc = subprocess.run(
        [avocado, "run", "--job-results-dir", str(tmp_path / "avocado"), *refs],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (job,) = [p for p in (tmp_path / "avocado").iterdir() if p.name.startswith("job-")]
    tests = json.loads((job / "results.json").read_text())["tests"]
    by_name = {t["name"]: t["status"] for t in tests}
    assert (job / "results.xml").exists()  # avocado's own JUnit file

    direct = {
        f"{r.scenario}[{r.profile}]": str(r.verdict).upper()
        for r in load_results(default_suite.output).results
        if r.scenario in SCENARIOS and r.profile == "smmuv3-nested"
    }
    assert {k.split("-", 1)[-1] if k[:2].isdigit() else k: v for k, v in by_name.items()} == direct, (
        by_name,
        direct,
    )
