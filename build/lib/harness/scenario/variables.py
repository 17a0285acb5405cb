"""`${profile.x}` and `${capture.y}` in scenario text and expected fields.

Captures come from a step's output: lines `key=value` (optionally behind a
KTAP `# `) become `capture.key`; `# metric: name=value unit` lines become
metrics."""

from __future__ import annotations

import re
from collections.abc import Mapping

from harness.config.models import ExpectValue

_VAR = re.compile(r"\$\{([a-z][a-z0-9_.-]*)\}")
_CAPTURE = re.compile(r"^#?\s*([a-z_][a-z0-9_]*)=(\S+)\s*$", re.MULTILINE)
_METRIC = re.compile(r"^#\s*metric:\s*([a-z_][a-z0-9_]*)=([-+0-9.eE]+)", re.MULTILINE)


class UnknownVariable(KeyError):
    pass


def substitute(text: str, variables: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(1) not in variables:
            raise UnknownVariable(m.group(1))
        return variables[m.group(1)]

    return _VAR.sub(repl, text)


def captures(output: str) -> dict[str, str]:
    return {f"capture.{k}": v for k, v in _CAPTURE.findall(output)}


def metrics(output: str) -> dict[str, float]:
    return {k: float(v) for k, v in _METRIC.findall(output)}


def _as_int(v: str) -> int | None:
    try:
        return int(v, 0)
    except ValueError:
        return None


def value_matches(actual: ExpectValue, expected: ExpectValue, variables: Mapping[str, str]) -> bool:
    """Equality that understands the log's conventions: hex and decimal
    numbers compare as numbers, booleans as true/false, "A..B" is the
    half-open numeric range [A, B) and "A..+N" the range [A, A+N)."""
    exp = substitute(expected, variables) if isinstance(expected, str) else expected
    if isinstance(exp, bool) or isinstance(actual, bool):
        return str(actual).lower() == str(exp).lower()
    act_s, exp_s = str(actual), str(exp)
    if ".." in exp_s:
        lo_s, hi_s = exp_s.split("..", 1)
        lo, act = _as_int(lo_s), _as_int(act_s)
        hi = _as_int(hi_s.removeprefix("+"))
        if lo is not None and hi is not None and act is not None:
            if hi_s.startswith("+"):  # "A..+N": N bytes from A
                hi += lo
            return lo <= act < hi
    act_i, exp_i = _as_int(act_s), _as_int(exp_s)
    if act_i is not None and exp_i is not None:
        return act_i == exp_i
    return act_s == exp_s
