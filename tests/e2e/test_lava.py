"""#8 §5: one exported LAVA job runs under `lava-run` on this machine (a
generated device dictionary for a local qemu device), its output imports
into results.json, and the verdicts match a direct `pkvm-harness run` of
the same cell, step by step. QEMU under LAVA binds no port off loopback
and does not outlive lava-run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.export.lava import descendants, run_job_locally
from harness.report import ScenarioResult, load_results
from tests.e2e.conftest import DEFAULT_SUITE, Run, harness

CELL = ["boot-health", "dma-roundtrip", "dma-fault-unmapped"]


def _qemus_below(pid: int) -> set[int]:
    def comm(p: int) -> str:
        try:
            return Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            return ""

    return {p for p in descendants(pid) if comm(p).startswith("qemu-system")}


def _listening(pid: int) -> list[str]:
    """Local addresses `pid` listens on (TCP and UDP)."""
    out = subprocess.run(["ss", "-Hlntup"], capture_output=True, text=True).stdout
    return [ln.split()[4] for ln in out.splitlines() if f"pid={pid}," in ln]


def verdicts(results: tuple[ScenarioResult, ...]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    return {r.scenario: (str(r.verdict), [(s.name, str(s.verdict)) for s in r.steps]) for r in results}


@pytest.mark.xdist_group(DEFAULT_SUITE)
@pytest.mark.usefixtures("no_leaked_qemu")
def test_lava_job_verdicts_match_the_direct_run(tmp_path: Path, default_suite: Run) -> None:
    if shutil.which("lava-run") is None:
        pytest.fail("lava-run missing: run sudo ci/setup-host.sh (installs lava-dispatcher)")
    export = harness(
        "lava", "export", "--target", "mainline-7.3", "--profile", "smmuv3-nested",
        *(a for s in CELL for a in ("--scenario", s)), "--device-dict",
        output=tmp_path / "export",
    )  # fmt: skip
    assert export.rc == 0, export.stderr[-2000:]
    job_dir = tmp_path / "export" / "mainline-7.3_smmuv3-nested"
    assert (job_dir / "job.yaml").is_file() and (job_dir / "device.yaml").is_file()
    assert (tmp_path / "export" / "left-out.txt").is_file()

    seen: dict[int, list[str]] = {}

    def watch(lava_run: int) -> None:
        for pid in _qemus_below(lava_run):
            seen.setdefault(pid, []).extend(_listening(pid))

    lava_out = tmp_path / "lava-out"
    rc, wall = run_job_locally(job_dir, lava_out, timeout=1500, watch=watch)
    log = (lava_out / "output.yaml").read_text()
    assert rc == 0, log[-3000:]
    assert seen, "QEMU was never seen running under lava-run (the port check saw nothing)"
    for pid, addrs in seen.items():
        assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addrs), (pid, addrs)
    assert not any(subprocess.run(["kill", "-0", str(p)], capture_output=True).returncode == 0 for p in seen)

    imported = harness("lava", "import", str(lava_out), output=tmp_path / "imported")
    assert imported.rc == 0, imported.stderr[-2000:]
    via_lava = load_results(tmp_path / "imported").results

    # The direct run is `make run`'s, where these cells share a boot with
    # the rest of the suite.
    direct = tuple(
        r for r in default_suite.run_result.results if r.scenario in CELL and r.profile == "smmuv3-nested"
    )
    assert verdicts(via_lava) == verdicts(direct)
    assert {r.scenario for r in via_lava} == set(CELL)
    print(f"lava-run wall {wall:.1f}s")
