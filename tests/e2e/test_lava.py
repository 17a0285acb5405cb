"""#8 §5, #21: `lava export` of the whole suite writes one job per profile
(what `run` skips before boot left out, with the reason); the
smmuv3-nested job runs under `lava-run` on this machine (a generated device
dictionary for a local qemu device), its output imports into
results.json, and the verdicts match a direct `pkvm-harness run` of the
same suite, scenario by scenario and step by step. QEMU under LAVA binds no
port off loopback and does not outlive lava-run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.config import Registry
from harness.export.lava import descendants, run_job_locally
from harness.report import ScenarioResult, Verdict, exit_code, load_results
from tests.e2e.conftest import DEFAULT_SUITE, Run, harness

PROFILE = "smmuv3-nested"


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
    # The command (#21): no --profile, no --scenario.
    export_dir = tmp_path / "export"
    export = harness("lava", "export", "--target", "mainline-7.3", "--device-dict", output=export_dir)
    assert export.rc == 0, export.stderr[-2000:]
    assert "internal error" not in export.stderr
    reg = Registry()
    jobs = {p.name for p in export_dir.iterdir() if (p / "job.yaml").is_file()}
    assert jobs == {f"mainline-7.3_{p}" for p in reg.profile_names()}
    assert all((export_dir / j / "device.yaml").is_file() for j in jobs)
    left_out_txt = (export_dir / "left-out.txt").read_text()
    assert f"mainline-7.3 x {PROFILE}: left out virtio-iommu-granule: " in left_out_txt

    job_dir = export_dir / f"mainline-7.3_{PROFILE}"
    meta = yaml.safe_load((job_dir / "job.yaml").read_text())["metadata"]
    kept = meta["pkvm-harness.scenarios"].split(",")
    left_out = dict(p.split(": ", 1) for p in meta["pkvm-harness.left-out"].split(" | "))
    assert set(kept) | set(left_out) == set(reg.scenario_names())

    seen: dict[int, list[str]] = {}

    def watch(lava_run: int) -> None:
        for pid in _qemus_below(lava_run):
            seen.setdefault(pid, []).extend(_listening(pid))

    lava_out = tmp_path / "lava-out"
    rc, wall = run_job_locally(job_dir, lava_out, timeout=2400, watch=watch)
    log = (lava_out / "output.yaml").read_text()
    assert rc == 0, log[-3000:]
    assert seen, "QEMU was never seen running under lava-run (the port check saw nothing)"
    for pid, addrs in seen.items():
        assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addrs), (pid, addrs)
    assert not any(subprocess.run(["kill", "-0", str(p)], capture_output=True).returncode == 0 for p in seen)

    imported = harness("lava", "import", str(lava_out), output=tmp_path / "imported")
    via_lava = load_results(tmp_path / "imported").results
    assert {r.scenario for r in via_lava} == set(reg.scenario_names())

    # The direct run is `make run`'s: the whole suite on one boot per
    # profile (a fresh one only after a scenario that leaves it unknown).
    direct = {r.scenario: r for r in default_suite.run_result.results if r.profile == PROFILE}
    # What the exporter left out by run's rule, run skipped too.
    for name, why in left_out.items():
        if "kernel lacks: " in why:
            assert direct[name].verdict == Verdict.SKIP, (name, why, direct[name].reason)
    kept_direct = tuple(direct[n] for n in kept)
    assert verdicts(tuple(r for r in via_lava if r.scenario in kept)) == verdicts(kept_direct)
    assert imported.rc == int(exit_code(kept_direct)), imported.stderr[-2000:]
    print(f"lava-run wall {wall:.1f}s; {PROFILE}: {len(kept)} kept, {len(left_out)} left out")
