"""Compiler diagnostics from a kernel build log: the first error (file:line
and message) and the warnings, kept per compilation unit.

Incremental builds recompile only some files, so "the warnings of this
build" is not what one make run prints. Each unit's warnings are kept from
its last compile: a recompiled unit replaces its entry, an untouched unit
keeps its old one. Comparing two such maps by file and message (not line:
an edit above a warning moves it) gives the warnings a change really added.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

Warning_ = tuple[str, str]  # file (relative to the tree), message with its [-Wflag]
WarningMap = dict[str, list[Warning_]]  # compilation unit -> its warnings

_BUILT = re.compile(r"^\s+(?:CC|AS|CPP|HOSTCC)\s+(?:\[M\]\s+)?(?P<obj>\S+?)\.(?:o|s|i|lds)\s*$")
_DIAG = re.compile(
    r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<kind>warning|error): (?P<msg>.*)$"
)
_INCLUDED = re.compile(r"^(?:In file included|\s+) from (?P<file>[^:]+):\d+[:,]$")
_IN_FUNCTION = re.compile(r"^(?P<file>[^:]+): In (?:function|member function|static function)")


_ASCII_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'"})


def _relative(path: str, tree: Path | None) -> str:
    if tree is not None:
        root = str(tree).rstrip("/") + "/"
        if root in path:
            return path.split(root, 1)[1]
    while path.startswith("../"):
        path = path[3:]
    return path.removeprefix("./")


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    kind: str  # "warning" | "error"
    message: str
    unit: str  # the .c/.S file being compiled when it was printed

    def describe(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


def parse(log: str, tree: Path | None = None) -> tuple[set[str], list[Diagnostic]]:
    """Units compiled (from kbuild's `CC obj.o` lines) and diagnostics. A
    header's diagnostic belongs to the unit named in its `In file included
    from` chain or `file: In function` line, else to the last unit seen."""
    built: set[str] = set()
    diags: list[Diagnostic] = []
    context_unit: str | None = None
    last_unit = ""
    for raw in log.splitlines():
        if m := _BUILT.match(raw):
            last_unit = m["obj"]
            built.add(last_unit)
            continue
        if (m := _INCLUDED.match(raw)) or (m := _IN_FUNCTION.match(raw)):
            path = _relative(m["file"], tree)
            if path.endswith((".c", ".S")):
                context_unit = path.rsplit(".", 1)[0]
            continue
        if m := _DIAG.match(raw):
            path = _relative(m["file"], tree)
            # gcc quotes with U+2018/U+2019 under a UTF-8 locale: the same message either way.
            unit = path.rsplit(".", 1)[0] if path.endswith((".c", ".S")) else context_unit or last_unit
            message = m["msg"].strip().translate(_ASCII_QUOTES)
            diags.append(Diagnostic(path, int(m["line"]), m["kind"], message, unit))
            context_unit = None
    return built, diags


def first_error(log: str, tree: Path | None = None) -> Diagnostic | None:
    return next((d for d in parse(log, tree)[1] if d.kind == "error"), None)


def update(previous: Mapping[str, list[Warning_]], log: str, tree: Path | None = None) -> WarningMap:
    """The warnings after this build: units it compiled get what it printed
    for them (nothing, if clean); every other unit keeps its entry."""
    built, diags = parse(log, tree)
    out: WarningMap = {u: list(w) for u, w in previous.items() if u not in built}
    for d in diags:
        if d.kind != "warning":
            continue
        entry = out.setdefault(d.unit, [])
        if (d.file, d.message) not in entry:
            entry.append((d.file, d.message))
    return {u: w for u, w in out.items() if w}


def added(before: Mapping[str, list[Warning_]], after: Mapping[str, list[Warning_]]) -> list[Warning_]:
    """Warnings (by file and message) in `after` that `before` lacks."""
    old = {w for ws in before.values() for w in ws}
    seen: list[Warning_] = []
    for ws in after.values():
        for w in ws:
            if w not in old and w not in seen:
                seen.append(w)
    return sorted(seen)


def load_map(path: Path) -> WarningMap | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {u: [(str(f), str(m).translate(_ASCII_QUOTES)) for f, m in ws] for u, ws in data.items()}


def save_map(path: Path, warnings: Mapping[str, list[Warning_]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({u: [list(w) for w in ws] for u, ws in sorted(warnings.items())}, indent=1))
    tmp.replace(path)
