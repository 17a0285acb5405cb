"""Kernel selftests in the guest: the runner script, per-case results, and
the known-failure list.

The guest runs the test binaries of a suite (packed under
/usr/lib/kselftests/<suite> by the image stage) two at a time (JOBS; those
in RUN_ALONE by themselves), each under its own timeout, and prints, binary
by binary in the listed order, what the kernel's own kselftest runner
prints when it runs them one at a time: a top-level KTAP line per binary,
decided by its exit code (0 pass, 4 skip, anything else fail; a binary
killed at its timeout is "# TIMEOUT"), with the binary's output before it,
each line prefixed with "# ". Binaries that print
KTAP themselves (kselftest_harness, ksft_test_result) thus nest one level
deeper, and each of their subtests becomes a case of its own
("binary/subtest"); binaries that print TAP only partly are judged by their
exit code alone."""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from harness.config.models import KnownFailure, KselftestRun
from harness.kernel.selftests import GUEST_DIR
from harness.report.results import CaseResult, Verdict, case_result
from harness.scenario import ktap

# Seconds between SIGTERM and SIGKILL for a binary past its timeout.
KILL_GRACE_S = 2

# Binaries run side by side, at most this many: most KVM selftests run one
# vCPU in one thread, so two use the guest's two CPUs.
JOBS = 2

# Binaries that run by themselves (fnmatch on the binary's path in the
# suite): they measure time against the host's clock, spread vCPUs over
# every CPU, or inject faults into the kernel globally, so a neighbour would
# change what they measure or make them fail.
RUN_ALONE = (
    "*arch_timer*",
    "*perf_test",
    "*/page_fault_test",
    "rseq_test",
    "steal_time",
    "hardware_disable_test",
    "kvm_page_table_test",
    "max_guest_memory_test",
    "memslot_*",
    "demand_paging_test",
    "dirty_log_test",
    "*/vgic_lpi_stress",
    "iommufd_fail_nth",
)

# How often (s) the guest runner looks at a running binary's output and
# whether it finished. A look that finds nothing new costs one fork (the
# sleep): the tests' CPUs are the guest's too.
_POLL_S = 0.25

# The in-guest runner (busybox ash). Up to JOBS binaries run at once, each
# in a session of its own (setsid keeps its pid), so that at its timeout its
# whole process group is killed; the watchdog leaves a mark before it kills
# (a binary killed by SIGTERM for another reason is not a timeout). Each
# writes to a file of its own; the runner prints them in order, the current
# one as it grows (complete lines, prefixed "# ", read when the file is
# newer than the last look), then its result line, so the output reads as
# if they ran one at a time. A binary that starts while another is being
# printed is announced with a "# selftests: S: T" line of its own, so that
# output cut short (the kernel died) names every binary that was running.
# A binary listed in RUN_ALONE starts when nothing else runs, and nothing
# starts beside it.
_SCRIPT = """\
cd /{dir} 2>/dev/null || {{ echo "Bail out! kselftest suite {suite} is not in the image"; exit 2; }}
d=/tmp/ksft-$$; rm -rf "$d"; mkdir "$d" || {{ echo "Bail out! mkdir $d failed"; exit 2; }}
echo "TAP version 13"; echo "1..{count}"
{tests}; N={count}; A=" {alone} "; h=1; s=1
start() {{
  eval "u=\\$t_$1"; q="$d/$1"
  [ $1 -gt $h ] && echo "# selftests: {suite}: $u"
  if [ ! -x "./$u" ]; then echo missing > "$q.rc"; return; fi
  (setsid "./$u" > "$q.out" 2>&1 < /dev/null &
   p=$!
   (sleep {timeout}; echo > "$q.timeout"; kill -TERM -$p || kill -TERM $p; sleep {grace};
    kill -KILL -$p || kill -KILL $p) > /dev/null 2>&1 &
   w=$!
   wait $p; rc=$?
   kill $w 2>/dev/null; echo $rc > "$q.tmp"; mv "$q.tmp" "$q.rc") &
}}
fill() {{
  while [ $s -le $N ]; do
    r=0; k=$h; a=
    while [ $k -lt $s ]; do
      if [ ! -e "$d/$k.rc" ]; then r=$((r+1)); case "$A" in *" $k "*) a=1;; esac; fi
      k=$((k+1))
    done
    [ $r -ge {jobs} ] || [ -n "$a" ] && return
    case "$A" in *" $s "*) [ $r -gt 0 ] && return;; esac
    start $s; s=$((s+1))
  done
}}
while [ $h -le $N ]; do
  eval "t=\\$t_$h"; o="$d/$h"; n=0; x="selftests: {suite}: $t"
  echo "# $x"; fill; : > "$d/seen"
  while :; do
    f=; [ -e "$o.rc" ] && f=1
    if [ -n "$f" ] || [ "$o.out" -nt "$d/seen" ]; then
      : > "$d/seen"; c=999999999
      [ -z "$f" ] && c=$(wc -l < "$o.out")
      [ $c -gt $n ] && [ -e "$o.out" ] && awk -v n=$n -v c=$c 'NR > n && NR <= c {{ print "# " $0 }}' "$o.out"
      n=$c
    fi
    [ -n "$f" ] && break
    fill; sleep {poll}
  done
  rc=$(cat "$o.rc")
  if [ "$rc" = missing ]; then echo "not ok $h $x # missing from the image"
  elif [ -e "$o.timeout" ]; then echo "not ok $h $x # TIMEOUT {timeout} seconds"
  elif [ "$rc" -eq 0 ]; then echo "ok $h $x"
  elif [ "$rc" -eq 4 ]; then echo "ok $h $x # SKIP"
  else echo "not ok $h $x # exit=$rc"; fi
  rm -f "$o".*; h=$((h+1))
done
rm -rf "$d"
"""


