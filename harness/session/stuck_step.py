"""Is an SSH step stuck in the kernel? What /proc says of the processes the
step runs as, asked over serial while the step stays silent: the same
processes, not a tick of CPU time spent, one of them asleep
uninterruptibly in the same place at two looks, is the kernel's FAIL."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

# In the guest, over serial: every process's pid, comm, state and parent
# (a comm may hold one space): about 1 KB, for a look at a silent SSH step.
PROCESSES_COMMAND = "cat /proc/[0-9]*/stat 2>/dev/null | cut -d' ' -f1-5"
# Then, only when one of the step's processes sleeps uninterruptibly: their
# stat lines up to stime, and where those asleep sleep (wchan) with their
# kernel stacks, one line each.
_WHERE = (
    "for p in {pids}; do cut -d' ' -f1-16 /proc/$p/stat 2>/dev/null; done;"
    ' for p in {asleep}; do echo "@wchan $p $(cat /proc/$p/wchan 2>/dev/null)";'
    ' sed "s/^/@stack $p /" /proc/$p/stack 2>/dev/null; done; :'
)
_STAT = re.compile(r"^(?P<pid>\d+) \((?P<comm>.*)\) (?P<rest>.*)$")
_STACK_ADDRESS = re.compile(r"^\[<[0-9a-f]+>\]\s*")


@dataclass(frozen=True)
class StepProcess:
    """One process of the command an SSH step runs, as /proc shows it."""

    pid: int
    comm: str
    state: str  # /proc/PID/stat's: R, S, D (uninterruptible), T, Z ...
    cpu_ticks: int  # utime + stime; -1 when not read
    wchan: str = ""
    stack: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f" in {self.wchan}" if self.wchan else ""
        stack = f" (kernel stack: {' <- '.join(self.stack[:8])})" if self.stack else ""
        # No pid: the same stuck kernel gets the same reason (it is in the evidence).
        return f"{self.comm} asleep uninterruptibly{where}{stack}"

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "state": self.state,
            "cpu_ticks": self.cpu_ticks,
            "wchan": self.wchan,
            "stack": list(self.stack),
        }


def _stat_lines(text: str) -> dict[int, tuple[StepProcess, int]]:
    """/proc/PID/stat lines, whole or cut after the parent: each process
    (CPU ticks -1 unless the line reaches stime) and its parent."""
    out: dict[int, tuple[StepProcess, int]] = {}
    for line in text.splitlines():
        m = _STAT.match(line.strip())
        if m is None:
            continue
        # state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
        fields = m["rest"].split()
        try:
            ppid = int(fields[1])
            ticks = int(fields[11]) + int(fields[12]) if len(fields) >= 13 else -1
        except (IndexError, ValueError):  # a line cut by the console, or not a stat line
            continue
        pid = int(m["pid"])
        out[pid] = (StepProcess(pid, m["comm"], fields[0], ticks), ppid)
    return out


def step_processes(stat_lines: str) -> dict[int, StepProcess]:
    """From every /proc/PID/stat line: the processes an SSH command runs as,
    the descendants of dropbear (dropbear itself left out). The harness runs
    one command at a time over SSH, and none while it asks over serial."""
    lines = _stat_lines(stat_lines)
    procs = {pid: p for pid, (p, _) in lines.items()}
    parents = {pid: ppid for pid, (_, ppid) in lines.items()}
    daemons = {pid for pid, p in procs.items() if p.comm == "dropbear"}

    def under_daemon(pid: int) -> bool:
        seen: set[int] = set()
        while pid in parents and pid not in seen:
            seen.add(pid)
            pid = parents[pid]
            if pid in daemons:
                return True
        return False

    return {pid: p for pid, p in procs.items() if pid not in daemons and under_daemon(pid)}


def whereabouts_command(procs: Mapping[int, StepProcess]) -> str | None:
    """The command that reads where `procs` are (see with_whereabouts);
    None when none of them sleeps uninterruptibly: nothing to look at."""
    asleep = " ".join(str(pid) for pid, p in sorted(procs.items()) if p.state == "D")
    if not asleep:
        return None
    pids = " ".join(str(pid) for pid in sorted(procs))
    return _WHERE.format(pids=pids, asleep=asleep)


def with_whereabouts(procs: Mapping[int, StepProcess], output: str) -> dict[int, StepProcess]:
    """`procs` with what whereabouts_command's output says of them: state
    and CPU ticks now, and the wchan and kernel stack of those asleep."""
    now = {pid: p for pid, (p, _) in _stat_lines(output).items() if p.cpu_ticks >= 0}
    wchan: dict[int, str] = {}
    stack: dict[int, list[str]] = {}
    for line in output.splitlines():
        tag, _, rest = line.strip().partition(" ")
        pid_s, _, value = rest.partition(" ")
        if not pid_s.isdigit():
            continue
        if tag == "@wchan":
            wchan[int(pid_s)] = value.strip() if value.strip() != "0" else ""
        elif tag == "@stack" and value.strip():
            stack.setdefault(int(pid_s), []).append(_STACK_ADDRESS.sub("", value.strip()))
    return {
        pid: replace(
            now.get(pid, p), comm=p.comm, wchan=wchan.get(pid, p.wchan), stack=tuple(stack.get(pid, p.stack))
        )
        for pid, p in procs.items()
    }


def stuck_processes(before: Mapping[int, StepProcess], after: Mapping[int, StepProcess]) -> list[StepProcess]:
    """The step made no progress between two looks: the same processes, not
    a tick of CPU time spent, and at least one of them asleep
    uninterruptibly (D) in the same place both times; those are returned.
    Empty when it progressed, or when it only waits interruptibly (S, as
    `sleep` or a shell waiting for its child does): that is no evidence."""
    if not after or before.keys() != after.keys():
        return []
    if any(after[pid].cpu_ticks != before[pid].cpu_ticks or after[pid].cpu_ticks < 0 for pid in after):
        return []
    return [
        after[pid]
        for pid in sorted(after)
        if after[pid].state == before[pid].state == "D" and after[pid].wchan == before[pid].wchan
    ]
