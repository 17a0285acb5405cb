"""Two sets of results side by side: what got worse, what got better, what
stayed broken. One module, used by `run --against-base` (a series' tip
against its base) and by `report DIR DIR2` (any two runs). Its file,
comparison.json, has a versioned JSON Schema (comparison.schema.json) and
one reader, `load_comparison`."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.report.results import ScenarioResult, Verdict, load_versioned, schema
from harness.report.verdicts import RANK
from harness.report.writers import atomic_write

# Verdicts that say the kernel did what it should (xfail: as declared).
_GOOD = {Verdict.PASS, Verdict.XPASS}
_BAD = {Verdict.FAIL}
_KNOWN = {Verdict.XFAIL}

CellKey = tuple[str, str]  # profile, scenario

DEFAULT_METRIC_THRESHOLD = 0.10  # a relative change beyond 10% counts

COMPARISON_FILE = "comparison.json"
COMPARISON_SCHEMA_FILE = "comparison.schema.json"
COMPARISON_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Change:
    profile: str
    scenario: str
    before: Verdict
    after: Verdict
    reason: str  # the "after" reason (why it fails now), or the "before" one for a fix

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "scenario": self.scenario,
            "before": str(self.before),
            "after": str(self.after),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        return cls(d["profile"], d["scenario"], Verdict(d["before"]), Verdict(d["after"]), d["reason"])


@dataclass(frozen=True)
class MetricChange:
    profile: str
    scenario: str
    metric: str
    before: float
    after: float
    relative: float  # (after - before) / |before|
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "scenario": self.scenario,
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "relative": round(self.relative, 4),
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MetricChange:
        return cls(
            d["profile"], d["scenario"], d["metric"], d["before"], d["after"], d["relative"], d["threshold"]
        )


@dataclass(frozen=True)
class Comparison:
    regressions: tuple[Change, ...] = ()  # was good, now FAIL
    fixes: tuple[Change, ...] = ()  # was FAIL (or xfail), now good
    still_failing: tuple[Change, ...] = ()  # FAIL or xfail on both sides (known gaps included)
    inconclusive: tuple[Change, ...] = ()  # an ERROR or not-run on either side
    metrics: tuple[MetricChange, ...] = ()
    only_before: tuple[CellKey, ...] = ()
    only_after: tuple[CellKey, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": COMPARISON_SCHEMA_VERSION,
            "regressions": [c.to_json() for c in self.regressions],
            "fixes": [c.to_json() for c in self.fixes],
            "still_failing": [c.to_json() for c in self.still_failing],
            "inconclusive": [c.to_json() for c in self.inconclusive],
            "metrics": [m.to_json() for m in self.metrics],
            "only_before": [list(k) for k in self.only_before],
            "only_after": [list(k) for k in self.only_after],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Comparison:
        def changes(key: str) -> tuple[Change, ...]:
            return tuple(Change.from_json(c) for c in d[key])

        return cls(
            regressions=changes("regressions"),
            fixes=changes("fixes"),
            still_failing=changes("still_failing"),
            inconclusive=changes("inconclusive"),
            metrics=tuple(MetricChange.from_json(m) for m in d["metrics"]),
            only_before=tuple((a, b) for a, b in d["only_before"]),
            only_after=tuple((a, b) for a, b in d["only_after"]),
        )


class ComparisonError(HarnessError):
    """A comparison.json that cannot be read, or does not follow its schema."""


def load_comparison(path: Path) -> Comparison:
    """Read and validate a comparison.json (or the directory of a run
    --against-base holding one)."""
    _, data = load_versioned(
        path, COMPARISON_FILE, schema("harness.report", COMPARISON_SCHEMA_FILE), COMPARISON_SCHEMA_VERSION,
        ComparisonError,
    )  # fmt: skip
    return Comparison.from_json(data)


def _by_cell(results: Iterable[ScenarioResult]) -> dict[CellKey, list[ScenarioResult]]:
    out: dict[CellKey, list[ScenarioResult]] = {}
    for r in results:
        out.setdefault((r.profile, r.scenario), []).append(r)
    return out


def _metric_changes(
    key: CellKey,
    before: Sequence[ScenarioResult],
    after: Sequence[ScenarioResult],
    thresholds: Mapping[str, float],
) -> list[MetricChange]:
    """A metric changed when the medians differ by more than its declared
    relative threshold, and, where either side has several runs, by more
    than the spread (max - min) of those runs."""
    out = []
    names = set().union(*(r.metrics for r in before)) & set().union(*(r.metrics for r in after))
    for name in sorted(names):
        a = [r.metrics[name] for r in before if name in r.metrics]
        b = [r.metrics[name] for r in after if name in r.metrics]
        ma, mb = statistics.median(a), statistics.median(b)
        if ma == 0:
            continue
        rel = (mb - ma) / abs(ma)
        threshold = thresholds.get(name, DEFAULT_METRIC_THRESHOLD)
        spread = max(max(a) - min(a), max(b) - min(b))
        if abs(rel) > threshold and abs(mb - ma) > spread:
            out.append(MetricChange(key[0], key[1], name, ma, mb, rel, threshold))
    return out


def _worst(results: Sequence[ScenarioResult]) -> ScenarioResult:
    """With several runs of one cell, the one that says most: a FAIL beats
    an ERROR beats the rest."""
    return min(results, key=lambda r: RANK[r.verdict])


def compare(
    before: Iterable[ScenarioResult],
    after: Iterable[ScenarioResult],
    metric_thresholds: Mapping[str, float] | None = None,
) -> Comparison:
    b, a = _by_cell(before), _by_cell(after)
    regressions, fixes, still, inconclusive, metrics = [], [], [], [], []
    for key in [k for k in b if k in a]:
        old, new = _worst(b[key]), _worst(a[key])
        if Verdict.SKIP in (old.verdict, new.verdict):
            continue
        change = Change(key[0], key[1], old.verdict, new.verdict, new.reason)
        if {old.verdict, new.verdict} & {Verdict.ERROR, Verdict.NOT_RUN}:
            inconclusive.append(change)
        elif old.verdict in _GOOD and new.verdict in _BAD | _KNOWN:
            regressions.append(change)
        elif old.verdict in _BAD | _KNOWN and new.verdict in _GOOD:
            fixes.append(Change(key[0], key[1], old.verdict, new.verdict, old.reason))
        elif old.verdict in _BAD | _KNOWN and new.verdict in _BAD | _KNOWN:
            still.append(change)
        metrics += _metric_changes(key, b[key], a[key], metric_thresholds or {})
    return Comparison(
        regressions=tuple(regressions),
        fixes=tuple(fixes),
        still_failing=tuple(still),
        inconclusive=tuple(inconclusive),
        metrics=tuple(metrics),
        only_before=tuple(k for k in b if k not in a),
        only_after=tuple(k for k in a if k not in b),
    )


def against_base(results: Iterable[ScenarioResult], output: Path) -> Comparison:
    """`run --against-base`: the base side's results against the tip's,
    written to OUTPUT/comparison.json."""
    results = list(results)
    comparison = compare([r for r in results if r.side == "base"], [r for r in results if r.side == "tip"])
    atomic_write(output / COMPARISON_FILE, json.dumps(comparison.to_json(), indent=2) + "\n")
    return comparison


def render_text(c: Comparison, before: str = "base", after: str = "tip") -> list[str]:
    """Lines for a terminal or a CI log."""
    lines = []
    for title, items in (
        (f"regressions ({before} -> {after})", c.regressions),
        ("fixes", c.fixes),
        ("still failing", c.still_failing),
        ("inconclusive (an ERROR or not-run on one side)", c.inconclusive),
    ):
        lines.append(f"{title}: {len(items)}")
        lines += [
            f"  {x.scenario} [{x.profile}]: {x.before} -> {x.after}  {x.reason}".rstrip() for x in items
        ]
    if c.metrics:
        lines.append(f"metric changes: {len(c.metrics)}")
        lines += [
            f"  {m.scenario} [{m.profile}] {m.metric}: {m.before:g} -> {m.after:g} ({m.relative:+.1%})"
            for m in c.metrics
        ]
    return lines