def alone(test: str) -> bool:
    """Whether `test` must run with no other binary beside it."""
    return any(fnmatch.fnmatchcase(test, pattern) for pattern in RUN_ALONE)


def command(run: KselftestRun, jobs: int = JOBS) -> str:
    """The guest shell command that runs `run`, `jobs` binaries at a time,
    and prints nested KTAP, binary by binary in the order of `run.tests`."""
    return _SCRIPT.format(
        dir=f"{GUEST_DIR}/{run.suite}",
        suite=run.suite,
        count=len(run.tests),
        tests=" ".join(f"t_{i}={shlex.quote(t)}" for i, t in enumerate(run.tests, 1)),
        alone=" ".join(str(i) for i, t in enumerate(run.tests, 1) if alone(t)),
        jobs=jobs,
        timeout=int(run.timeout_s),
        grace=KILL_GRACE_S,
        poll=_POLL_S,
    )


@dataclass(frozen=True)
class Observed:
    """What the runner's output says of one case, before the verdict policy
    (`case_result`: known failures, XPASS) makes it a `CaseResult`."""

    name: str
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class Case:
    """A case with where it sits: `parent` is the binary's case for a subtest."""

    result: Observed
    parent: str | None = None
    timed_out: bool = False


_ASSERT_HEAD = "==== Test Assertion Failure ===="
_SOURCE_LINE = re.compile(r"^\s*#?\s*(\S+\.[ch]:\d+:.*)$")
_STACK = re.compile(r"^\s+\d+\t0x|^\s+\d+\s+0x[0-9a-f]+")
_PID_ERRNO = re.compile(r"pid=\d+ tid=\d+ errno=(\d+ - .*)$")
_SKIP_REASON = re.compile(r"#\s*SKIP\b\s*-?\s*(.*)$", re.IGNORECASE)
# Lines that differ from run to run, and the runner's own header: never
# part of a reason.
_NOISE = re.compile(r"^\s*#?\s*(Random seed:|Terminated$|Killed$|selftests: \S+: )")
_KTAP_LINE = re.compile(r"^\s*(ok|not ok)\s+\d+|^\s*1\.\.\d+|^\s*(K?TAP version)|^\s*#\s*Totals", re.I)


