"""A stuck step with a live guest (#22): which processes are the SSH step's,
and when two looks at them show no progress. The e2e proof on a real
kernel is tests/e2e/test_deadlines.py's step-stuck test."""

from __future__ import annotations

from harness.session.stuck_step import StepProcess, step_processes, stuck_processes, with_whereabouts

# `cat /proc/[0-9]*/stat` in the guest, cut after stime: init, dropbear (the
# daemon and the connection it forked), the step's shell and its child, the
# serial shell (not the step's), and a comm with a space and parentheses.
STAT = """\
1 (init) S 0 1 1 0 -1 4194560 100 0 0 0 3 5 0 0 20 0
90 (dropbear) S 1 90 90 0 -1 4194560 50 0 0 0 1 1 0 0 20 0
130 (dropbear) S 90 130 130 0 -1 4194560 80 0 0 0 4 2 0 0 20 0
131 (sh) S 130 131 131 0 -1 4194560 20 0 0 0 0 1 0 0 20 0
132 (hostname) D 131 131 131 0 -1 4194560 10 0 0 0 0 0 0 0 20 0
140 (sh) S 1 140 140 0 -1 4194560 20 0 0 0 7 9 0 0 20 0
141 (a (b) c) D 140 140 140 0 -1 4194560 20 0 0 0 0 0 0 0 20 0
"""
# The first look: `cut -d' ' -f1-5` of every stat line (no CPU ticks).
FIRST = "\n".join(" ".join(line.split(" ")[:5]) for line in STAT.splitlines()) + "\n"
# The second, for the step's processes when one sleeps uninterruptibly:
# their stat lines up to stime, and where the sleeper sleeps.
WHERE = """\
131 (sh) S 130 131 131 0 -1 4194560 20 0 0 0 0 1 0
132 (hostname) D 131 131 131 0 -1 4194560 10 0 0 0 0 2 0
@wchan 132 pkvm_negative_test_stuck
@stack 132 [<0>] __switch_to+0xe8/0x150
@stack 132 [<0>] pkvm_negative_test_stuck+0x1c/0x28
@stack 132 [<0>] __arm64_sys_sethostname+0x88/0x1a0
"""


def test_the_step_processes_are_dropbears_descendants_only() -> None:
    procs = step_processes(STAT)
    assert sorted(procs) == [131, 132]
    assert procs[132] == StepProcess(132, "hostname", "D", 0)
    assert procs[131].cpu_ticks == 1


def test_a_comm_with_parentheses_and_spaces_is_read_whole() -> None:
    line = "7 (a (b) c) D 1 1 1 0 -1 0 0 0 0 0 2 3 0 0 20 0\n"
    assert step_processes("1 (dropbear) S 0 1 1 0 -1 0 0 0 0 0 0 0\n" + line)[7].comm == "a (b) c"


def test_a_first_look_cut_after_the_parent_has_no_ticks_and_proves_nothing() -> None:
    look = step_processes(FIRST)
    assert sorted(look) == [131, 132] and look[132].state == "D"
    assert all(p.cpu_ticks == -1 for p in look.values())
    assert stuck_processes(look, dict(look)) == []


def test_whereabouts_bring_the_ticks_the_wchan_and_the_stack_without_addresses() -> None:
    procs = with_whereabouts(step_processes(FIRST), WHERE)
    assert procs[132].cpu_ticks == 2 and procs[131].cpu_ticks == 1
    assert procs[132].wchan == "pkvm_negative_test_stuck"
    assert procs[132].stack == (
        "__switch_to+0xe8/0x150",
        "pkvm_negative_test_stuck+0x1c/0x28",
        "__arm64_sys_sethostname+0x88/0x1a0",
    )
    assert procs[131].wchan == "" and procs[131].stack == ()
    assert (
        procs[132]
        .describe()
        .startswith("hostname asleep uninterruptibly in pkvm_negative_test_stuck (kernel stack: __switch_to")
    )


def test_no_progress_in_uninterruptible_sleep_twice_is_stuck() -> None:
    look = with_whereabouts(step_processes(FIRST), WHERE)
    stuck = stuck_processes(look, dict(look))
    assert [p.pid for p in stuck] == [132]


def test_cpu_time_spent_between_the_looks_is_progress() -> None:
    before = with_whereabouts(step_processes(STAT), WHERE)
    after = dict(before)
    after[131] = StepProcess(131, "sh", "S", 2)
    assert stuck_processes(before, after) == []


def test_another_place_or_another_process_is_progress() -> None:
    before = with_whereabouts(step_processes(STAT), WHERE)
    moved = {pid: p for pid, p in before.items()}
    moved[132] = StepProcess(132, "hostname", "D", 0, wchan="folio_wait_bit_common")
    assert stuck_processes(before, moved) == []
    assert stuck_processes(before, {**before, 133: StepProcess(133, "cat", "D", 0)}) == []


def test_an_interruptible_wait_is_no_evidence() -> None:
    """`sleep 100` (S), a stopped process (T): the step waits, the kernel
    is not shown stuck."""
    for state in ("S", "T"):
        look = {131: StepProcess(131, "sleep", state, 0)}
        assert stuck_processes(look, dict(look)) == []
    assert stuck_processes({}, {}) == []
