"""`pkvm-harness lava import`: a LAVA job's output (lava-run's log, or a
lab's output.yaml) back into results.json with the harness's verdicts.

The console in the log is replayed through the scenario runner itself
(`run_scenario` on a `ReplayGuest`): the same step checks, event windows,
signature table and unclaimed-fault rule as a live run decide the verdicts;
LAVA's own pass/fail per command is not used. The job's plan (what ran,
between which markers) is rebuilt from the job metadata the plan printed
first on the console, with `harness.export.lava.make_plan`."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from harness import __version__
from harness.config import Registry
from harness.config.models import Scenario, Transport
from harness.errors import ConfigError, HarnessError
from harness.export.lava import JOB_FILE, MARK, META_PREFIX, PlannedCommand, make_plan
from harness.image.initramfs import READY_MARKER
from harness.logwatch import Event, LogWatcher
from harness.report.recorder import RunRecorder
from harness.report.results import RunResult, ScenarioResult, TargetRecord, Verdict
from harness.scenario import runner
from harness.scenario.capabilities import guest_capabilities
from harness.scenario.cells import Boot, BootCells, ProfileCells, RunScenario
from harness.scenario.runner import UPTIME_COMMAND, GuestControl, ScenarioContext, scenario_result
from harness.session.base import Completed, EndedBy
from harness.session.guest import BootOutcome


@dataclass(frozen=True)
class LogLine:
    at: float | None  # seconds since the epoch (LAVA's "dt")
    text: str


@dataclass
class JobLog:
    """What lava-run left: the serial console (its "target" lines), the
    results it reported, the job's metadata (from description.yaml or the
    job definition) and the boot command."""

    console: list[LogLine]
    results: list[dict[str, Any]]
    metadata: dict[str, str]
    qemu_version: str = "unknown"
    boot_command: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def job_result(self) -> dict[str, Any] | None:
        return next((r for r in reversed(self.results) if r.get("case") == "job"), None)


def _entry(raw: str) -> dict[str, Any] | None:
    raw = raw.strip().removeprefix("- ")
    if not raw.startswith("{"):
        return None  # a Python warning or other noise among the log lines
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        try:  # LAVA writes a few results as YAML flow (tagged strings)
            doc = yaml.safe_load(raw)
        except yaml.YAMLError:
            return None
    return doc if isinstance(doc, dict) and "lvl" in doc else None


def _epoch(dt: object) -> float | None:

    try:
        return datetime.fromisoformat(str(dt)).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


# A command id is SCENARIO.STEP: letters, digits, '-', '_' and '.'.
_MARKER = re.compile(
    re.escape(MARK) + r":(BEGIN|OUT|END|TIMEOUT|SCENARIO|SCENARIO-END):([\w.-]+)(?::(-?\d+))?"
)


def _split_at_markers(text: str) -> list[str]:
    """One console line as the lines it holds. The kernel prints to the
    console the job's shell writes to, so a printk can land in the middle of
    a marker's line ("@@PKVM-LAVA:OUT:id[   48.63] arm-smmu-v3 ...: event
    0x10 received:"). Each marker gets a line of its own, and what the kernel
    wrote around it keeps one for the log watcher."""
    parts: list[str] = []
    rest = text
    while (m := _MARKER.search(rest)) is not None:
        if m.start() > 0:
            parts.append(rest[: m.start()])
        parts.append(m[0])
        rest = rest[m.end() :]
    if rest or not parts:
        parts.append(rest)
    return parts


_QEMU_VERSION = re.compile(r"qemu-system-\S+, installed at version: ([^\s,]+)")


def read_job_log(job_output: Path) -> JobLog:
    """lava-run's output directory: the log is output.yaml (lava-run's
    stdout/stderr lines, or lava-server's output.yaml list)."""
    log_file = job_output / "output.yaml"
    if not job_output.is_dir():
        raise ConfigError(f"lava import: {job_output}: not a directory")
    if not log_file.is_file():
        raise ConfigError(
            f"lava import: {log_file}: missing (save lava-run's log there: lava-run ... > output.yaml 2>&1)"
        )
    log = JobLog([], [], {})
    for raw in log_file.read_text(errors="replace").splitlines():
        e = _entry(raw)
        if e is None:
            continue
        lvl, msg = e["lvl"], e.get("msg")
        if lvl == "target" and isinstance(msg, str):
            # lava_dispatcher.shell escapes every '"' of the console as '\"'.
            at = _epoch(e.get("dt"))
            log.console.extend(LogLine(at, part) for part in _split_at_markers(msg.replace('\\"', '"')))
        elif lvl == "results" and isinstance(msg, dict):
            log.results.append(msg)
        elif lvl in ("error", "exception") and isinstance(msg, str):
            log.errors.append(msg.strip().splitlines()[-1] if msg.strip() else msg)
        elif lvl == "info" and isinstance(msg, str):
            if m := _QEMU_VERSION.search(msg):
                log.qemu_version = f"QEMU {m[1]} (under LAVA)"
            elif msg.startswith("Boot command: "):
                log.boot_command = msg.removeprefix("Boot command: ")
    job_line = next((ln.text for ln in log.console if ln.text.startswith(f"{MARK}:JOB:")), None)
    if job_line is not None:
        with contextlib.suppress(json.JSONDecodeError):
            log.metadata = {str(k): str(v) for k, v in json.loads(job_line.split(":JOB:", 1)[1]).items()}
    elif (job_output / JOB_FILE).is_file():  # the job never got to its test shell
        meta = yaml.safe_load((job_output / JOB_FILE).read_text()).get("metadata")
        if isinstance(meta, dict):
            log.metadata = {str(k): str(v) for k, v in meta.items()}
    if f"{META_PREFIX}target" not in log.metadata:
        raise ConfigError(
            f"lava import: {log_file}: not a pkvm-harness job (no {MARK}:JOB: line on its console;"
            f" if the job never reached its test shell, copy the exported {JOB_FILE} beside it)"
        )
    return log


