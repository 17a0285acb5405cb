"""`pkvm-harness report DIR DIR DIR`: each metric across the runs as an
inline SVG chart, a run beyond the noise band flagged against the first.
Rendered by Debian's chromium (headless, from disk): the map/unmap charts
are laid out with a point per run, and the changed run is the red one.
The values are dma-map-benchmark's on smmuv3-nested as the captured LAVA
run measured them (map 6.1 us, unmap 13.7 us), then a run within the noise
and one whose map latency doubled."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.cli import main
from harness.report import BootRecord, RunRecorder, ScenarioResult, TargetRecord, Verdict, load_results
from harness.report.charts import Series, collect
from tests.unit.test_html_report import dom

RUNS = [(6.1, 13.7, 2.81), (6.3, 13.2, 2.95), (12.4, 13.9, 2.77)]  # map_us, unmap_us, boot_s


def run_dir(path: Path, map_us: float, unmap_us: float, boot_s: float) -> Path:
    rec = RunRecorder(path, "0.3.0", "QEMU emulator version 10.0.2", "pkvm-harness run")
    rec.add_target(TargetRecord("mainline-7.3", {"kernel_version": "7.3.4"}, {}))
    console = str(path / "boots" / "console.log")
    rec.add_boot(
        BootRecord(
            "mainline-7.3/smmuv3-nested-1",
            "mainline-7.3",
            "smmuv3-nested",
            str(path / "boots"),
            console,
            True,
            Verdict.PASS,
            "",
            boot_s,
        )
    )
    metrics = {"map_us": map_us, "unmap_us": unmap_us}
    rec.record(
        ScenarioResult(
            "dma-map-benchmark",
            "smmuv3-nested",
            "mainline-7.3",
            Verdict.PASS,
            "",
            4.2,
            metrics=metrics,
            console_log=console,
            boot="mainline-7.3/smmuv3-nested-1",
        )
    )
    rec.finish({"boot_and_test_s": 30.0 + boot_s})
    return path


def test_noise_band_flags_only_the_run_beyond_it() -> None:
    steady = Series("x", "us", (6.1, 6.3, 6.0, 6.2))
    assert steady.flagged() == []
    jump = Series("x", "us", (6.1, 6.3, 12.4))
    assert jump.flagged() == [2]
    # Noisy runs widen the band: the same jump among scattered values is noise.
    scattered = Series("x", "us", (6.1, 2.0, 12.4, 9.5, 3.1))
    assert scattered.noise() > abs(12.4 - 6.1) and scattered.flagged() == []
    # Two runs: only compare's 10% threshold.
    assert Series("x", "us", (10.0, 10.9)).flagged() == [] and Series("x", "us", (10.0, 11.2)).flagged() == [
        1
    ]


def test_three_runs_show_the_map_unmap_chart_with_the_changed_run(tmp_path: Path) -> None:
    dirs = [run_dir(tmp_path / f"run{i + 1}", *values) for i, values in enumerate(RUNS)]
    titles = {s.title: s for s in collect([load_results(d) for d in dirs])}
    assert titles["dma-map-benchmark [smmuv3-nested] map_us"].values == (6.1, 6.3, 12.4)
    assert titles["boot time [smmuv3-nested]"].values == (2.81, 2.95, 2.77)
    assert main(["report", *map(str, dirs)]) == 0
    report = dirs[-1] / "report.html"
    page = report.read_text()
    assert "<script" not in page and page.count("<svg") == len(titles)  # one file, inline SVG, no script
    # Measure the charts as chromium lays them out (a copy of the report with a probe script).
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    rendered = dom(probe)
    found = re.search(r'<pre id="probe">(.*?)</pre>', rendered, re.DOTALL)
    assert found, rendered[-2000:]
    charts = {c["label"]: c for c in json.loads(found.group(1).replace("&quot;", '"'))}
    for metric, changed in (("map_us", [3]), ("unmap_us", [])):
        c = charts[f"dma-map-benchmark [smmuv3-nested] {metric}"]
        assert c["width"] > 200 and c["height"] > 60  # laid out at its size
        assert c["lineWidth"] > 150 and c["lineHeight"] > 0  # the line spans the runs
        assert c["points"] == 3
        assert c["changed"] == changed, c  # red: run 3's map latency, +103%
    text = rendered.split('id="metrics"', 1)[1]
    assert "run 3: 12.4 µs (+103%)" in text
    assert "Newly failing: 0" in rendered  # the first run compared with the last, as before


PROBE = """<script>
const out = [];
for (const svg of document.querySelectorAll("svg.chart")) {
  const box = svg.getBoundingClientRect();
  const line = svg.querySelector("polyline.values");
  const lb = line ? line.getBBox() : {width: 0, height: 0};
  const points = [...svg.querySelectorAll("circle.point")];
  out.push({label: svg.getAttribute("aria-label"), width: box.width, height: box.height,
            lineWidth: lb.width, lineHeight: lb.height, points: points.length,
            changed: points.map((p, i) => p.classList.contains("changed") ? i + 1 : 0).filter(Boolean)});
}
const pre = document.createElement("pre");
pre.id = "probe";
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""
