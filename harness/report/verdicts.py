"""The verdict policy, beside `Verdict`: every rule that turns what happened
into a verdict, and every table that turns a verdict into another
vocabulary. Front ends (run, the pytest and avocado plugins, LAVA import,
series check, bisect) call these; none decides a verdict of its own.

- `Verdict` itself; its constructors-with-policy, `scenario_result` and
  `case_result` (the only way a ScenarioResult or CaseResult is made, so a
  target's known gap and the selftests' known failures apply, and a stale
  one is an XPASS, whoever produced the verdict), sit beside the result
  dataclasses in `results.py`, which this module cannot import;
- FAIL vs ERROR for what is not a scenario's own run: a build or a
  series' defect, a QEMU launch, the capability probe, a stuck cell, a
  harness bug (a boot's own verdict is its watcher's, a `Verdict` in
  `BootOutcome`);
- the rank (which of several verdicts says most), the exit codes of a run,
  a run against its base, a series check and a bisect, and a bisect step's state;
- the tables: junit, pytest outcome, avocado status, HTML class, KCIDB.

This module and the results contract (`results.py`) are the vocabulary
every stage speaks: this one imports only `harness.errors`, `results.py`
also `harness.config` (tests/unit/test_import_graph.py).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from harness.errors import ExitCode, HarnessError


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"  # the kernel under test misbehaved
    ERROR = "error"  # the harness, its input or its infrastructure failed
    SKIP = "skip"  # not applicable here (profile or kernel lacks a feature)
    XFAIL = "xfail"  # failed in a way the target declares as a known gap
    XPASS = "xpass"  # declared as a known failure, but passed (the list is stale)
    NOT_RUN = "not-run"  # planned, but the run ended before it (interrupt, crash)


# ---------------------------------------------------------------- FAIL vs ERROR


def failure_verdict(exc: HarnessError) -> Verdict:
    """A harness exception is an ERROR (bad input, a tool, the
    infrastructure), unless it is the series' own defect (it does not
    apply, build or configure): then it is the series' FAIL."""
    return Verdict.FAIL if exc.series_defect else Verdict.ERROR


def build_failure(exc: HarnessError, side: str | None = None) -> tuple[Verdict, str]:
    """The verdict and reason every cell of a kernel that could not be built gets."""
    if exc.series_defect:
        return Verdict.FAIL, f"series: {exc}"
    where = f" ({side})" if side else ""
    return Verdict.ERROR, f"build{where}: {exc}"


def launch_failure(exc: HarnessError) -> tuple[Verdict, str]:
    """QEMU would not start: the infrastructure's ERROR."""
    return Verdict.ERROR, f"machine: {exc}"


def probe_failure(reason: str, guest_failed: bool) -> tuple[Verdict, str]:
    """The capability probe failed: the kernel's FAIL when the guest hung or
    its network died under it, the harness's ERROR otherwise."""
    return (Verdict.FAIL if guest_failed else Verdict.ERROR), f"capability probe: {reason}"


def internal_error(exc: BaseException) -> tuple[Verdict, str]:
    """A harness bug: never the kernel's FAIL."""
    return Verdict.ERROR, f"internal error: {type(exc).__name__}: {exc}"


def stuck_cell(
    harness_wait: bool, limit: str, stuck_call: str, released: bool, vcpus: str
) -> tuple[Verdict, str]:
    """A cell that outlived its budget (harness.watchdog): the harness's
    ERROR if it was stuck in a wait of its own, the kernel's FAIL (a hang)
    if it was still waiting on the guest."""
    if harness_wait:
        after = "" if released else "; the call did not return when QEMU was killed"
        return Verdict.ERROR, f"harness stuck: no result {limit}, waiting in {stuck_call}{after}"
    return Verdict.FAIL, f"hang: no result {limit}, still waiting on the guest; {vcpus}"


# ---------------------------------------------------------------- rank and exit codes

# Which verdict of several says most about a cell (a merged cell run more
# than once, a report's ordering): the kernel's failure first, then the
# harness's, a stale expectation, the unproven, the known, the good.
RANK: dict[Verdict, int] = {
    Verdict.FAIL: 0,
    Verdict.ERROR: 1,
    Verdict.XPASS: 2,
    Verdict.NOT_RUN: 3,
    Verdict.XFAIL: 4,
    Verdict.PASS: 5,
    Verdict.SKIP: 6,
}


def exit_code(verdicts: Iterable[Verdict]) -> ExitCode:
    """ERROR outranks FAIL: a run whose infrastructure broke proves nothing
    either way, so CI must look at it before trusting any verdict. A cell
    that never ran leaves the run unproven, like an ERROR. An XPASS (a
    declared known gap or known failure that passed) fails the run: a list
    of expected failures that nobody has to update rots, and a stale entry
    would hide the next real failure of that check."""
    seen = set(verdicts)
    if seen & {Verdict.ERROR, Verdict.NOT_RUN}:
        return ExitCode.ERROR
    if seen & {Verdict.FAIL, Verdict.XPASS}:
        return ExitCode.FAIL
    return ExitCode.OK


def against_base_exit_code(verdicts: Iterable[Verdict], regressions: bool, inconclusive: bool) -> ExitCode:
    """`run --against-base`: only what the series changed counts, its
    regressions (FAIL); a cell that proves nothing on one side (an ERROR or
    not-run, `inconclusive`) in a run that ended in an ERROR is an ERROR.
    Failures on both sides (the base's own, known gaps) are not the
    series' doing."""
    if exit_code(verdicts) == ExitCode.ERROR and inconclusive:
        return ExitCode.ERROR
    return ExitCode.FAIL if regressions else ExitCode.OK


