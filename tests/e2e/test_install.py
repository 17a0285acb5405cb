"""`pip install .` (not editable) into a fresh venv, used from outside the
source tree: the data directories come with the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import Verdict, load_results

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_a_plain_install_outside_the_tree_lists_and_runs_boot_health(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], capture_output=True, text=True, cwd=tmp_path
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    exe = str(venv / "bin" / "pkvm-harness")
    listing = subprocess.run([exe, "list", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert '"boot-health"' in listing.stdout and '"mainline-7.3"' in listing.stdout
    out = tmp_path / "out"
    run = subprocess.run(
        [exe, "run", "--profile", "smmuv3-nested", "--output", str(out), "boot-health"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (result,) = load_results(out).results
    assert result.verdict == Verdict.PASS
    # It really ran from the installed copy, not from this checkout.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import harness.paths as p; print(p.data_dir('scenarios'))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.strip().startswith(str(venv)), where.stdout
