"""KTAP (kselftest / KUnit test output) parsing.

The guest helpers print KTAP so that one parser serves them and the
in-guest kselftests. Lines that are not KTAP (kernel messages interleaved on
the serial console) are ignored. `parse` flattens indented subtests into one
list (in order); `parse_tree` keeps the nesting (KUnit indentation, or the
kselftest runner's "# " prefix) for per-case results."""

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
            report.results.append(_result(m))
    return report


# Nested KTAP: a test's subtests come before its own result line, one level
# deeper. KUnit indents them; the kselftest runner (and this harness's
# in-guest runner) prefixes each line of a test's output with "# ", so a
# kselftest_harness binary's own "ok 1 fixture.test" arrives as
# "# ok 1 fixture.test".
_NESTED = re.compile(r"^(?:# ?|#$|  |\t)")


@dataclass(frozen=True)
class KtapNode:
    """One result line, with the subtests and diagnostics printed before it
    (one level deeper, prefix removed)."""

    result: KtapResult
    children: tuple[KtapNode, ...] = ()
    output: tuple[str, ...] = ()  # the nested lines, one level of prefix removed


@dataclass
class KtapTree:
    nodes: list[KtapNode] = field(default_factory=list)
    planned: int = 0
    bail_out: str | None = None
    # Nested lines after the last result: the output of a test whose result
    # never came (the guest died, or the command was cut short).
    trailing: tuple[str, ...] = ()


def _unnest(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    if line == "#":
        return ""
    if line.startswith("\t"):
        return line[1:]
    return line[2:] if line.startswith("  ") else line


def _result(m: re.Match[str]) -> KtapResult:
    directive = (m.group("directive") or "").upper() or None
    return KtapResult(
        number=int(m.group("num")),
        name=m.group("name").strip(),
        ok=m.group("ok").lower() == "ok",
        directive=directive,
        reason=(m.group("reason") or "").strip(),
    )


def parse_tree(text: str | list[str]) -> KtapTree:
    """KTAP with its nesting kept: each result at this level becomes a node
    whose children are parsed (recursively) from the lines nested under it.
    Lines that are neither KTAP nor nested (kernel messages on a serial
    console) are ignored."""
    lines = text.splitlines() if isinstance(text, str) else text
    tree = KtapTree()
    pending: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if _NESTED.match(line):
            pending.append(_unnest(line))
            continue
        if m := _BAIL.match(line):
            tree.bail_out = m.group(1).strip() or "bail out"
        elif m := _PLAN.match(line):
            tree.planned += int(m.group(1))
        elif m := _RESULT.match(line):
            sub = parse_tree(pending) if pending else KtapTree()
            tree.nodes.append(KtapNode(_result(m), tuple(sub.nodes), tuple(pending)))
            pending = []
    tree.trailing = tuple(pending)
    return tree