def series_exit_code(patch_verdicts: Iterable[Verdict]) -> ExitCode:
    """`series check`: the run's rule over the patches that were checked. A
    patch not checked (NOT_RUN) follows one that does not apply, whose FAIL
    already speaks for it."""
    return exit_code(v for v in patch_verdicts if v != Verdict.NOT_RUN)


def bisect_exit_code(found: bool) -> ExitCode:
    """`series bisect`: finding the first bad patch (or a few candidates) is
    the series' FAIL; not finding it proves nothing, an ERROR."""
    return ExitCode.FAIL if found else ExitCode.ERROR


def bisect_state(verdicts: Iterable[Verdict]) -> str:
    """A bisect step's answer from its run's verdicts: "bad" when the kernel
    failed, "skip" (untestable, like `git bisect skip`) when the run proved
    nothing (an ERROR or a cell never run), "good" otherwise."""
    seen = set(verdicts)
    if Verdict.FAIL in seen:
        return "bad"
    if seen & {Verdict.ERROR, Verdict.NOT_RUN}:
        return "skip"
    return "good"


def error_exit_code(exc: HarnessError) -> ExitCode:
    """A command ended by a harness exception: exit 1 for the series' own
    defect (its FAIL), the exception's code otherwise."""
    return ExitCode.FAIL if failure_verdict(exc) == Verdict.FAIL else exc.exit_code


# ---------------------------------------------------------------- tables


class JunitKind(enum.StrEnum):
    PASSED = "passed"
    FAILURE = "failure"
    ERROR = "error"
    SKIPPED = "skipped"


JUNIT: dict[Verdict, JunitKind] = {
    Verdict.PASS: JunitKind.PASSED,
    Verdict.FAIL: JunitKind.FAILURE,
    Verdict.XPASS: JunitKind.FAILURE,  # a stale expectation fails the run
    Verdict.ERROR: JunitKind.ERROR,
    Verdict.SKIP: JunitKind.SKIPPED,
    Verdict.XFAIL: JunitKind.SKIPPED,  # junit has no xfail
    Verdict.NOT_RUN: JunitKind.SKIPPED,
}


def junit_outcome(verdict: Verdict, reason: str) -> tuple[JunitKind, str]:
    """The junit element for a verdict and its message: a skipped kind names
    the verdict, since junit cannot tell a SKIP from an XFAIL or NOT_RUN."""
    kind = JUNIT[verdict]
    if verdict == Verdict.XPASS:
        return kind, f"xpass: {reason}"
    if kind == JunitKind.SKIPPED:
        return kind, f"{verdict}: {reason}" if reason else str(verdict)
    return kind, reason


class PytestOutcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"  # raised in the item's setup
    SKIPPED = "skipped"
    XFAILED = "xfailed"
    XPASS_STRICT = "xpass-strict"  # failed, worded as pytest words a strict xfail that passed


PYTEST: dict[Verdict, PytestOutcome] = {
    Verdict.PASS: PytestOutcome.PASSED,
    Verdict.FAIL: PytestOutcome.FAILED,
    Verdict.ERROR: PytestOutcome.ERROR,
    Verdict.SKIP: PytestOutcome.SKIPPED,
    Verdict.NOT_RUN: PytestOutcome.SKIPPED,
    Verdict.XFAIL: PytestOutcome.XFAILED,
    Verdict.XPASS: PytestOutcome.XPASS_STRICT,
}

# avocado's test statuses. avocado has no xfail: a declared known gap is a
# WARN (it finished, with a reason to look at).
AVOCADO: dict[Verdict, str] = {
    Verdict.PASS: "pass",
    Verdict.FAIL: "fail",
    Verdict.ERROR: "error",
    Verdict.SKIP: "skip",
    Verdict.NOT_RUN: "skip",
    Verdict.XFAIL: "warn",
    Verdict.XPASS: "fail",  # a stale known gap fails the run, as with `pkvm-harness run`
}

# The CSS class of a verdict in the HTML report (its stylesheet styles these).
HTML_CLASS: dict[Verdict, str] = {v: str(v) for v in Verdict}

# KCIDB's test and build statuses (kcidb-io's schema: FAIL, ERROR, MISS,
# PASS, DONE, SKIP) describe the tested code, and KCIDB records a known
# failure as an issue with incidents, not as a status. So a declared known
# gap or known failure that failed (XFAIL) is a FAIL with an incident of
# its known issue present, and one that passed (XPASS) is a PASS with that
# incident absent: the stale list is the target's to fix, not the kernel's
# failure. The harness's ERROR (its own code, its input or its
# infrastructure failed; the kernel's status unknown) is KCIDB's ERROR; a
# cell the run never reached is a MISS. Metrics are DONE (harness.export.kcidb).
KCIDB: dict[Verdict, str] = {
    Verdict.PASS: "PASS",
    Verdict.FAIL: "FAIL",
    Verdict.ERROR: "ERROR",
    Verdict.SKIP: "SKIP",
    Verdict.XFAIL: "FAIL",
    Verdict.XPASS: "PASS",
    Verdict.NOT_RUN: "MISS",
}

# Whether a verdict says its known issue (the declared gap or failure) was
# present (True) or absent (False); None: no known issue is involved.
KCIDB_KNOWN_ISSUE_PRESENT: dict[Verdict, bool | None] = {v: None for v in Verdict} | {
    Verdict.XFAIL: True,
    Verdict.XPASS: False,
}

# Which layer a failure's issue blames (KCIDB's issue `culprit`): the
# kernel for a FAIL, the harness for an ERROR.
KCIDB_CULPRIT: dict[Verdict, str] = {Verdict.FAIL: "code", Verdict.XFAIL: "code", Verdict.ERROR: "harness"}
