"""Metrics across runs as small inline SVG charts, for the HTML report of
`pkvm-harness report DIR...` (hand-written SVG: no plotting library among
the dependencies, and the report stays one file that can be mailed).

A chart per series: each metric of each cell (`dma-map-benchmark
[smmuv3-nested] map_us`), each profile's boot time (the median of its
boots), each of the run's timings (build, boot and test: the suite time)
and each kselftest cell's case counts (passed, failed). Runs go left to
right in the order given; the first run is the reference.

A run's value is flagged when it differs from the first run's by more than
the noise band:
- the relative threshold `compare` uses for metric changes (10% unless a
  metric declares its own), the floor;
- with three runs or more, three times the spread the runs themselves
  show, measured robustly (the median absolute deviation scaled to a
  standard deviation, 1.4826 x MAD), so one changed run does not widen the
  band that flags it. Two runs cannot tell noise from change: only the
  threshold applies, as in `report BEFORE AFTER`."""

from __future__ import annotations

import html
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from harness.report.compare import DEFAULT_METRIC_THRESHOLD
from harness.report.results import RunResult, Verdict

MAD_TO_SIGMA = 1.4826
NOISE_SIGMAS = 3.0
WIDTH, HEIGHT, PAD = 260, 84, 22


@dataclass(frozen=True)
class Series:
    title: str
    unit: str
    values: tuple[float | None, ...]  # one per run; None: the run lacks it

    @property
    def reference(self) -> float | None:
        return self.values[0]

    def noise(self) -> float:
        """Half-width of the band around the first run's value."""
        ref = self.reference
        if ref is None:
            return 0.0
        floor = DEFAULT_METRIC_THRESHOLD * abs(ref)
        present = [v for v in self.values if v is not None]
        if len(present) < 3:
            return floor
        centre = statistics.median(present)
        mad = statistics.median(abs(v - centre) for v in present)
        return max(floor, NOISE_SIGMAS * MAD_TO_SIGMA * mad)

    def flagged(self) -> list[int]:
        """Indices of the runs whose value is beyond the noise band."""
        ref = self.reference
        if ref is None:
            return []
        band = self.noise()
        return [i for i, v in enumerate(self.values) if i > 0 and v is not None and abs(v - ref) > band]


def _unit(name: str) -> str:
    for suffix, unit in (("_mib_s", "MiB/s"), ("_us", "µs"), ("_ms", "ms"), ("_kb", "KiB"), ("_s", "s")):
        if name.endswith(suffix):
            return unit
    return ""


