"""A `dma_fuzz:` step: runs `edu-dma fuzz` in the guest once per seed and
judges every run with the host model (harness/scenario/dma_model.py).

A failing run is shrunk by delta debugging: candidate subsequences are
replayed in the same guest (`edu-dma fuzz --ops ...`) and kept while the
model still finds the same kind of mismatch. The FAIL's reason names the
seed, the operation, the model's state and the minimized reproducer.

Replay and long runs, without touching the CLI: the environment of
`pkvm-harness run` may set
- PKVM_HARNESS_FUZZ_SEED=S: every dma_fuzz step runs seed S only (exactly
  the sequence a FAIL named);
- PKVM_HARNESS_FUZZ_SECONDS=N: every dma_fuzz step runs its seeds, then
  further seeds (the largest + 1, + 2, ...) until N seconds have passed.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config.models import DmaFuzzRun, EventExpectation, Step
from harness.logwatch import Event
from harness.scenario import dma_model as M
from harness.session.base import Completed

if TYPE_CHECKING:
    from harness.scenario.runner import GuestControl

SEED_ENV = "PKVM_HARNESS_FUZZ_SEED"
SECONDS_ENV = "PKVM_HARNESS_FUZZ_SECONDS"
# A candidate's DMAs that the model expects to be blocked for more than this
# many bytes are left out: the device reports a fault per beat.
MAX_BLOCKED_BYTES = 64
_FAULT_WINDOW_S = 5.2


@dataclass
class FuzzOutcome:
    command: str
    result: Completed | None
    reason: str | None  # None: every run matched the model
    claims: list[EventExpectation] = field(default_factory=list)
    evidence: dict[str, object] = field(default_factory=dict)


def seeds(run: DmaFuzzRun, env: Mapping[str, str]) -> tuple[tuple[int, ...], float | None]:
    """The seeds to run, and the time budget for more (None: just these)."""
    if (s := env.get(SEED_ENV)) is not None:
        return (int(s, 0),), None
    if (n := env.get(SECONDS_ENV)) is not None:
        return run.seeds, float(n)
    return run.seeds, None


def command(run: DmaFuzzRun, seed: int) -> str:
    return f"edu-dma --backend {run.backend} --seed {seed:#x} fuzz --length {run.length}"


def _wait_fault_window(guest: GuestControl, step: Step) -> None:
    """Until the fault-report rate limit is fresh (5 s since the last report
    the console showed, guest time)."""
    guest.sync_console()
    stamps = [e.timestamp for e in guest.watcher.events if e.kind == "iommu-fault" and e.timestamp]
    if not stamps:
        return
    up = guest.run(step.transport, "cut -d' ' -f1 /proc/uptime", 30)
    try:
        left = _FAULT_WINDOW_S - (float(up.output.strip().splitlines()[-1]) - max(stamps))
    except (ValueError, IndexError):
        left = _FAULT_WINDOW_S
    if left > 0:
        guest.run(step.transport, f"sleep {left:.2f}", left + 30)


@dataclass
class _Judged:
    run: M.Run
    verdict: M.Verdict
    result: Completed


def _run_once(guest: GuestControl, step: Step, cmd: str, wo_reads: bool, wait: bool = True) -> _Judged:
    """One helper run, judged. `wait`: first let the fault-report rate
    limit expire, so that missed faults can be judged."""
    if wait:
        _wait_fault_window(guest, step)
    mark = guest.watcher.lines_seen
    earlier = guest.events_since(0)
    result = guest.run(step.transport, cmd, step.timeout_s, step.hang_probe_s, step.hang_timeout_s)
    guest.sync_console()
    guest.settle()  # fault reports trail the DMA that caused them
    try:
        run = M.parse(result.output)
    except ValueError as exc:
        last = result.output.strip().splitlines()[-1:] or ["no output"]
        raise _NotFuzzOutput(f"{exc} (exit status {result.status}): {last[0][:200]}") from None
    events: list[Event] = guest.events_since(mark)
    return _Judged(run, M.judge(run, events, earlier, wo_reads), result)


class _NotFuzzOutput(Exception):
    pass


def minimize(
    guest: GuestControl, step: Step, first: _Judged, wo_reads: bool, budget: int
) -> tuple[list[M.Op], _Judged | None, int]:
    """ddmin over the failing run's operations up to its mismatch: (the
    smallest sequence found, its judged run, guest runs spent)."""
    mm = first.verdict.mismatch
    assert mm is not None
    end = mm.index + 1 if 0 <= mm.index < len(first.run.ops) else len(first.run.ops)
    ops = [o.op for o in first.run.ops[:end]]
    last: list[_Judged] = []
    spent = 0

    def fails(candidate: Sequence[M.Op]) -> Sequence[M.Op] | None:
        nonlocal spent
        run = first.run
        cand = M.prune(candidate, run.backend, run.page, run.pool_len, wo_reads, MAX_BLOCKED_BYTES)
        if not cand:
            return None
        spent += 1
        cmd = "edu-dma " + first.run.replay_args(cand)
        try:
            # only a missed fault needs a fresh rate limit to show again
            j = _run_once(guest, step, cmd, wo_reads, wait=mm.kind == "missed-fault")
        except _NotFuzzOutput:
            return None
        got = j.verdict.mismatch
        if got is not None and got.kind == mm.kind:
            last.append(j)
            return cand
        return None

    small = M.ddmin(ops, fails, budget)
    if small == ops:
        return ops, None, spent
    return small, (last[-1] if last else None), spent


def run_step(
    step: Step, fuzz: DmaFuzzRun, guest: GuestControl, variables: Mapping[str, str], log_dir: str | None
) -> FuzzOutcome:
    wo_reads = variables.get("profile.wo_reads", "blocked") == "allowed"
    todo, seconds = seeds(fuzz, os.environ)
    start = time.monotonic()
    outcome = FuzzOutcome(command="", result=None, reason=None)
    runs: list[dict[str, object]] = []
    logs: list[str] = []
    queue = list(todo)
    next_seed = max(todo) + 1
    while queue:
        seed = queue.pop(0)
        cmd = command(fuzz, seed)
        try:
            judged = _run_once(guest, step, cmd, wo_reads)
        except _NotFuzzOutput as exc:
            outcome.command, outcome.reason = cmd, f"seed {seed:#x}: {exc}"
            return outcome
        outcome.command, outcome.result = cmd, judged.result
        if log_dir is not None:
            path = Path(log_dir).parent / f"dma-fuzz-{step.name}-{seed:#x}.log"
            path.write_text(judged.result.output)
            logs.append(str(path))
        outcome.claims += _claims(judged)
        mm = judged.verdict.mismatch
        runs.append(
            {
                "seed": seed,
                "backend": fuzz.backend,
                "ops": len(judged.run.ops),
                "dmas": sum(o.op.kind in ("dw", "dr") for o in judged.run.ops),
                "blocked_pieces": len(judged.verdict.faults),
                "verdict": "fail" if mm else "pass",
            }
        )
        if mm is not None:
            outcome.reason = _fail_reason(guest, step, judged, wo_reads, fuzz.minimize_budget, outcome)
            break
        if seconds is not None and not queue and time.monotonic() - start < seconds:
            queue.append(next_seed)
            next_seed += 1
    outcome.evidence["dma_fuzz_runs"] = runs
    if logs:
        outcome.evidence["dma_fuzz_logs"] = logs
    return outcome


def merge_evidence(evidence: dict[str, object], new: Mapping[str, object]) -> None:
    """Adds a step's fuzz evidence to the scenario's: lists of runs and logs
    accumulate over steps."""
    for key, value in new.items():
        old = evidence.get(key)
        if isinstance(old, list) and isinstance(value, list):
            old.extend(value)
        else:
            evidence[key] = value


def _fail_reason(
    guest: GuestControl, step: Step, judged: _Judged, wo_reads: bool, budget: int, outcome: FuzzOutcome
) -> str:
    mm = judged.verdict.mismatch
    assert mm is not None
    run = judged.run
    small, small_judged, spent = minimize(guest, step, judged, wo_reads, budget)
    if small_judged is not None:
        outcome.claims += _claims(small_judged)
    repro = "edu-dma " + run.replay_args(small)
    outcome.evidence["dma_fuzz_failure"] = {
        "seed": run.seed,
        "backend": run.backend,
        "op": mm.index,
        "kind": mm.kind,
        "detail": mm.detail,
        "model_state": mm.state,
        "minimized_ops": [o.token() for o in small],
        "minimized_mismatch": small_judged.verdict.mismatch.detail
        if small_judged and small_judged.verdict.mismatch
        else None,
        "reproducer": repro,
        "replay_env": f"{SEED_ENV}={run.seed:#x}",
        "minimize_runs": spent,
    }
    return (
        f"{mm.reason(run)}; model state: {mm.state}; minimized to {len(small)} ops"
        f" ({spent} guest runs): {shlex.quote(M.replay_ops(small))}"
        f" (replay: {SEED_ENV}={run.seed:#x}, or in the guest: {repro})"
    )


def _claims(judged: _Judged) -> list[EventExpectation]:
    """The faults a run's model explains, claimed for the scenario's
    unexpected-fault rule (the model has judged them already)."""
    out = []
    for bdf, lo, hi in M.fault_claims(judged.run, judged.verdict.faults):
        for sig in ("smmuv3-event", "virtio-iommu-fault"):
            out.append(
                EventExpectation(
                    signature=sig, fields={"bdf": bdf, "address": f"{lo:#x}..{hi + 1:#x}"}, min_count=0
                )
            )
    return out