def _clip(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def failure_detail(lines: Sequence[str]) -> str:
    """What a failed test said about its failure, without run-specific noise
    (pids, addresses): a KVM selftest's assertion (file:line: expression:
    message, and the errno it printed), or the first file:line diagnostic
    (kselftest_harness), or its last line of output."""
    lines = [ln.rstrip() for ln in lines]
    if _ASSERT_HEAD in "\n".join(lines):
        start = next(i for i, ln in enumerate(lines) if _ASSERT_HEAD in ln)
        where, errno, message = "", "", []
        for ln in lines[start + 1 :]:
            if not ln.strip() or _STACK.match(ln) or _KTAP_LINE.match(ln) or "addr2line" in ln:
                continue  # (the stack trace's symboliser is not in the guest)
            if not where and _SOURCE_LINE.match(ln):
                where = ln.strip()
            elif m := _PID_ERRNO.search(ln):
                errno = m.group(1).strip()
            elif "(stack trace empty)" not in ln:
                message.append(ln.strip())
        text = f"{where}: {' '.join(message)}" if message else where
        return _clip(f"{text} (errno={errno})" if errno else text)
    for ln in lines:
        if m := _SOURCE_LINE.match(ln):
            return _clip(m.group(1))
    tail = [ln for ln in lines if ln.strip() and not _KTAP_LINE.match(ln) and not _NOISE.match(ln)]
    return _clip(tail[-1].lstrip("# ")) if tail else ""


def _with_output(why: str, lines: Sequence[str]) -> str:
    detail = failure_detail(lines)
    return f"{why}; last output: {detail}" if detail else why


def _skip_detail(lines: Sequence[str]) -> str:
    for ln in lines:
        if m := _SKIP_REASON.search(ln):
            return _clip(m.group(1))
    return ""


def _node_case(node: ktap.KtapNode, name: str, parent: str | None) -> Case:
    r = node.result
    if r.directive == "SKIP":
        why = r.reason or _skip_detail(node.output)
        return Case(Observed(name, Verdict.SKIP, why or "skipped"), parent)
    if r.directive in ("XFAIL", "TODO"):
        says = f"the test says {r.directive}: {r.reason}".strip()
        return Case(Observed(name, Verdict.XFAIL, says), parent)
    if r.ok:
        return Case(Observed(name, Verdict.PASS), parent)
    if m := re.match(r"TIMEOUT\s+(\d+)", r.reason):
        why = _with_output(f"timed out after {m.group(1)}s (killed)", node.output)
        return Case(Observed(name, Verdict.FAIL, why), parent, True)
    detail = failure_detail(node.output)
    head = f"exit {m.group(1)}" if (m := re.match(r"exit=(\d+)", r.reason)) else r.reason or "not ok"
    return Case(Observed(name, Verdict.FAIL, f"{head}: {detail}" if detail else head), parent)


def _subcases(nodes: Sequence[ktap.KtapNode], prefix: str, parent: str) -> list[Case]:
    out: list[Case] = []
    for node in nodes:
        name = f"{prefix}/{node.result.name or node.result.number}"
        out.append(_node_case(node, name, parent))
        out += _subcases(node.children, name, parent)
    return out


def cases(output: str, run: KselftestRun, cut_short: str | None = None) -> list[Case]:
    """Per-case results of `run` from the runner's output. A binary whose
    result never came is a FAIL with `cut_short` (why the output ended: the
    kernel died, the step timed out) when it had started (the one being
    printed, and any started beside it), and the ones after are not-run."""
    tree = ktap.parse_tree(output)
    if tree.bail_out is not None:
        raise ValueError(tree.bail_out)
    header = f"selftests: {run.suite}: "
    ended = cut_short or "no result (the runner's output ended)"
    by_name = {n.result.name.removeprefix(header): n for n in tree.nodes}
    out: list[Case] = []
    # The first binary named after the last result is the one being
    # printed; the others had started beside it (their output is unseen).
    started = list(dict.fromkeys(ln.removeprefix(header) for ln in tree.trailing if ln.startswith(header)))
    for test in run.tests:
        node = by_name.get(test)
        if node is not None:
            out.append(_node_case(node, test, None))
            out += _subcases(node.children, test, test)
        elif started and test == started[0]:
            out.append(Case(Observed(test, Verdict.FAIL, _with_output(ended, tree.trailing))))
        elif test in started:
            why = f"{ended} (it had started beside {started[0]}; its output was not printed yet)"
            out.append(Case(Observed(test, Verdict.FAIL, why)))
        else:
            why = f"not run: {cut_short or 'the runner stopped'}"
            out.append(Case(Observed(test, Verdict.NOT_RUN, why)))
    return out


def classify(
    found: Sequence[Case], known: Sequence[KnownFailure], suite: str, target: str, profile: str
) -> tuple[list[CaseResult], list[dict[str, object]]]:
    """Apply the known-failure list: a listed case that fails is an xfail
    with the list's reason, a listed case that passes is an XPASS (the list
    is stale); unlisted failures stay FAILs. A binary that failed only
    because of listed subtests is an xfail too. Returns the cases and the
    entries in scope here, each with the cases it matched (for the report:
    the list is shown, never applied silently)."""
    entries = [k for k in known if k.applies(suite, target, profile)]
    matched: dict[int, list[str]] = {i: [] for i in range(len(entries))}
    hits = [next((i for i, k in enumerate(entries) if k.matches(c.result.name)), None) for c in found]
    for case, hit in zip(found, hits, strict=True):
        if hit is not None:
            matched[hit].append(f"{case.result.name}: {case.result.verdict}")

    def result(i: int, subtests: Sequence[CaseResult] = ()) -> CaseResult:
        c, hit = found[i], hits[i]
        known_entry = entries[hit] if hit is not None else None
        o = c.result
        return case_result(o.name, o.verdict, o.reason, known_entry, c.timed_out, subtests)

    # Subtests first: a binary's verdict may rest on its subtests' (all
    # failures known ones: an xfail).
    subs = {i: result(i) for i, c in enumerate(found) if c.parent is not None}
    by_parent: dict[str, list[CaseResult]] = {}
    for i, res in subs.items():
        by_parent.setdefault(str(found[i].parent), []).append(res)
    results = [
        subs[i] if i in subs else result(i, by_parent.get(c.result.name, ())) for i, c in enumerate(found)
    ]
    applied = [{**k.to_json(), "matched": matched[i]} for i, k in enumerate(entries)]
    return results, applied


def counts(results: Sequence[CaseResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[str(r.verdict)] = out.get(str(r.verdict), 0) + 1
    return out


def describe(results: Sequence[CaseResult], verdict: Verdict, limit: int = 3) -> str:
    """'arm64/a (reason); arm64/b (reason) and 2 more' for the cases with `verdict`."""
    picked = [r for r in results if r.verdict == verdict]
    shown = "; ".join(f"{r.name} ({r.reason})" if r.reason else r.name for r in picked[:limit])
    more = f" and {len(picked) - limit} more" if len(picked) > limit else ""
    return shown + more