def collect(runs: Sequence[RunResult]) -> list[Series]:
    """Every series that at least one run has, in a stable order."""
    cells: dict[str, dict[int, float]] = {}
    units: dict[str, str] = {}

    def put(title: str, unit: str, run: int, value: float) -> None:
        cells.setdefault(title, {})[run] = value
        units[title] = unit

    for i, run in enumerate(runs):
        per_cell: dict[tuple[str, str, str], list[float]] = {}
        for r in run.results:
            side = f"@{r.side}" if r.side else ""
            for name, value in r.metrics.items():
                per_cell.setdefault((f"{r.scenario} [{r.profile}{side}]", name, _unit(name)), []).append(
                    value
                )
            if r.cases and r.verdict not in (Verdict.SKIP, Verdict.NOT_RUN):
                passed = sum(1 for c in r.cases if c.verdict == Verdict.PASS)
                failed = sum(1 for c in r.cases if c.verdict in (Verdict.FAIL, Verdict.XPASS, Verdict.ERROR))
                put(f"{r.scenario} [{r.profile}{side}] cases passed", "", i, passed)
                put(f"{r.scenario} [{r.profile}{side}] cases failed", "", i, failed)
        for (cell, name, unit), values in per_cell.items():
            put(f"{cell} {name}", unit, i, statistics.median(values))
        boots: dict[str, list[float]] = {}
        for b in run.boots:
            if b.ready:
                boots.setdefault(b.profile, []).append(b.boot_s)
        for profile, times in boots.items():
            put(f"boot time [{profile}]", "s", i, statistics.median(times))
        for name, seconds in run.timings.items():
            put(f"run {name.removesuffix('_s').replace('_', ' ')}", "s", i, seconds)
    return [
        Series(title, units[title], tuple(cells[title].get(i) for i in range(len(runs))))
        for title in sorted(cells, key=lambda t: (not t[0].isalpha() or t.startswith("run "), t))
    ]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def svg(series: Series, labels: Sequence[str]) -> str:
    """One chart: the values as a line with a point per run, the first
    run's value dashed with its noise band shaded, flagged runs in red
    with their change."""
    present = [v for v in series.values if v is not None]
    ref = series.reference
    band = series.noise()
    lo = min([*present, *([ref - band] if ref is not None else [])]) if present else 0.0
    hi = max([*present, *([ref + band] if ref is not None else [])]) if present else 1.0
    if hi == lo:
        hi, lo = hi + 1, lo - 1
    n = len(series.values)
    x0, x1 = PAD + 14, WIDTH - 10
    y0, y1 = HEIGHT - PAD + 4, 14

    def x(i: int) -> float:
        return x0 + (x1 - x0) * (i / (n - 1) if n > 1 else 0.5)

    def y(v: float) -> float:
        return y0 + (y1 - y0) * (v - lo) / (hi - lo)

    flagged = set(series.flagged())
    e = html.escape
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{e(series.title)}">',
        f"<title>{e(series.title)}</title>",
        f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/>',
        f'<text x="2" y="{y1 + 4:.1f}" font-size="9" fill="#555">{e(_fmt(hi))}</text>',
        f'<text x="2" y="{y0:.1f}" font-size="9" fill="#555">{e(_fmt(lo))}</text>',
    ]
    if ref is not None:
        top, bottom = y(ref + band), y(ref - band)
        parts.append(
            f'<rect class="noise" x="{x0}" y="{top:.1f}" width="{x1 - x0}" height="{bottom - top:.1f}"'
            ' fill="#dde8f5"><title>noise band: first run ± '
            f"{e(_fmt(band))} {e(series.unit)}</title></rect>"
        )
        parts.append(
            f'<line class="reference" x1="{x0}" y1="{y(ref):.1f}" x2="{x1}" y2="{y(ref):.1f}"'
            ' stroke="#4a78b0" stroke-dasharray="3,2"/>'
        )
    points = [(x(i), y(v)) for i, v in enumerate(series.values) if v is not None]
    if len(points) > 1:
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(
            f'<polyline class="values" points="{coords}" fill="none" stroke="#222" stroke-width="1.5"/>'
        )
    for i, v in enumerate(series.values):
        label = labels[i] if i < len(labels) else f"run {i + 1}"
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - 3}" font-size="9" text-anchor="middle"'
            f' fill="#555">{i + 1}</text>'
        )
        if v is None:
            continue
        bad = i in flagged
        change = f" ({(v - ref) / abs(ref):+.0%} vs run 1)" if ref not in (None, 0) and i > 0 else ""
        parts.append(
            f'<circle class="{"point changed" if bad else "point"}" cx="{x(i):.1f}" cy="{y(v):.1f}"'
            f' r="{3.5 if bad else 2.5}" fill="{"#c62828" if bad else "#222"}">'
            f"<title>{e(label)}: {e(_fmt(v))} {e(series.unit)}{e(change)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def section(runs: Sequence[RunResult], labels: Sequence[str]) -> str:
    """The report's "Metrics across runs" section: a legend of the runs,
    then a figure per series with its values and what is flagged."""
    series = collect(runs)
    e = html.escape
    legend = "".join(f"<li>run {i + 1}: <code>{e(name)}</code></li>" for i, name in enumerate(labels))
    figures = []
    for s in series:
        flagged = s.flagged()
        ref = s.reference
        notes = []
        for i in flagged:
            v = s.values[i]
            assert v is not None and ref is not None
            rel = f"{(v - ref) / abs(ref):+.0%}" if ref else f"{v - ref:+.3g}"
            notes.append(f'<span class="changed">run {i + 1}: {e(_fmt(v))} {e(s.unit)} ({rel})</span>')
        values = ", ".join("n/a" if v is None else _fmt(v) for v in s.values)
        caption = (
            f"<b>{e(s.title)}</b>{' (' + e(s.unit) + ')' if s.unit else ''}<br>{e(values)}; "
            f"noise ±{e(_fmt(s.noise()))}" + (f"<br>changed: {', '.join(notes)}" if notes else "")
        )
        cls = "metric changed" if flagged else "metric"
        figures.append(f'<figure class="{cls}">{svg(s, labels)}<figcaption>{caption}</figcaption></figure>')
    body = "".join(figures) or "<p>No metric in these runs.</p>"
    return (
        f'<h2 id="metrics">Metrics across runs</h2><ol class="runs">{legend}</ol>'
        "<p>Dashed: the first run's value; shaded: its noise band (the larger of the"
        f" {DEFAULT_METRIC_THRESHOLD:.0%} threshold and, with three runs or more, 3 &sigma; of the runs'"
        " own spread, from their median absolute deviation); red: beyond it.</p>"
        f'<div class="charts">{body}</div>'
    )
