"""A single-file HTML report of a run (or of two runs compared), readable
from disk with no server and no network: inline CSS, no scripts, every link
relative to the report's directory or absolute.

It reads results only through `load_results`, and a run --against-base's
comparison.json through `load_comparison`; it compares two runs with
`harness.report.compare`, the module `run --against-base` uses."""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.report.charts import section
from harness.report.compare import COMPARISON_FILE, Comparison, compare, load_comparison
from harness.report.results import RunResult, ScenarioResult, Verdict, load_results
from harness.report.verdicts import HTML_CLASS, RANK

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
.pass{background:#d8f5d8}.fail{background:#f8c8c8}.error{background:#f5deb3}
.skip,.not-run{background:#eee;color:#666}.xfail{background:#e3e3fb}.xpass{background:#fff3b0}
pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:12px}
.summary span{display:inline-block;margin-right:1em;padding:.1em .5em}
details{margin:.3em 0}
.charts{display:flex;flex-wrap:wrap;gap:.8em}figure.metric{margin:0;width:270px;font-size:12px}
figure.metric.changed{outline:2px solid #c62828}.changed{color:#c62828}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _link(path: str | None, base: Path, label: str) -> str:
    if not path:
        return ""
    target = Path(path)
    try:
        href = os.path.relpath(target, base)
    except ValueError:
        href = str(target)
    return f'<a href="{_e(href)}">{_e(label)}</a>'


def _summary(run: RunResult) -> str:
    counts = " ".join(
        f'<span class="{HTML_CLASS[Verdict(v)]}">{_e(v)}: {n}</span>' for v, n in run.counts().items() if n
    )
    state = "complete" if run.complete else f"incomplete ({_e(run.interrupted or 'running')})"
    targets = ", ".join(
        f"{_e(t.name)}{'/' + _e(t.side) if t.side else ''} ({_e(t.kernel.get('kernel_version', '?'))})"
        for t in run.targets
    )
    return (
        f'<p class="summary">{counts}</p>'
        f"<p>{len(run.results)} results, {state}; targets: {targets}; {_e(run.qemu_version)};"
        f" harness {_e(run.harness_version)}</p><p><code>{_e(run.command)}</code></p>"
    )


def _matrix(results: Iterable[ScenarioResult]) -> str:
    results = list(results)
    columns = sorted({(r.target, r.side or "", r.profile) for r in results})
    rows = sorted({r.scenario for r in results})
    cell = {(r.scenario, (r.target, r.side or "", r.profile)): r for r in results}
    head = "".join(f"<th>{_e(t)}{'/' + _e(s) if s else ''}<br>{_e(p)}</th>" for t, s, p in columns)
    body = []
    for scenario in rows:
        tds = []
        for col in columns:
            r = cell.get((scenario, col))
            if r is None:
                tds.append("<td></td>")
            else:
                anchor = f"r-{r.scenario}-{r.target}-{r.side or ''}-{r.profile}"
                tds.append(
                    f'<td class="{HTML_CLASS[r.verdict]}" title="{_e(r.reason)}">'
                    f'<a href="#{_e(anchor)}">{_e(r.verdict)}</a></td>'
                )
        body.append(f"<tr><th>{_e(scenario)}</th>{''.join(tds)}</tr>")
    return f'<table class="matrix"><tr><th>scenario</th>{head}</tr>{"".join(body)}</table>'


def _result(r: ScenarioResult, base: Path) -> str:
    anchor = f"r-{r.scenario}-{r.target}-{r.side or ''}-{r.profile}"
    parts = [
        f'<h3 id="{_e(anchor)}" class="{HTML_CLASS[r.verdict]}">{_e(r.scenario)} [{_e(r.profile)}]'
        f" {_e(r.target)}{' ' + _e(r.side) if r.side else ''}: {_e(r.verdict)}</h3>",
        f'<p class="reason">{_e(r.reason) or "&nbsp;"}</p>',
        f"<p>{r.duration_s:.1f} s{f', attempts {r.attempts}' if r.attempts > 1 else ''}."
        f" {_link(r.console_log, base, 'console log')}"
        f" {_link(r.reproducer, base, 'reproduce this boot')}</p>",
    ]
    if r.metrics:
        parts.append(
            "<p>metrics: " + ", ".join(f"{_e(k)}={v:g}" for k, v in sorted(r.metrics.items())) + "</p>"
        )
    for s in r.steps:
        if s.verdict in (Verdict.FAIL, Verdict.ERROR) or s.output:
            parts.append(
                f"<details><summary>step {_e(s.name)}: {_e(s.verdict)} {_e(s.reason)}</summary>"
                f"<pre>{_e(s.command or '')}\n\n{_e(s.output[-3000:])}</pre></details>"
            )
    for ev in r.events:
        if ev.get("severity") == "info":
            continue
        trace = ev.get("symbolised") or ev.get("trace") or []
        parts.append(
            f"<details open><summary>event {_e(ev.get('signature'))}: {_e(ev.get('message'))}</summary>"
            f"<pre>{_e(chr(10).join(map(str, trace)))}</pre></details>"
        )
    if r.cases:
        parts.append(_cases(r))
    known = r.evidence.get("known_failures")
    if isinstance(known, list):
        parts.append(_known_failures(known))
    for log in r.evidence.get("kselftest_logs") or ():
        parts.append(f"<p>{_link(str(log), base, 'kselftest output: ' + Path(str(log)).name)}</p>")
    if r.evidence:
        tail = r.evidence.get("console_tail")
        if isinstance(tail, list):
            parts.append(
                f"<details><summary>console tail</summary><pre>{_e(chr(10).join(tail))}</pre></details>"
            )
        vcpus = r.evidence.get("vcpus")
        if vcpus:
            parts.append(f"<details><summary>vCPUs</summary><pre>{_e(vcpus)}</pre></details>")
    return "\n".join(parts)


def _cases(r: ScenarioResult) -> str:
    """Every case with its verdict and reason, the ones that did not pass
    first; open when any case failed."""
    ranked = sorted(r.cases, key=lambda c: RANK[c.verdict])
    counts: dict[str, int] = {}
    for c in r.cases:
        counts[str(c.verdict)] = counts.get(str(c.verdict), 0) + 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    rows = "".join(
        f'<tr class="{HTML_CLASS[c.verdict]}"><td>{_e(c.name)}</td>'
        f"<td>{_e(c.verdict)}</td><td>{_e(c.reason)}</td></tr>"
        for c in ranked
    )
    opened = " open" if any(c.verdict in (Verdict.FAIL, Verdict.XPASS) for c in r.cases) else ""
    return (
        f"<details{opened}><summary>{len(r.cases)} cases: {_e(summary)}</summary>"
        f'<table class="cases"><tr><th>case</th><th>verdict</th><th>reason</th></tr>{rows}</table></details>'
    )


def _known_failures(entries: list[object]) -> str:
    """The known-failure list in scope for this result, applied or not."""
    rows = []
    for e in entries:
        if not isinstance(e, dict):
            continue
        matched = "; ".join(map(str, e.get("matched") or [])) or "no case matched"
        rows.append(
            f"<tr><td>{_e(e.get('suite'))}: {_e(e.get('case'))}</td><td>{_e(matched)}</td>"
            f"<td>{_e(e.get('reason'))}</td><td>{_e(e.get('where'))}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="4">none in scope</td></tr>'
    return (
        f'<details open><summary>known failures in scope: {len(rows)}</summary><table class="known">'
        "<tr><th>case</th><th>matched here</th><th>reason</th><th>listed at</th></tr>"
        f"{body}</table></details>"
    )


def _comparison(c: Comparison, before: str, after: str) -> str:
    def rows(items: Iterable[object]) -> str:
        out = []
        for x in items:
            out.append(
                f"<tr><td>{_e(getattr(x, 'scenario', ''))}</td><td>{_e(getattr(x, 'profile', ''))}</td>"
                f"<td>{_e(getattr(x, 'before', ''))}</td><td>{_e(getattr(x, 'after', ''))}</td>"
                f"<td>{_e(getattr(x, 'reason', ''))}</td></tr>"
            )
        return "".join(out) or '<tr><td colspan="5">none</td></tr>'

    head = "<tr><th>scenario</th><th>profile</th><th>before</th><th>after</th><th>reason</th></tr>"
    parts = [f"<h2>Compared: {_e(before)} → {_e(after)}</h2>"]
    for title, items in (
        ("Newly failing", c.regressions),
        ("Newly passing", c.fixes),
        ("Still failing", c.still_failing),
        ("Inconclusive (an ERROR or not-run on one side)", c.inconclusive),
    ):
        parts.append(f'<h3>{_e(title)}: {len(items)}</h3><table class="compare">{head}{rows(items)}</table>')
    if c.metrics:
        mrows = "".join(
            f"<tr><td>{_e(m.scenario)}</td><td>{_e(m.profile)}</td><td>{_e(m.metric)}</td>"
            f"<td>{m.before:g}</td><td>{m.after:g}</td><td>{m.relative:+.1%}</td></tr>"
            for m in c.metrics
        )
        parts.append(
            "<h3>Metric changes</h3><table><tr><th>scenario</th><th>profile</th><th>metric</th>"
            f"<th>before</th><th>after</th><th>change</th></tr>{mrows}</table>"
        )
    return "\n".join(parts)


def render(
    run: RunResult,
    base: Path,
    other: RunResult | None = None,
    other_name: str = "",
    charts: str = "",
    against_base: Comparison | None = None,
) -> str:
    """The page; `other`: a run before this one, compared with it; else
    `against_base`: the comparison a run --against-base wrote."""
    title = "pkvm-harness report"
    body = [f"<h1>{title}</h1>", _summary(run), "<h2>Verdicts</h2>", _matrix(run.results)]
    if other is not None:
        body.append(_comparison(compare(other.results, run.results), other_name, str(base)))
    elif against_base is not None:
        body.append(_comparison(against_base, "base", "tip"))
    body.append(charts)
    body.append("<h2>Results</h2>")
    body += [_result(r, base) for r in run.results if r.verdict != Verdict.PASS]
    body += [_result(r, base) for r in run.results if r.verdict == Verdict.PASS]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(
    results_dir: Path, against: Path | None = None, output: Path | None = None, history: Sequence[Path] = ()
) -> Path:
    """report.html in `results_dir` (or `output`); with `against`, the
    comparison of `against` (before) with `results_dir` (after); with
    `history` (every run, oldest first), each metric across them as a chart."""
    run = load_results(results_dir)
    other = load_results(against) if against is not None else None
    # A run --against-base: its own comparison, through its loader.
    sides = load_comparison(results_dir) if (results_dir / COMPARISON_FILE).exists() else None
    out = output or results_dir / "report.html"
    charts = section([load_results(d) for d in history], [str(d) for d in history]) if history else ""
    out.write_text(render(run, out.parent, other, str(against) if against else "", charts, sides))
    return out
