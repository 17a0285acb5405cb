"""`pkvm-harness lava export|import`: a target x profile as a LAVA job, and
LAVA's output back into results.json with the harness's own verdicts.

Export: one job per target x profile, device type `qemu` (arch arm64). The
kernel Image, the initramfs (LAVA adds its test overlay to the cpio) and the
profile's scratch disk are the job's images, as `file://` URLs or under
`--artifact-url`. The profile's QEMU options are the job's `context` (the
names lava-server's qemu.jinja2 reads); `device_dictionary` renders the
device a lab's template would make of that context, for `lava-run` here.
The scenarios' guest commands become one inline Lava-Test-Shell definition:
a shell plan that runs each command between console markers and reports it
with `lava-test-case`. What LAVA cannot do (QMP, a value captured at run time
inside a command, a capability only the console watcher decides) is left
out, with the reason, in `left-out.txt` and on stderr.

Import: the console log of lava-run's output is replayed through the
scenario runner itself (`run_scenario` on a `ReplayGuest`): the same step
checks, event windows, signature table and unclaimed-fault rule as a live
run decide the verdicts; LAVA's own pass/fail per command is not used."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from harness import __version__
from harness.config import Registry
from harness.config.models import Profile, Scenario, Target, Transport
from harness.errors import ConfigError, HarnessError
from harness.export.ci import _dump  # the same plain YAML as the CI pipelines
from harness.logwatch import Event, LogWatcher
from harness.machine.profile import MachineSpec, kernel_cmdline, reproducer_argv
from harness.report.recorder import RunRecorder
from harness.report.results import BootRecord, RunResult, TargetRecord, Verdict
from harness.scenario.capabilities import CONSOLE_CAPABILITIES, PROBE_SCRIPT, guest_capabilities
from harness.scenario.runner import ScenarioContext, run_scenario, scenario_result, skip_reason
from harness.scenario.variables import substitute
from harness.session.base import Completed

MARK = "@@PKVM-LAVA"
PROBE_ID = "pkvm-capabilities"
JOB_FILE = "job.yaml"
DEVICE_FILE = "device.yaml"
LEFT_OUT_FILE = "left-out.txt"
META_PREFIX = "pkvm-harness."
_RUNTIME_VALUE = re.compile(r"\$\{capture\.")


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedCommand:
    id: str  # the lava-test-case name
    scenario: str
    step: str | None  # None: the capability probe
    command: str
    transport: Transport
    requires: frozenset[str]  # the step's (the scenario's are guarded around it)
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Plan:
    """What one LAVA job runs: the kept scenarios, their guest commands in
    order, and what was left out (scenario -> why)."""

    target: Target
    profile: Profile
    scenarios: tuple[Scenario, ...]
    static_caps: frozenset[str]
    commands: tuple[PlannedCommand, ...]
    left_out: Mapping[str, str]
    notes: tuple[str, ...] = ()


def _variables(target: Target, profile: Profile) -> dict[str, str]:
    return ScenarioContext(target, profile, frozenset()).base_variables()


def _why_not(scenario: Scenario) -> str | None:
    console_only = sorted(scenario.requires & CONSOLE_CAPABILITIES)
    if console_only:
        return f"requires {', '.join(console_only)}, which only the harness's console watcher decides"
    for step in scenario.steps:
        if step.qmp is not None:
            return f"step {step.name} sends QMP {step.qmp.command}: a LAVA job has no QEMU monitor"
        if step.run is not None and _RUNTIME_VALUE.search(step.run):
            return f"step {step.name}'s command uses a value captured at run time (${{capture.*}})"
        console_only = sorted(step.requires & CONSOLE_CAPABILITIES)
        if console_only and step.run is not None:
            return f"step {step.name} requires {', '.join(console_only)}, decided from the console"
    return None


def make_plan(
    target: Target, profile: Profile, scenarios: Sequence[Scenario], static_caps: frozenset[str]
) -> Plan:
    variables = _variables(target, profile)
    kept: list[Scenario] = []
    left_out: dict[str, str] = {}
    commands = [PlannedCommand(PROBE_ID, "", None, PROBE_SCRIPT, "serial", frozenset())]
    ssh_steps: list[str] = []
    for scenario in scenarios:
        why = _why_not(scenario)
        if why is not None:
            left_out[scenario.name] = why
            continue
        kept.append(scenario)
        for step in scenario.steps:
            if step.run is None:
                continue  # an events-only step: decided on import from the console
            if step.transport == "ssh":
                ssh_steps.append(f"{scenario.name}/{step.name}")
            command = substitute(step.run, variables)
            if any(ln.strip() in ("PKVM_EOF", "PKVM_PLAN_EOF") for ln in command.splitlines()):
                raise ConfigError(f"{scenario.path or scenario.name}: step {step.name}: a line PKVM_EOF")
            commands.append(
                PlannedCommand(
                    f"{scenario.name}.{step.name}",
                    scenario.name,
                    step.name,
                    command,
                    step.transport,
                    step.requires,
                    step.timeout_s,
                )
            )
    notes = []
    if ssh_steps:
        notes.append(
            "SSH steps run on the serial console under LAVA (LAVA's test shell owns the console;"
            f" the guest's sshd is not exercised): {', '.join(ssh_steps)}"
        )
    return Plan(target, profile, tuple(kept), static_caps, tuple(commands), left_out, tuple(notes))


_PLAN_HEAD = f"""# pkvm-harness plan: each guest command between console markers; the
# harness's importer decides the verdicts from the console log.
T=${{PKVM_TMP:-/tmp}}
PKVM_CAPS=$T/pkvm-caps
has() {{ grep -qx "$1" "$PKVM_CAPS"; }}
pkvm_run() {{  # ID TIMEOUT_S: the command comes on stdin
  cat > "$T/pkvm-cmd.sh"
  echo "{MARK}:BEGIN:$1"
  sh "$T/pkvm-cmd.sh" </dev/null >"$T/pkvm-out" 2>&1 &
  pid=$!
  # The step's timeout, as the harness applies it: killed, and said so.
  (
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$2" & s=$!
    wait "$s" && kill -9 "$pid" 2>/dev/null && echo "{MARK}:TIMEOUT:$1"
  ) &
  dog=$!
  wait "$pid"
  rc=$?
  kill "$dog" 2>/dev/null
  echo "{MARK}:OUT:$1"
  cat "$T/pkvm-out"
  printf '\\n{MARK}:END:%s:%d\\n' "$1" "$rc"
  [ "$1" = {PROBE_ID} ] && cat "$T/pkvm-out" >> "$PKVM_CAPS"
  if [ "$rc" = 0 ]; then r=pass; else r=fail; fi
  lava-test-case "$1" --result "$r"
}}
"""


def _guard(tokens: frozenset[str]) -> str:
    return " && ".join(f"has {shlex.quote(t)}" for t in sorted(tokens)) or "true"


def job_metadata(plan: Plan) -> dict[str, str]:
    """What the importer needs to replay the job: in the job's metadata and,
    first thing, on the console (a lab's log is then enough)."""
    return {
        f"{META_PREFIX}target": plan.target.name,
        f"{META_PREFIX}profile": plan.profile.name,
        f"{META_PREFIX}scenarios": ",".join(s.name for s in plan.scenarios),
        f"{META_PREFIX}static-caps": ",".join(sorted(plan.static_caps)),
        f"{META_PREFIX}left-out": " | ".join(f"{k}: {v}" for k, v in plan.left_out.items()),
        f"{META_PREFIX}version": __version__,
    }


def plan_script(plan: Plan) -> str:
    meta = json.dumps(job_metadata(plan), separators=(",", ":"))
    lines = [
        _PLAN_HEAD,
        f"printf '%s\\n' {shlex.quote(f'{MARK}:JOB:{meta}')}",
        "cat > \"$PKVM_CAPS\" <<'PKVM_EOF'",
        *sorted(plan.static_caps),
        "PKVM_EOF",
    ]

    def run(cmd: PlannedCommand) -> list[str]:
        return [f"pkvm_run {cmd.id} {cmd.timeout_s:g} <<'PKVM_EOF'", cmd.command.rstrip("\n"), "PKVM_EOF"]

    lines += run(plan.commands[0])
    for scenario in plan.scenarios:
        lines += [f"if {_guard(scenario.requires)}; then", f'echo "{MARK}:SCENARIO:{scenario.name}"']
        for cmd in plan.commands:
            if cmd.scenario != scenario.name:
                continue
            lines += [f"if {_guard(cmd.requires)}; then", *run(cmd), "fi"]
        lines += [f'echo "{MARK}:SCENARIO-END:{scenario.name}"', "fi"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- QEMU and the job

# A reproducer argv's options that LAVA itself supplies (the images).
_LAVA_OWNS = {"-kernel", "-initrd", "-append"}


_LISTENERS = re.compile(r"^-(?:vnc|spice|gdb|incoming)\b|\b(?:tcp|telnet|websocket):|hostfwd=")


def _listens_off_loopback(option: str) -> str | None:
    """Why this QEMU option would listen on a host port not on loopback, or None."""
    if not _LISTENERS.search(option):
        return None
    if option.startswith("-vnc") and ("127.0.0.1" in option or "localhost" in option or "unix:" in option):
        return None
    if re.search(r"(?:tcp|telnet|websocket):(?:127\.0\.0\.1|localhost|\[::1\]):", option):
        return None
    if "hostfwd=" in option and all(
        re.match(r"(?:tcp|udp):127\.0\.0\.1:", f) for f in re.findall(r"hostfwd=([^,]+)", option)
    ):
        return None
    return "opens a host port not bound to 127.0.0.1"


def qemu_context(target: Target, profile: Profile) -> dict[str, Any]:
    """The profile's QEMU options as a LAVA job context: the argv the
    harness runs, minus what LAVA adds itself (kernel, initrd, append, the
    console), with no host port (user networking without hostfwd) and the
    scratch disk as the image `{scratch}`."""
    spec = MachineSpec(
        profile=profile,
        kernel=Path("{kernel}"),
        initrd=Path("{rootfs}"),
        cmdline=(),
        serial_socket=Path("-"),
        qmp_socket=Path("-"),
        console_log=Path("-"),
        ssh_port=0,
        scratch_disk=Path("{scratch}") if profile.scratch_disk_mb else None,
    )
    argv = reproducer_argv(spec)[1:]
    machine = cpu = memory = None
    extra: list[str] = []
    i = 0
    while i < len(argv):
        opt, val = argv[i], argv[i + 1] if i + 1 < len(argv) else ""
        if opt == "-serial" and val == "mon:stdio":  # the reproducer's console
            # The console on stdio is LAVA's connection. Explicit, because
            # -nodefaults drops the serial port -nographic would add.
            extra.append("-serial stdio")
            i += 2
            continue
        if opt in _LAVA_OWNS:
            i += 2
            continue
        if opt in ("-M", "-cpu", "-m"):
            if opt == "-M":
                machine = val
            elif opt == "-cpu":
                cpu = val
            else:
                memory = val
            i += 2
            continue
        if opt == "-netdev" and ",hostfwd=" in val:
            val = val.split(",hostfwd=")[0]  # no port on the host at all
        if opt.startswith("-") and val and not val.startswith("-"):
            extra.append(f"{opt} {val}")
            i += 2
        else:
            extra.append(opt)
            i += 1
    for option in extra:
        if (bad := _listens_off_loopback(option)) is not None:
            raise ConfigError(
                f"{profile.path or profile.name}: {option!r}: {bad} (QEMU under LAVA binds 127.0.0.1 only)"
            )
    return {
        "arch": "arm64",
        "machine": machine,
        "cpu": cpu,
        "memory": memory,
        "no_kvm": True,
        "no_network": True,  # the profile's own virtio-net (behind the IOMMU) is in extra_options
        "extra_options": extra,
        "kernel_cmdline": " ".join(kernel_cmdline(profile, target.cmdline)),
    }


def device_dictionary(context: Mapping[str, Any]) -> dict[str, Any]:
    """The device a lab's qemu.jinja2 renders from this job context (the
    options it derives from arch, cpu, machine, memory, no_kvm, no_network
    and extra_options, as lava-server's and tuxlava's templates write them
    for arm64), for lava-run on this machine."""
    return {
        "device_type": "qemu",
        "available_architectures": ["arm64", "aarch64"],
        "constants": {
            "posix": {
                "lava_test_sh_cmd": "/bin/sh",
                "lava_test_results_dir": "/lava-%s",
                "lava_test_shell_file": "~/.bashrc",
            },
            "kernel-start-message": "Linux version [0-9]",
            "default-shell-prompt": "lava-test: # ",
            "spawn_maxread": "4092",
            "failure_retry": 1,
            "boot_retry": 1,
            "shutdown-message": "The system is going down for reboot NOW",
        },
        "actions": {
            "deploy": {
                "connections": {"serial": None},
                "methods": {
                    "image": {
                        "parameters": {"guest": {"size": 512, "interface": "ide", "driveid": "lavatest"}}
                    }
                },
            },
            "boot": {
                "connections": {"serial": None},
                "methods": {
                    "qemu": {
                        "parameters": {
                            "command": "qemu-system-aarch64",
                            "options": [
                                f"-cpu {context['cpu']}",
                                f"-machine {context['machine']}",
                                "-nographic",
                                "-nic none" if context.get("no_network") else "-net nic -net user",
                                f"-m {context['memory']}",
                                "-monitor none",
                            ],
                            "extra": list(context.get("extra_options", [])),
                        }
                    }
                },
            },
        },
        "timeouts": {
            "actions": {"lava-test-shell": {"minutes": 3}},
            "connections": {"lava-test-shell": {"seconds": 10}},
        },
    }


def _url(path: Path, base: str | None) -> str:
    return f"{base.rstrip('/')}/{path.name}" if base else path.resolve().as_uri()


def job_definition(
    plan: Plan, kernel: Path, initramfs: Path, scratch: Path | None, artifact_url: str | None
) -> dict[str, Any]:
    context = qemu_context(plan.target, plan.profile)
    images: dict[str, Any] = {
        "kernel": {
            "image_arg": f'-kernel {{kernel}} -append "{context.pop("kernel_cmdline")}"',
            "url": _url(kernel, artifact_url),
        },
        "rootfs": {
            "image_arg": "-initrd {rootfs}",
            "url": _url(initramfs, artifact_url),
            "format": "cpio.newc",
            "overlays": {"lava": True},
        },
    }
    if scratch is not None:
        # LAVA substitutes {scratch} in image arguments only; QEMU creates
        # drives before devices, so the virtio-blk device keeps its place
        # (and PCI slot) in extra_options.
        extra = context["extra_options"]
        drive = next(e for e in extra if e.startswith("-drive file={scratch}"))
        context["extra_options"] = [e for e in extra if e != drive]
        images["scratch"] = {"image_arg": drive, "url": _url(scratch, artifact_url)}
    test_minutes = max(5, int(sum(s.timeout_s for s in plan.scenarios) / 60) + 1)
    return {
        "device_type": "qemu",
        "job_name": f"pkvm-harness {plan.target.name} x {plan.profile.name}",
        "priority": "medium",
        "visibility": "public",
        "metadata": job_metadata(plan),
        "context": context,
        "timeouts": {"job": {"minutes": test_minutes + 10}, "action": {"minutes": 5}},
        "actions": [
            {"deploy": {"to": "tmpfs", "os": "oe", "timeout": {"minutes": 5}, "images": images}},
            {
                "boot": {
                    "method": "qemu",
                    "media": "tmpfs",
                    "timeout": {"minutes": 5},
                    "prompts": ["/ # ", "# "],
                }
            },
            {
                "test": {
                    "timeout": {"minutes": test_minutes},
                    "definitions": [
                        {
                            "from": "inline",
                            "name": "pkvm-harness",
                            "path": "inline/pkvm-harness.yaml",
                            "repository": {
                                "metadata": {
                                    "format": "Lava-Test Test Definition 1.0",
                                    "name": "pkvm-harness",
                                    "description": f"pkvm-harness scenarios on {plan.profile.name}",
                                },
                                "run": {"steps": [_inline_step(plan_script(plan)), "sh /tmp/pkvm-plan.sh"]},
                            },
                        }
                    ],
                }
            },
        ],
    }


def _inline_step(script: str) -> str:
    return f"cat > /tmp/pkvm-plan.sh <<'PKVM_PLAN_EOF'\n{script}PKVM_PLAN_EOF"


def _place(src: Path, dest: Path) -> Path:
    """A copy in the export directory (never a link into the shared cache)."""
    dest.unlink(missing_ok=True)
    shutil.copyfile(src, dest)
    return dest


@dataclass(frozen=True)
class Exported:
    jobs: tuple[Path, ...]
    left_out: Path


def export(
    target: Target,
    profiles: Sequence[Profile],
    scenarios: Sequence[Scenario],
    output: Path,
    artifact_url: str | None = None,
    with_device: bool = False,
    upto: int | None = None,
) -> Exported:
    """One job per target x profile under OUTPUT/<target>_<profile>/, the
    artifacts under OUTPUT/artifacts/, what was left out in left-out.txt."""
    from harness.pipeline import build_all
    from harness.scenario.capabilities import build_capabilities

    if not scenarios:
        raise ConfigError("lava export: give at least one --scenario")
    artifacts = build_all(target, upto=upto)
    store = output / "artifacts"
    store.mkdir(parents=True, exist_ok=True)
    kernel = _place(artifacts.kernel.image, store / "Image")
    initramfs = _place(artifacts.image.initramfs, store / "initramfs.cpio")
    jobs: list[Path] = []
    report: list[str] = []
    for profile in profiles:
        scratch = None
        if profile.scratch_disk_mb:
            scratch = store / f"scratch-{profile.scratch_disk_mb}M.img"
            with scratch.open("wb") as f:
                f.truncate(profile.scratch_disk_mb << 20)
        caps = frozenset(build_capabilities(artifacts.kernel, profile.features))
        plan = make_plan(target, profile, scenarios, caps)
        job_dir = output / f"{target.name}_{profile.name}"
        job_dir.mkdir(parents=True, exist_ok=True)
        job = job_definition(plan, kernel, initramfs, scratch, artifact_url)
        (job_dir / JOB_FILE).write_text(_dump(job))
        if with_device:
            (job_dir / DEVICE_FILE).write_text(_dump(device_dictionary(job["context"])))
        jobs.append(job_dir / JOB_FILE)
        for name, why in plan.left_out.items():
            report.append(f"{target.name} x {profile.name}: left out {name}: {why}")
        report += [f"{target.name} x {profile.name}: note: {n}" for n in plan.notes]
        if not plan.scenarios:
            report.append(f"{target.name} x {profile.name}: no scenario left to run")
    left_out = output / LEFT_OUT_FILE
    left_out.write_text("".join(f"{line}\n" for line in report) or "nothing left out\n")
    for line in report:
        print(f"pkvm-harness: lava: {line}", file=sys.stderr)
    return Exported(tuple(jobs), left_out)


# ---------------------------------------------------------------- import


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
            log.console.append(LogLine(_epoch(e.get("dt")), msg.replace('\\"', '"')))
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


_MARKER = re.compile(
    re.escape(MARK) + r":(BEGIN|OUT|END|TIMEOUT|SCENARIO|SCENARIO-END):([^:\s]+)(?::(-?\d+))?"
)


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
        planned = next(
            (
                c
                for c in self.plan
                if c.scenario == self.scenario and c.command == command and c.id not in self._used
            ),
            None,
        )
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
            ended = "kernel-fatal" if self.watcher.fatal is not None else "eof"
            return Completed(command, self._output(rec), None, self._seconds(rec.begin, None), ended_by=ended)
        self.advance(rec.end + 1)
        seconds = self._seconds(rec.begin, rec.end)
        if rec.timed_out:
            return Completed(command, self._output(rec), None, seconds, ended_by="timeout")
        return Completed(command, self._output(rec), rec.status, seconds)

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

    def _seconds(self, first: int, last: int | None) -> float:
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
    boot_id = f"{target.name}/lava-{profile.name}"
    guest = ReplayGuest(log.console, plan.commands)
    start = time.monotonic()

    def ctx(caps: frozenset[str], first: bool) -> ScenarioContext:
        return ScenarioContext(
            target,
            profile,
            caps,
            console_log=str(console_log),
            faults_since=0 if first else None,
            boot=boot_id,
        )

    for name, why in left_out.items():
        recorder.record(
            scenario_result(
                registry.scenario(name),
                ctx(frozenset(), False),
                Verdict.SKIP,
                f"left out of the LAVA job: {why}",
            )
        )
    ready_line = guest.line_of("PKVM-HARNESS-READY")
    boot_verdict, boot_reason = Verdict.PASS, ""
    if ready_line is None:
        guest.advance(len(log.console))
        fatal = guest.watcher.fatal
        if fatal is not None:
            boot_verdict, boot_reason = Verdict.FAIL, f"boot: {fatal.summary()}"
        elif any("Linux version" in ln.text for ln in log.console):
            boot_verdict, boot_reason = Verdict.FAIL, "boot: no readiness marker in LAVA's console log"
        else:
            why = "; ".join(log.errors[-2:]) or str((log.job_result or {}).get("error_msg", "no console"))
            boot_verdict, boot_reason = Verdict.ERROR, f"the LAVA job did not boot the kernel: {why}"
    else:
        guest.advance(ready_line + 1)
    recorder.add_boot(
        _boot_record(boot_id, target, profile, job_output, console_log, guest, boot_verdict, boot_reason)
    )
    if boot_verdict != Verdict.PASS:
        events = [e for e in guest.watcher.events if e.severity != "info"]
        for s in scenarios:
            recorder.record(
                scenario_result(s, ctx(frozenset(), False), boot_verdict, boot_reason, events=events)
            )
        return recorder.finish({"import_s": round(time.monotonic() - start, 3)})
    _replay_scenarios(guest, scenarios, static_caps, ctx, recorder)
    recorder.add_boot(
        _boot_record(boot_id, target, profile, job_output, console_log, guest, boot_verdict, boot_reason)
    )
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


def _boot_record(
    boot_id: str,
    target: Target,
    profile: Profile,
    job_output: Path,
    console_log: Path,
    guest: ReplayGuest,
    verdict: Verdict,
    reason: str,
) -> BootRecord:
    ready = guest.line_of("PKVM-HARNESS-READY")
    seconds = 0.0
    if ready is not None and guest.console and guest.console[0].at is not None and guest.console[ready].at:
        seconds = float(guest.console[ready].at or 0.0) - float(guest.console[0].at)
    return BootRecord(
        id=boot_id,
        target=target.name,
        profile=profile.name,
        dir=str(job_output),
        console_log=str(console_log),
        ready=ready is not None,
        verdict=verdict,
        reason=reason,
        boot_s=max(seconds, 0.0),
        events=tuple(e.to_json() for e in guest.watcher.events),
    )


def _replay_scenarios(
    guest: ReplayGuest,
    scenarios: Sequence[Scenario],
    static_caps: frozenset[str],
    ctx: Callable[[frozenset[str], bool], ScenarioContext],
    recorder: RunRecorder,
) -> None:
    """The pipeline's per-boot loop, on the replayed guest: probe, then each
    scenario through run_scenario (its own skip rule, windows and checks)."""
    from harness.errors import GuestFailure

    try:
        caps = frozenset(static_caps | guest_capabilities(guest))
    except GuestFailure as exc:
        if scenarios:
            recorder.record(
                scenario_result(
                    scenarios[0], ctx(frozenset(), False), Verdict.FAIL, f"capability probe: {exc.reason}"
                )
            )
        return
    except HarnessError as exc:
        for s in scenarios:
            recorder.record(
                scenario_result(s, ctx(frozenset(), False), Verdict.ERROR, f"capability probe: {exc}")
            )
        return
    first = True
    died_in = None
    for scenario in scenarios:
        if guest.dead:
            recorder.record(
                scenario_result(
                    scenario,
                    ctx(caps, False),
                    Verdict.NOT_RUN,
                    f"the guest died in {died_in}: a LAVA job boots once (a live run would boot again)",
                )
            )
            continue
        c = ctx(caps, first)
        why = skip_reason(scenario, c)
        if why is not None:
            recorder.record(scenario_result(scenario, c, Verdict.SKIP, why))
            continue
        first = False
        guest.scenario = scenario.name
        begin = guest.line_of(f"{MARK}:SCENARIO:{scenario.name}")
        if begin is not None:
            guest.advance(begin + 1)
        result = run_scenario(scenario, guest, c)
        end = guest.line_of(f"{MARK}:SCENARIO-END:{scenario.name}")
        if begin is not None:
            result = replace(result, duration_s=guest._seconds(begin, end))
        recorder.record(result)
        died_in = scenario.name


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc). QEMU under lava-run is not in
    lava-run's process group: pexpect gives it a session of its own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_job_locally(
    job_dir: Path,
    output: Path,
    timeout: float = 1800.0,
    watch: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """`lava-run` of an exported job on this machine, with the device
    dictionary exported beside it (`lava export --device-dict`); the log
    goes to OUTPUT/output.yaml, ready for `lava import OUTPUT`. On timeout or
    interrupt lava-run and everything below it (QEMU) get SIGKILL, so no
    QEMU outlives it. `watch(pid)` is called with lava-run's pid about twice
    a second while it runs. Returns lava-run's exit code and the wall time."""
    import os
    import signal
    import subprocess

    if shutil.which("lava-run") is None:
        raise HarnessError("lava-run not found (install lava-dispatcher: sudo ci/setup-host.sh)")
    device = job_dir / DEVICE_FILE
    if not device.is_file():
        raise ConfigError(f"{device}: missing (export with --device-dict)")
    output.mkdir(parents=True, exist_ok=True)
    # The job id names LAVA's scratch directory: unique per caller.
    argv = ["lava-run", "--job-id", str(os.getpid()), "--output-dir", str(output), "--device", str(device)]
    start = time.monotonic()
    with (output / "output.yaml").open("wb") as log:
        proc = subprocess.Popen([*argv, str(job_dir / JOB_FILE)], stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                if time.monotonic() - start > timeout:
                    raise HarnessError(f"lava-run did not finish within {timeout:.0f}s")
                if watch is not None:
                    watch(proc.pid)
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                for pid in [*descendants(proc.pid), proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
    return proc.returncode, time.monotonic() - start
