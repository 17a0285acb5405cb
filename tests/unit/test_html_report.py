"""The HTML report, rendered by Debian's chromium (headless, from disk): the
verdict matrix, a failing result's reason, and what changed between runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.report import RunRecorder, ScenarioResult, TargetRecord, Verdict

HYP_PANIC_EVENT = {
    "signature": "hyp-panic",
    "kind": "hyp",
    "severity": "error",
    "fatal": True,
    "line": 133,
    "timestamp": 1.2,
    "message": "kvm [1]: nVHE hyp panic at: [<ffff8000804bff7c>] __kvm_nvhe_handle_trap+0x54/0x124!",
    "fields": {"function": "handle_trap"},
    "trace": ["kvm [1]: nVHE hyp panic at: [<ffff8000804bff7c>] __kvm_nvhe_handle_trap+0x54/0x124!"],
}


def results_dir(path: Path, fail: str | None) -> Path:
    rec = RunRecorder(path, "0.2.0", "QEMU emulator version 10.0.2", "pkvm-harness run")
    rec.add_target(TargetRecord("mainline-7.3", {"kernel_version": "7.3.4"}, {}))
    for profile in ("smmuv3-nested", "virtio-iommu"):
        for scenario in ("boot-health", "dma-after-unmap"):
            bad = scenario == fail and profile == "smmuv3-nested"
            rec.record(
                ScenarioResult(
                    scenario,
                    profile,
                    "mainline-7.3",
                    Verdict.FAIL if bad else Verdict.PASS,
                    "step dma-after-unmap: DMA after unmap was not blocked" if bad else "",
                    3.0,
                    events=(HYP_PANIC_EVENT,) if bad else (),
                    metrics={"dma_rate": 11000.0},
                    console_log=str(path / "boots" / "console.log"),
                )
            )
    rec.finish({})
    return path


def dom(html: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (ci/setup-host.sh installs it)")
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-1000:]
    return out.stdout


def test_the_report_renders_the_matrix_and_a_failing_reason(tmp_path: Path) -> None:
    run = results_dir(tmp_path / "run", fail="dma-after-unmap")
    assert main(["report", str(run)]) == 0
    page = dom(run / "report.html")
    assert '<table class="matrix">' in page
    assert page.count('<td class="pass"') == 3 and page.count('<td class="fail"') == 1
    assert "step dma-after-unmap: DMA after unmap was not blocked" in page
    assert "__kvm_nvhe_handle_trap+0x54/0x124" in page  # the event's trace
    assert 'href="boots/console.log"' in page  # relative: works opened from disk
    assert "<script" not in page and "http" not in page.split("<body>", 1)[1]


def test_two_runs_compared_list_the_newly_failing_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = results_dir(tmp_path / "before", fail=None)
    after = results_dir(tmp_path / "after", fail="dma-after-unmap")
    assert main(["report", str(before), str(after)]) == 0
    assert "  dma-after-unmap [smmuv3-nested]: pass -> fail" in capsys.readouterr().out
    page = dom(after / "report.html")
    newly = page.split("Newly failing: 1", 1)[1].split("</table>", 1)[0]
    assert "dma-after-unmap" in newly and "smmuv3-nested" in newly
    assert "Newly passing: 0" in page
