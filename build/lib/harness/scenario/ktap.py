"""KTAP (kselftest / KUnit test output) parsing.

The guest helpers print KTAP so that one parser serves them and, later, the
in-guest kselftests. Lines that are not KTAP (kernel messages interleaved on
the serial console) are ignored; indented subtests are flattened with their
parent's name as prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_RESULT = re.compile(
    r"^(?P<indent>\s*)(?P<ok>ok|not ok)\s+(?P<num>\d+)\s*(?:-\s*)?(?P<name>[^#]*?)\s*"
    r"(?:#\s*(?P<directive>SKIP|TODO|XFAIL)?\b\s*(?P<reason>.*))?$",
    re.IGNORECASE,
)
_PLAN = re.compile(r"^\s*1\.\.(\d+)")
_BAIL = re.compile(r"^\s*Bail out!\s*(.*)$")


@dataclass(frozen=True)
class KtapResult:
    number: int
    name: str
    ok: bool
    directive: str | None  # SKIP / TODO / XFAIL
    reason: str

    @property
    def failed(self) -> bool:
        return not self.ok and self.directive is None

    @property
    def skipped(self) -> bool:
        return self.directive == "SKIP"


@dataclass
class KtapReport:
    results: list[KtapResult] = field(default_factory=list)
    planned: int = 0
    bail_out: str | None = None

    @property
    def failures(self) -> list[KtapResult]:
        return [r for r in self.results if r.failed]

    @property
    def passed(self) -> list[KtapResult]:
        return [r for r in self.results if r.ok and not r.skipped]

    def summary(self) -> str:
        skipped = sum(r.skipped for r in self.results)
        return (
            f"{len(self.passed)} passed, {len(self.failures)} failed,"
            f" {skipped} skipped of {self.planned or len(self.results)} planned"
        )


def parse(text: str) -> KtapReport:
    report = KtapReport()
    for line in text.splitlines():
        if m := _BAIL.match(line):
            report.bail_out = m.group(1).strip() or "bail out"
        elif m := _PLAN.match(line):
            if not line.startswith((" ", "\t")):
                report.planned += int(m.group(1))
        elif m := _RESULT.match(line):
            directive = (m.group("directive") or "").upper() or None
            report.results.append(
                KtapResult(
                    number=int(m.group("num")),
                    name=m.group("name").strip(),
                    ok=m.group("ok").lower() == "ok",
                    directive=directive,
                    reason=(m.group("reason") or "").strip(),
                )
            )
    return report
