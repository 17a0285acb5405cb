"""Finds and loads the data files by name: targets/, profiles/, scenarios/."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness import paths
from harness.config import schemas
from harness.config.models import (
    DmaFuzzRun,
    EventExpectation,
    KnownFailure,
    KnownGap,
    KselftestRun,
    Profile,
    QmpAction,
    Scenario,
    SeriesSpec,
    SourceSpec,
    Step,
    Target,
)
from harness.config.yamlfile import LoadedYaml, load_yaml, validate
from harness.errors import ConfigError
from harness.logwatch.signatures import known_names

T = TypeVar("T")
_PROFILE_VARIABLE = re.compile(r"\$\{profile\.(?P<key>[A-Za-z0-9_]+)\}")


def _target(doc: LoadedYaml, fragment_dir: Path) -> Target:
    d = doc.data
    ((skind, sloc),) = d["source"].items()
    base = doc.path.parent
    if skind != "debian":
        sloc = str((base / sloc).resolve())
    series = None
    if "series" in d:
        ((kind, loc),) = d["series"].items()
        series = SeriesSpec(kind, loc if kind == "b4" else str((base / loc).resolve()))
    fragments = []
    for i, name in enumerate(d["fragments"]):
        # A name from kernel-configs/, or a path to a .config (relative to
        # the target file) for fragments kept elsewhere.
        frag = base / name if name.endswith(".config") else fragment_dir / f"{name}.config"
        if not frag.is_file():
            raise ConfigError(
                f"{doc.path}:{doc.line_of(('fragments', i))}: fragment '{name}' not found (looked for {frag})"
            )
        fragments.append(frag)
    return Target(
        name=d["name"],
        description=d.get("description", ""),
        source=SourceSpec(skind, sloc),
        series=series,
        fragments=tuple(fragments),
        toolchain=d.get("toolchain", "gcc"),
        cmdline=tuple(d.get("cmdline", ())),
        known_gaps={name: _known_gap(doc, name, gap) for name, gap in d.get("known_gaps", {}).items()},
        path=doc.path,
        build_dir=d.get("build_dir", ""),
    )


def _known_gap(doc: LoadedYaml, scenario: str, gap: dict[str, str]) -> KnownGap:
    try:
        pattern = re.compile(gap["reason"])
    except re.error as exc:
        line = doc.line_of(("known_gaps", scenario, "reason"))
        raise ConfigError(
            f"{doc.path}:{line}: known_gaps.{scenario}.reason: not a regular expression: {exc}"
        ) from None
    return KnownGap(step=gap["step"], reason=pattern, why=" ".join(gap["why"].split()))


def _profile(doc: LoadedYaml) -> Profile:
    d = doc.data
    if d.get("iommu_options") and d["iommu"] != "virtio-iommu":
        raise ConfigError(
            f"{doc.path}:{doc.line_of(('iommu_options',))}: iommu_options: only for iommu: virtio-iommu"
            f" (this profile's iommu is {d['iommu']})"
        )
    return Profile(
        name=d["name"],
        description=d.get("description", ""),
        machine=d["machine"],
        iommu=d["iommu"],
        features=frozenset(d["features"]),
        smmu_stage=d.get("smmu_stage"),
        cpu=d.get("cpu", "max"),
        smp=d.get("smp", 2),
        memory_mb=d.get("memory_mb", 1024),
        scratch_disk_mb=d.get("scratch_disk_mb", 16),
        kvm_mode=d.get("kvm_mode", "protected"),
        cmdline=tuple(d.get("cmdline", ())),
        extra_args=tuple(d.get("extra_args", ())),
        iommu_options=tuple(d.get("iommu_options", ())),
        expect=dict(d.get("expect", {})),
        path=doc.path,
    )


def _event_expectation(raw: str | dict[str, Any]) -> EventExpectation:
    if isinstance(raw, str):
        return EventExpectation(signature=raw)
    return EventExpectation(
        signature=raw["signature"],
        fields=dict(raw.get("fields", {})),
        min_count=raw.get("min_count", 1),
    )


def _step(raw: dict[str, Any]) -> Step:
    has_run = "run" in raw
    # A step that only checks events looks at the whole boot by default; a
    # step that does something (a command, a QMP action) at what it caused.
    acts = (
        has_run or "qmp" in raw or "kselftest" in raw or "fault_report_window_s" in raw or "dma_fuzz" in raw
    )
    return Step(
        name=raw["name"],
        requires=frozenset(raw.get("requires", ())),
        transport=raw.get("transport", "serial"),
        run=raw.get("run"),
        timeout_s=float(raw.get("timeout_s", _default_timeout(raw))),
        expect_status=raw.get("expect_status", 0 if has_run else None),
        expect_output=raw.get("expect_output"),
        forbid_output=raw.get("forbid_output"),
        expect_events=tuple(_event_expectation(e) for e in raw.get("expect_events", ())),
        forbid_events=tuple(raw.get("forbid_events", ())),
        events_since=raw.get("events_since", "step" if acts else "boot"),
        expect_ktap=bool(raw.get("expect_ktap", False)),
        qmp=QmpAction(
            raw["qmp"]["command"], dict(raw["qmp"].get("arguments", {})), raw["qmp"].get("wait_event")
        )
        if "qmp" in raw
        else None,
        fail_reason=raw.get("fail_reason"),
        hang_probe_s=raw.get("hang_probe_s"),
        hang_timeout_s=raw.get("hang_timeout_s"),
        essential=bool(raw.get("essential", False)),
        fault_report_window_s=raw.get("fault_report_window_s"),
        kselftest=_kselftest(raw["kselftest"]) if "kselftest" in raw else None,
        dma_fuzz=_dma_fuzz(raw["dma_fuzz"]) if "dma_fuzz" in raw else None,
    )


def _dma_fuzz(raw: dict[str, Any]) -> DmaFuzzRun:
    return DmaFuzzRun(
        seeds=tuple(int(s) for s in raw["seeds"]),
        length=int(raw.get("length", 40)),
        backend=raw.get("backend", "type1"),
        minimize_budget=int(raw.get("minimize_budget", 40)),
    )


def _default_timeout(raw: dict[str, Any]) -> float:
    if "kselftest" in raw:  # every binary's own timeout, plus its kill grace and a margin
        run = _kselftest(raw["kselftest"])
        return len(run.tests) * (run.timeout_s + 5) + 60
    return 60.0


def _kselftest(raw: dict[str, Any]) -> KselftestRun:
    return KselftestRun(
        suite=raw["suite"], tests=tuple(raw["tests"]), timeout_s=float(raw.get("timeout_s", 120.0))
    )


def _check_event_names(doc: LoadedYaml) -> None:
    """A typo in an event name would switch a check off (forbid) or turn it
    into a false FAIL (expect): reject it here, with file:line."""
    known = known_names()

    def check(name: str, where: tuple[str | int, ...]) -> None:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            field = ".".join(map(str, where))
            raise ConfigError(f"{doc.path}:{doc.line_of(where)}: {field}: unknown event '{name}'{hint}")

    d = doc.data
    for i, name in enumerate(d.get("forbid_events", ())):
        check(name, ("forbid_events", i))
    for s, step in enumerate(d["steps"]):
        for i, name in enumerate(step.get("forbid_events", ())):
            check(name, ("steps", s, "forbid_events", i))
        for i, exp in enumerate(step.get("expect_events", ())):
            if isinstance(exp, str):
                check(exp, ("steps", s, "expect_events", i))
            else:
                check(exp["signature"], ("steps", s, "expect_events", i, "signature"))


# A step does at least one of these; one with none would pass having checked nothing.
_STEP_ACTIONS = (
    "run",
    "qmp",
    "kselftest",
    "expect_events",
    "forbid_events",
    "fault_report_window_s",
    "dma_fuzz",
)


def _check_steps_act(doc: LoadedYaml) -> None:
    for i, step in enumerate(doc.data["steps"]):
        if not any(key in step for key in _STEP_ACTIONS):
            raise ConfigError(
                f"{doc.path}:{doc.line_of(('steps', i))}: steps.{i} ({step['name']}): does nothing:"
                f" give it one of {', '.join(_STEP_ACTIONS)}"
            )


def _scenario(doc: LoadedYaml) -> Scenario:
    _check_event_names(doc)
    _check_steps_act(doc)
    d = doc.data
    return Scenario(
        name=d["name"],
        description=d.get("description", ""),
        steps=tuple(_step(s) for s in d["steps"]),
        requires=frozenset(d.get("requires", ())),
        timeout_s=float(d.get("timeout_s", 600.0)),
        forbid_events=tuple(d.get("forbid_events", ())),
        check_boot_log=bool(d.get("check_boot_log", False)),
        check_capabilities=bool(d.get("check_capabilities", False)),
        path=doc.path,
        tags=tuple(d.get("tags", ())),
    )


def _known_failures(doc: LoadedYaml) -> tuple[KnownFailure, ...]:
    def pattern(i: int, text: str) -> re.Pattern[str]:
        try:
            return re.compile(text)
        except re.error as exc:
            line = doc.line_of(("known_failures", i, "failure"))
            raise ConfigError(
                f"{doc.path}:{line}: known_failures.{i}.failure: not a regular expression: {exc}"
            ) from None

    return tuple(
        KnownFailure(
            suite=e["suite"],
            case=e["case"],
            failure=pattern(i, e["failure"]),
            targets=tuple(e["targets"]),
            profiles=tuple(e.get("profiles", ["*"])),
            reason=" ".join(e["reason"].split()),
            where=f"{doc.path}:{doc.line_of(('known_failures', i))}",
        )
        for i, e in enumerate(doc.data["known_failures"])
    )


def load_known_failures(path: Path | None = None) -> tuple[KnownFailure, ...]:
    """The kernel selftests' known-failure list (kselftests/known-failures.yaml
    on the data search path, unless `path`)."""
    return load_file(
        path or paths.data_dir("kselftests") / "known-failures.yaml", schemas.KNOWN_FAILURES, _known_failures
    )


def load_file(path: Path, schema: dict[str, Any], build: Callable[[LoadedYaml], T]) -> T:
    doc = load_yaml(path)
    validate(doc, schema)
    return build(doc)


def load_target(path: Path, fragment_dir: Path | None = None) -> Target:
    frags = fragment_dir or paths.data_dir("kernel-configs")
    return load_file(path, schemas.TARGET, lambda doc: _target(doc, frags))


def load_profile(path: Path) -> Profile:
    return load_file(path, schemas.PROFILE, _profile)


def load_scenario(path: Path) -> Scenario:
    return load_file(path, schemas.SCENARIO, _scenario)


@dataclass
class Registry:
    """Name -> data file lookups. A name that is a path to a .yaml file is
    loaded directly, so users can keep their own targets outside the tree."""

    targets_dir: Path = field(default_factory=lambda: paths.data_dir("targets"))
    profiles_dir: Path = field(default_factory=lambda: paths.data_dir("profiles"))
    scenarios_dir: Path = field(default_factory=lambda: paths.data_dir("scenarios"))
    _profile_variables: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def _names(self, directory: Path) -> list[str]:
        return sorted(p.stem for p in directory.glob("*.yaml"))

    def _resolve(self, kind: str, directory: Path, name: str) -> Path:
        as_path = Path(name)
        if as_path.suffix in (".yaml", ".yml"):
            if not as_path.is_file():
                raise ConfigError(f"{kind} file {name}: not found")
            return as_path
        if "/" in name or name.startswith("."):
            # A name never leaves its directory: a file is given by its path.
            raise ConfigError(f"{kind} '{name}': not a name (a file is given as a path ending in .yaml)")
        path = directory / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(self._names(directory)) or "none"
            raise ConfigError(f"unknown {kind} '{name}' (known: {known})")
        return path

    def target_names(self) -> list[str]:
        return self._names(self.targets_dir)

    def profile_names(self) -> list[str]:
        return self._names(self.profiles_dir)

    def scenario_names(self) -> list[str]:
        return self._names(self.scenarios_dir)

    def target(self, name: str) -> Target:
        target = load_target(self._resolve("target", self.targets_dir, name))
        # A known gap names a step of a scenario that exists: a typo there
        # would make the gap cover nothing, silently.
        for scenario_name, gap in target.known_gaps.items():
            where = f"{target.path}: known_gaps.{scenario_name}"
            if not (self.scenarios_dir / f"{scenario_name}.yaml").is_file():
                raise ConfigError(f"{where}: no scenario {scenario_name!r}")
            steps = [s.name for s in self.scenario(scenario_name).steps]
            if gap.step not in steps:
                raise ConfigError(f"{where}.step: {gap.step!r} is not a step of it ({', '.join(steps)})")
        return target

    def profile(self, name: str) -> Profile:
        return load_profile(self._resolve("profile", self.profiles_dir, name))

    def scenario(self, name: str) -> Scenario:
        path = self._resolve("scenario", self.scenarios_dir, name)
        scenario = load_scenario(path)
        if scenario.name != path.stem and path.parent == self.scenarios_dir:
            raise ConfigError(f"{path}:1: name '{scenario.name}' differs from file name")
        self._check_profile_variables(path)
        return scenario

    def profile_variables(self) -> frozenset[str]:
        """Every `${profile.X}` some profile defines (its `expect:` keys, and
        `name`). A scenario may use one that only some profiles define: it
        does not apply to the others."""
        if self._profile_variables is None:
            keys = {"name"}
            for name in self.profile_names():
                keys |= set(self.profile(name).expect)
            self._profile_variables = frozenset(keys)
        return self._profile_variables

    def _check_profile_variables(self, path: Path) -> None:
        """A `${profile.X}` that no profile defines is a typo: a load error
        with file:line, never an internal error in the middle of a run."""
        known = self.profile_variables()
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for m in _PROFILE_VARIABLE.finditer(line):
                if m["key"] not in known:
                    raise ConfigError(
                        f"{path}:{number}: ${{profile.{m['key']}}}: no profile defines it"
                        f" (defined: {', '.join(sorted(known))})"
                    )
