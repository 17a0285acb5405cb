"""`pkvm-harness merge DIR... --output DIR`: the results of several shards
(or runs) as one results.json and one junit.xml. Every input goes through
the loader, so mixed or unknown schema versions are refused with the file
that has them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.report.results import (
    BootRecord,
    ResultsError,
    RunResult,
    ScenarioResult,
    TargetRecord,
    load_results,
)
from harness.report.writers import write_reports


def merge(inputs: list[Path]) -> RunResult:
    if not inputs:
        raise ResultsError("merge: no results directories given")
    runs = [(path, load_results(path)) for path in inputs]
    targets: dict[tuple[str, str | None], TargetRecord] = {}
    cells: dict[tuple[str, str | None, str, str], tuple[Path, ScenarioResult]] = {}
    boots: list[BootRecord] = []
    for i, (path, run) in enumerate(runs):
        for t in run.targets:
            key = (t.name, t.side)
            known = targets.get(key)
            if known is not None and known.kernel.get("config_sha256") != t.kernel.get("config_sha256"):
                raise ResultsError(
                    f"merge: {path}: target {t.name} was built differently than in another input"
                    " (another config): these runs did not test the same kernel"
                )
            targets.setdefault(key, t)
        for r in run.results:
            if r.cell in cells:
                other = cells[r.cell][0]
                raise ResultsError(
                    f"merge: {r.scenario} on {r.profile} ({r.target}) is in both {other} and {path}:"
                    " shards must not overlap"
                )
            cells[r.cell] = (path, r)
        # Boot ids are unique within a run, not across shards.
        boots += [replace(b, id=f"shard{i + 1}:{b.id}") for b in run.boots]
    results = [
        replace(r, boot=f"shard{inputs.index(p) + 1}:{r.boot}" if r.boot else None) for p, r in cells.values()
    ]
    first = runs[0][1]
    incomplete = [str(p) for p, run in runs if not run.complete]
    timings: dict[str, float] = {}
    for _, run in runs:
        for k, v in run.timings.items():
            timings[k] = round(timings.get(k, 0.0) + v, 3)
    return RunResult(
        harness_version=first.harness_version,
        qemu_version=first.qemu_version,
        command="pkvm-harness merge " + " ".join(map(str, inputs)),
        targets=tuple(targets.values()),
        results=tuple(results),
        timings=timings,
        boots=tuple(boots),
        complete=not incomplete,
        interrupted=f"incomplete inputs: {', '.join(incomplete)}" if incomplete else None,
    )


def merge_into(inputs: list[Path], output: Path) -> RunResult:
    merged = merge(inputs)
    write_reports(merged, output)
    return merged