@dataclass
class _Record:
    id: str
    begin: int  # console line index of BEGIN
    out: int | None = None
    end: int | None = None
    status: int | None = None
    timed_out: bool = False


def _records(console: list[LogLine]) -> dict[str, _Record]:
    records: dict[str, _Record] = {}
    for i, line in enumerate(console):
        m = _MARKER.search(line.text)
        if m is None:
            continue
        kind, ident = m[1], m[2]
        if kind == "BEGIN":
            records[ident] = _Record(ident, i)
        elif kind == "OUT" and ident in records:
            records[ident].out = i
        elif kind == "TIMEOUT" and ident in records:
            records[ident].timed_out = True
        elif kind == "END" and ident in records:
            records[ident].end = i
            records[ident].status = int(m[3]) if m[3] is not None else None
    return records


_KERNEL_RECORD = re.compile(r"^\s*(?:<\d+>)?\[\s*\d+\.\d+\]")


class ReplayGuest:
    """A finished LAVA job's console, replayed as a guest for the scenario
    runner (harness.scenario.runner.GuestControl): a command returns what
    the job's plan recorded for it, and the console (through a LogWatcher
    with the harness's signature table) advances to where that command
    ended, so step windows, forbidden events and unclaimed faults are
    decided by the runner's own code, as in a live run."""

    def __init__(self, console: list[LogLine], plan: Sequence[PlannedCommand]) -> None:
        self.console = console
        self.plan = list(plan)
        self.records = _records(console)
        self.watcher = LogWatcher()
        self.scenario = ""  # the scenario now running: its commands are the candidates
        self.pos = 0  # console lines fed to the watcher
        self.gone = False  # a command never ended: the guest (or the job) died under it
        self._used: set[str] = set()
        self._window: PlannedCommand | None = None  # the fault-report window step being answered
        # Where a scenario's output ends: the next scenario or command marker.
        self._stops = sorted(
            i
            for i, ln in enumerate(console)
            if (m := _MARKER.search(ln.text)) and m[1] in ("BEGIN", "SCENARIO")
        )

    def advance(self, upto: int) -> None:
        upto = min(upto, len(self.console))
        while self.pos < upto:
            self.watcher.feed(self.console[self.pos].text + "\n")
            self.pos += 1
        if self.pos >= len(self.console):
            self.watcher.finish()

    def line_of(self, needle: str) -> int | None:
        return next((i for i, ln in enumerate(self.console) if needle in ln.text), None)

    @property
    def dead(self) -> bool:
        return self.gone or self.watcher.fatal is not None

    def run(
        self,
        transport: Transport,
        command: str,
        timeout: float,
        hang_probe_s: float | None = None,
        hang_timeout_s: float | None = None,
    ) -> Completed:
        window, self._window = self._window, None
        planned = self._planned(command)
        if planned is None and window is not None:
            # What the runner waits of the fault-report window after the
            # uptime: the job waited the whole window (the console is there).
            return Completed(command, "", 0, 0.0)
        if planned is None:
            raise HarnessError(
                f"command not in the LAVA job's plan: {command.strip().splitlines()[0][:80]!r}"
            )
        self._used.add(planned.id)
        rec = self.records.get(planned.id)
        if rec is None:
            if self.gone or self.pos >= len(self.console):
                return Completed(command, "", None, 0.0, ended_by="eof")
            raise HarnessError(
                f"step {planned.step}: the LAVA job did not run it"
                " (its capability guard disagreed with the harness)"
            )
        if rec.end is None:  # the job ended under this command
            self.advance(len(self.console))
            self.gone = True
            ended: EndedBy = "kernel-fatal" if self.watcher.fatal is not None else "eof"
            return Completed(command, self._output(rec), None, self.seconds(rec.begin, None), ended_by=ended)
        self.advance(rec.end + 1)
        seconds = self.seconds(rec.begin, rec.end)
        if rec.timed_out:
            return Completed(command, self._output(rec), None, seconds, ended_by="timeout")
        return Completed(command, self._output(rec), rec.status, seconds)

    def _planned(self, command: str) -> PlannedCommand | None:
        """The job's command the runner asks for: the same text, in this
        scenario, not used yet. The uptime a fault-report window step asks
        for is that step's command (which printed it first)."""
        unused = [c for c in self.plan if c.scenario == self.scenario and c.id not in self._used]
        if command == UPTIME_COMMAND:
            self._window = next((c for c in unused if c.report_window), None)
            return self._window
        return next((c for c in unused if c.command == command), None)

    def _output(self, rec: _Record) -> str:
        if rec.out is None:
            return ""
        stop = rec.end if rec.end is not None else len(self.console)
        lines = [
            ln.text
            for ln in self.console[rec.out + 1 : stop]
            if not _KERNEL_RECORD.match(ln.text) and not _MARKER.search(ln.text)
        ]
        while lines and not lines[-1]:
            lines.pop()  # the newline printed before the END marker
        return "".join(f"{ln}\n" for ln in lines)

    def seconds(self, first: int, last: int | None) -> float:
        """Between two console lines, by LAVA's timestamps (last None: the end)."""
        a = self.console[first].at
        b = self.console[last if last is not None else -1].at
        return max(0.0, b - a) if a is not None and b is not None else 0.0

    def sync_console(self, timeout: float = 15.0) -> None:
        pass  # the whole console is already there

    def settle(self, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
        """Late messages: everything up to the next command or scenario."""
        nxt = next((i for i in self._stops if i >= self.pos), len(self.console))
        self.advance(nxt)

    def events_since(self, line: int) -> list[Event]:
        return self.watcher.since(line)

    def qmp(
        self, command: str, arguments: Mapping[str, object], wait_event: str | None, timeout: float
    ) -> dict[str, object] | None:
        raise HarnessError(f"QMP {command}: not part of a LAVA job (the exporter leaves such scenarios out)")


def _left_out(meta: Mapping[str, str]) -> dict[str, str]:
    raw = meta.get(f"{META_PREFIX}left-out", "")
    return dict(part.split(": ", 1) for part in raw.split(" | ") if ": " in part)


def import_results(job_output: Path, output: Path, registry: Registry) -> RunResult:
    """lava-run's output directory -> OUTPUT/results.json (+ junit.xml and
    console.log), verdicts decided by the harness's runner on the replayed
    console."""
    log = read_job_log(job_output)
    meta = log.metadata
    target = registry.target(meta[f"{META_PREFIX}target"])
    profile = registry.profile(meta[f"{META_PREFIX}profile"])
    names = [n for n in meta.get(f"{META_PREFIX}scenarios", "").split(",") if n]
    scenarios = [registry.scenario(n) for n in names]
    left_out = _left_out(meta)
    static_caps = frozenset(c for c in meta.get(f"{META_PREFIX}static-caps", "").split(",") if c)
    plan = make_plan(target, profile, scenarios, static_caps)
    command = shlex.join(["pkvm-harness", "lava", "import", str(job_output), "--output", str(output)])
    recorder = RunRecorder(output, __version__, log.qemu_version, command)
    cells = [(target.name, None, profile.name, n) for n in [*names, *left_out]]
    recorder.plan(cells)
    console_log = output / "console.log"
    console_log.write_text("".join(f"{ln.text}\n" for ln in log.console))
    recorder.add_target(
        TargetRecord(
            target.name,
            kernel={
                "lava_job": str(job_output),
                "kernel_version": meta.get(f"{META_PREFIX}kernel", "unknown"),
            },
            image={"lava_overlay": True},
        )
    )
    guest = ReplayGuest(log.console, plan.commands)
    start = time.monotonic()
    boot = Boot(
        id=f"{target.name}/lava-{profile.name}",
        target=target,
        profile=profile,
        side=None,
        dir=str(job_output),
        console_log=str(console_log),
        guest=guest,
        outcome=_boot_outcome(log, guest),
    )
    for name, why in left_out.items():
        reason = f"left out of the LAVA job: {why}"
        recorder.record(
            scenario_result(registry.scenario(name), boot.context(frozenset(), False), Verdict.SKIP, reason)
        )
    engine = ProfileCells(
        _OneBoot(boot, static_caps), retries=0, profile=profile.name, on_boot=recorder.add_boot
    )
    try:
        engine.run(scenarios, recorder.record)
    finally:
        engine.close()
    if not boot.outcome.ready:
        return recorder.finish({"import_s": round(time.monotonic() - start, 3)})
    job = log.job_result or {}
    timings = {"import_s": round(time.monotonic() - start, 3)}
    if log.console and log.console[0].at is not None and log.console[-1].at is not None:
        timings["lava_console_s"] = round(log.console[-1].at - log.console[0].at, 3)
    interrupted = (
        None if job.get("result") in ("pass", None) else f"LAVA job: {job.get('error_msg', 'failed')}"
    )
    for r in recorder.snapshot().results:  # planned, never reached by the replay
        if r.verdict == Verdict.NOT_RUN and r.reason == "not started":
            recorder.record(replace(r, reason=interrupted or "the LAVA job ended before it"))
    return recorder.finish(timings, interrupted)


def _boot_outcome(log: JobLog, guest: ReplayGuest) -> BootOutcome:
    """How the job's boot went, read from its console (the replay's
    counterpart of Guest.wait_ready); the console is fed up to the
    readiness marker, or to its end when the guest never got there."""
    ready = guest.line_of(READY_MARKER)
    if ready is not None:
        guest.advance(ready + 1)
        first, last = guest.console[0].at, guest.console[ready].at
        seconds = max(float(last) - float(first), 0.0) if first is not None and last else 0.0
        return BootOutcome(True, Verdict.PASS, "", seconds)
    guest.advance(len(log.console))
    fatal = guest.watcher.fatal
    if fatal is not None:
        return BootOutcome(False, Verdict.FAIL, f"boot: {fatal.summary()}", 0.0, fatal=fatal)
    if any("Linux version" in ln.text for ln in log.console):
        return BootOutcome(False, Verdict.FAIL, "boot: no readiness marker in LAVA's console log", 0.0)
    why = "; ".join(log.errors[-2:]) or str((log.job_result or {}).get("error_msg", "no console"))
    return BootOutcome(False, Verdict.ERROR, f"the LAVA job did not boot the kernel: {why}", 0.0)


class _OneBoot:
    """The boot of a LAVA job, for the boot-cell engine (which decides every
    verdict, as in a live run): the probe is the static claims the job was
    planned with plus the guest's answers replayed; each scenario is
    replayed from its own markers; there is no second boot."""

    no_reboot = "a LAVA job boots once (a live run would boot again)"

    def __init__(self, boot: Boot, static_caps: frozenset[str]) -> None:
        self._boot = boot
        self._static_caps = static_caps

    @contextlib.contextmanager
    def boot(self, n: int) -> Iterator[Boot | None]:
        yield self._boot if n == 1 else None

    def cells(self, boot: Boot) -> BootCells:
        def probe(guest: GuestControl) -> frozenset[str]:
            return frozenset(self._static_caps | guest_capabilities(guest))

        return BootCells(boot, probe, run=_replay_scenario)

    def unbooted(self, scenario: Scenario) -> ScenarioContext:
        return self._boot.context(frozenset(), False)


def _replay_scenario(
    scenario: Scenario, guest: GuestControl, ctx: ScenarioContext, run: RunScenario | None = None
) -> ScenarioResult:
    """The runner (`run`, default runner.run_scenario) on the replayed
    console, from the scenario's own marker; its duration is the job's, by
    LAVA's timestamps."""
    assert isinstance(guest, ReplayGuest)
    guest.scenario = scenario.name
    begin = guest.line_of(f"{MARK}:SCENARIO:{scenario.name}")
    if begin is not None:
        guest.advance(begin + 1)
    result = (run or runner.run_scenario)(scenario, guest, ctx)
    end = guest.line_of(f"{MARK}:SCENARIO-END:{scenario.name}")
    if begin is not None:
        result = replace(result, duration_s=guest.seconds(begin, end))
    return result
