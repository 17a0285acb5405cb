"""A matrix file: which cells (target x profile x scenario) to run.

    name: regression
    targets: [mainline-7.3, stable-6.12]
    profiles: [smmuv3-nested, virtio-iommu]
    scenarios: all                      # or a list
    include: [{target: t, profile: p, scenarios: [s, ...]}]   # extra cells
    exclude: [{target: t, profile: p, scenario: "pvm-*"}]     # fnmatch globs
    timeouts: [{scenario: dma-map-stress, timeout_s: 900}]    # per cell

Validated against a schema with file:line errors, like every data file."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import paths
from harness.config import Registry
from harness.config.models import Profile, Scenario, Target
from harness.config.yamlfile import load_yaml, validate
from harness.errors import ConfigError

_NAMES = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_RULE_FIELDS: dict[str, Any] = {
    "target": {"type": "string"},
    "profile": {"type": "string"},
    "scenario": {"type": "string"},
}
_RULE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": _RULE_FIELDS,
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "targets", "profiles", "scenarios"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "targets": _NAMES,
        "profiles": _NAMES,
        "scenarios": {"oneOf": [{"const": "all"}, _NAMES]},
        "include": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["target", "profile", "scenarios"],
                "properties": {
                    "target": {"type": "string"},
                    "profile": {"type": "string"},
                    "scenarios": _NAMES,
                },
            },
        },
        "exclude": {"type": "array", "items": _RULE},
        "timeouts": {
            "type": "array",
            "items": {
                **_RULE,
                "required": ["timeout_s"],
                "properties": {
                    **_RULE_FIELDS,
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 14400},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class MatrixCell:
    target: Target
    profile: Profile
    scenario: Scenario  # with the cell's timeout applied

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target.name, self.profile.name, self.scenario.name)


@dataclass(frozen=True)
class Matrix:
    name: str
    path: Path | None
    cells: tuple[MatrixCell, ...]

    def shard(self, index: int, count: int) -> Matrix:
        """Cells index, index + count, ... (1-based index) of the sorted
        cells: every cell is in exactly one shard, and shards are balanced by
        cell count whatever the grouping."""
        if not 1 <= index <= count:
            raise ConfigError(f"--shard {index}/{count}: need 1 <= I <= N")
        ordered = sorted(self.cells, key=lambda c: c.key)
        return replace(self, cells=tuple(ordered[index - 1 :: count]))

    def units(self) -> list[tuple[Target, Profile, tuple[Scenario, ...]]]:
        """Cells grouped by target x profile (one boot serves a group), in
        the matrix's order."""
        groups: dict[tuple[str, str], list[MatrixCell]] = {}
        for c in self.cells:
            groups.setdefault((c.target.name, c.profile.name), []).append(c)
        return [(g[0].target, g[0].profile, tuple(c.scenario for c in g)) for g in groups.values()]


def _matches(rule: Mapping[str, Any], target: str, profile: str, scenario: str) -> bool:
    values = {"target": target, "profile": profile, "scenario": scenario}
    return all(fnmatch.fnmatchcase(values[k], str(v)) for k, v in rule.items() if k in values)


def matrix_path(value: str) -> Path:
    """What `--matrix VALUE` names: a matrix file, or a name from matrices/
    (e.g. regression)."""
    path = Path(value)
    return path if path.is_file() else paths.data_dir("matrices") / f"{value}.yaml"


def load_matrix(path: Path, reg: Registry) -> Matrix:
    doc = load_yaml(path)
    validate(doc, SCHEMA)
    d = doc.data

    def named(kind: str, i: int, value: str, load: Any) -> Any:
        try:
            return load(value)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{doc.line_of((kind, i))}: {kind}: {exc}") from None

    targets = [named("targets", i, t, reg.target) for i, t in enumerate(d["targets"])]
    profiles = [named("profiles", i, p, reg.profile) for i, p in enumerate(d["profiles"])]
    names = reg.scenario_names() if d["scenarios"] == "all" else d["scenarios"]
    scenarios = [named("scenarios", i, s, reg.scenario) for i, s in enumerate(names)]
    excludes = d.get("exclude", [])
    triples: list[tuple[Target, Profile, Scenario]] = [
        (t, p, s)
        for t in targets
        for p in profiles
        for s in scenarios
        if not any(_matches(rule, t.name, p.name, s.name) for rule in excludes)
    ]
    for i, inc in enumerate(d.get("include", [])):
        t = named("include", i, inc["target"], reg.target)
        p = named("include", i, inc["profile"], reg.profile)
        for s_name in inc["scenarios"]:
            s = named("include", i, s_name, reg.scenario)
            if not any((t.name, p.name, s.name) == (a.name, b.name, c.name) for a, b, c in triples):
                triples.append((t, p, s))
    cells = []
    for t, p, s in triples:
        for rule in d.get("timeouts", []):
            if _matches({k: v for k, v in rule.items() if k != "timeout_s"}, t.name, p.name, s.name):
                s = replace(s, timeout_s=float(rule["timeout_s"]))
        cells.append(MatrixCell(t, p, s))
    if not cells:
        raise ConfigError(f"{path}: the matrix has no cells (everything excluded?)")
    return Matrix(str(d["name"]), path, tuple(cells))


def default_jobs() -> int:
    """Workers that fit the machine: one per host CPU (much of a scenario's
    time is spent waiting on the guest), and 2 GiB of available memory each
    (a 1 GiB guest plus QEMU and TCG's code cache)."""
    cpus = os.cpu_count() or 1
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 1
    return max(1, min(cpus, kib // (2 << 20)))


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected I/N, e.g. 2/4") from None
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {text}: need 1 <= I <= N")
    return index, count
