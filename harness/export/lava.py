"""`pkvm-harness lava export`: a target x profile as a LAVA job (the import
is harness/export/lava_import.py), and `run_job_locally` for lava-run here.

Export: one job per target x profile, device type `qemu` (arch arm64). The
kernel Image, the initramfs (LAVA adds its test overlay to the cpio) and the
profile's scratch disk are the job's images, as `file://` URLs or under
`--artifact-url`. The profile's QEMU options are the job's `context` (the
names lava-server's qemu.jinja2 reads); `device_dictionary` renders the
device a lab's template would make of that context, for `lava-run` here.
The scenarios' guest commands become one inline Lava-Test-Shell definition:
a shell plan that runs each command between console markers and reports it
with `lava-test-case`. Left out, with the reason, in `left-out.txt` and on
stderr: what `run` skips on what is known before boot (its own rule,
requirement_verdict, on the static capabilities; what only the guest
answers is decided in the job), what LAVA cannot do (QMP, a value captured
at run time inside a command, a capability only the console watcher
decides), and a scenario whose variables this profile does not define. A
profile left with no scenario gets no job.

The plan prints the job's metadata first on the console, so a lab's log
alone is enough for the import."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import __version__
from harness.config.models import Profile, Scenario, Step, Target, Transport
from harness.errors import ConfigError, HarnessError
from harness.export.ci import _dump  # the same plain YAML as the CI pipelines
from harness.machine.profile import MachineSpec, QemuOption, Role, kernel_cmdline, machine_options
from harness.report import Verdict
from harness.scenario import kselftest
from harness.scenario.capabilities import (
    CONSOLE_CAPABILITIES,
    GUEST_TOKENS,
    PROBE_SCRIPT,
    decided_by_guest,
    requirement_verdict,
)
from harness.scenario.runner import UPTIME_COMMAND, ScenarioContext
from harness.scenario.variables import UnknownVariable, substitute

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
    # A fault_report_window_s step: it prints the guest's uptime, then waits
    # the whole window (the import answers the runner's uptime question).
    report_window: bool = False


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
        if step.dma_fuzz is not None:
            # Its guest runs depend on the last one's outcome (the wait for
            # the fault-report window, the shrinking of a failing sequence);
            # a LAVA job's commands are fixed when it is written.
            return f"step {step.name} is a DMA fuzzer: its next guest run depends on the last one's outcome"
        if step.run is not None and _RUNTIME_VALUE.search(step.run):
            return f"step {step.name}'s command uses a value captured at run time (${{capture.*}})"
        console_only = sorted(step.requires & CONSOLE_CAPABILITIES)
        if console_only and step.run is not None:
            return f"step {step.name} requires {', '.join(console_only)}, decided from the console"
    return None


class _PlannedVariables(dict[str, str]):
    """What an expected event's fields can use, as known when the plan is
    written: the profile's variables, and any `${capture.*}` (the importer
    has the outputs)."""

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and key.startswith("capture."))

    def __missing__(self, key: str) -> str:
        return f"${{{key}}}"


def _before_boot(static_caps: frozenset[str], requires: Iterable[str]) -> frozenset[str]:
    """The static capabilities with every token that only the guest answers
    for assumed offered: a requirement they do not meet is decided before
    boot, whatever the guest's probe says."""
    return static_caps | GUEST_TOKENS | {t for t in requires if decided_by_guest(t)}


def static_verdict(
    target: Target, profile: Profile, scenario: Scenario, static_caps: frozenset[str]
) -> tuple[Verdict, str] | None:
    """What `run`'s rule (requirement_verdict) says of `scenario` on what is
    known before boot: None if the guest decides (or it runs), else the
    SKIP or FAIL that `run` gives it on any boot of this kernel and profile."""
    tokens = scenario.requires.union(*(step.requires for step in scenario.steps))
    ctx = ScenarioContext(target, profile, _before_boot(static_caps, tokens))
    return requirement_verdict(scenario, ctx)


def _command(step: Step, variables: Mapping[str, str]) -> str | None:
    """The step's guest command as the runner sends it (None: it has none)."""
    if step.kselftest is not None:
        return kselftest.command(step.kselftest)
    if step.fault_report_window_s is not None:
        # The job cannot read the console as it goes: it prints the uptime
        # the runner asks for (the importer answers with it) and waits the
        # whole window, which covers whatever the runner would wait.
        return f"{UPTIME_COMMAND}; sleep {step.fault_report_window_s:g}"
    if step.run is None:
        return None  # an events-only step: decided on import from the console
    return substitute(step.run, variables)


def _plan_steps(
    scenario: Scenario, profile: Profile, variables: Mapping[str, str], static_caps: frozenset[str]
) -> list[PlannedCommand] | str:
    """The scenario's guest commands, or why it cannot be planned. A step
    whose requirement fails before boot is not planned: the runner skips it
    (or fails the scenario there) without sending its command."""
    commands = []
    for step in scenario.steps:
        if step.requires - _before_boot(static_caps, step.requires):
            continue
        try:
            command = _command(step, variables)
            for exp in step.expect_events:  # decided on import: they must expand too
                for value in exp.fields.values():
                    if isinstance(value, str):
                        substitute(value, _PlannedVariables(variables))
        except UnknownVariable as exc:
            return f"step {step.name} uses ${{{exc.args[0]}}}, which profile {profile.name} does not define"
        if command is None:
            continue
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
                report_window=step.fault_report_window_s is not None,
            )
        )
    return commands


def make_plan(
    target: Target, profile: Profile, scenarios: Sequence[Scenario], static_caps: frozenset[str]
) -> Plan:
    """The job for `scenarios` on this target and profile. Left out, with
    the reason: what `run` skips on what is known before boot (its own rule,
    requirement_verdict, with the guest's answers left to the job), what
    LAVA cannot do, and what cannot be expanded for this profile."""
    variables = _variables(target, profile)
    kept: list[Scenario] = []
    left_out: dict[str, str] = {}
    commands = [PlannedCommand(PROBE_ID, "", None, PROBE_SCRIPT, "serial", frozenset())]
    ssh_steps: list[str] = []
    notes = []
    for scenario in scenarios:
        verdict = static_verdict(target, profile, scenario, static_caps)
        if verdict is not None and verdict[0] == Verdict.SKIP:
            left_out[scenario.name] = verdict[1]
            continue
        if verdict is not None:
            # Kept: the importer gives it the same verdict from the job's
            # static capabilities; its commands never run.
            kept.append(scenario)
            notes.append(f"{scenario.name}: {verdict[0].value.upper()} before it runs: {verdict[1]}")
            continue
        why = _why_not(scenario)
        planned = why if why is not None else _plan_steps(scenario, profile, variables, static_caps)
        if isinstance(planned, str):
            left_out[scenario.name] = planned
            continue
        kept.append(scenario)
        commands += planned
        if any(c.transport == "ssh" for c in planned):
            ssh_steps.append(scenario.name)
    if ssh_steps:
        notes.append(
            "SSH steps run on the serial console under LAVA (LAVA's test shell owns the console;"
            f" the guest's sshd is not exercised), those of: {', '.join(ssh_steps)}"
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


def _machine(profile: Profile) -> tuple[QemuOption, ...]:
    """The profile's machine options with LAVA's placeholders for the
    images: `{kernel}`, `{rootfs}` and the scratch disk `{scratch}`."""
    return machine_options(
        MachineSpec(
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
    )


# The roles LAVA's context names itself; the images (Role.BOOT) LAVA supplies.
_CONTEXT_ROLES = {Role.MACHINE: "machine", Role.CPU: "cpu", Role.MEMORY: "memory"}


def qemu_context(target: Target, profile: Profile) -> dict[str, Any]:
    """The profile's QEMU options as a LAVA job context: the machine the
    harness runs, minus what LAVA adds itself (kernel, initrd, append, the
    console), with no host port (user networking without hostfwd) and the
    scratch disk as the image `{scratch}`."""
    options = _machine(profile)
    named = {_CONTEXT_ROLES[o.role]: o.value for o in options if o.role in _CONTEXT_ROLES}
    extra = [o.without_host_port() for o in options if o.role not in _CONTEXT_ROLES and o.role != Role.BOOT]
    # The console on stdio is LAVA's connection. Explicit, because
    # -nodefaults drops the serial port -nographic would add.
    extra.append("-serial stdio")
    for option in extra:
        if (bad := _listens_off_loopback(option)) is not None:
            raise ConfigError(
                f"{profile.path or profile.name}: {option!r}: {bad} (QEMU under LAVA binds 127.0.0.1 only)"
            )
    return {
        "arch": "arm64",
        "machine": named.get("machine"),
        "cpu": named.get("cpu"),
        "memory": named.get("memory"),
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
        drive = next(o.without_host_port() for o in _machine(plan.profile) if o.role == Role.SCRATCH)
        context["extra_options"] = [e for e in context["extra_options"] if e != drive]
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


_CPIO_TRAILER = b"TRAILER!!!"


def _cpio_entries(data: bytes, origin: Path) -> list[tuple[list[int], bytes, bytes]]:
    """A newc archive's entries (header fields, name, contents), trailer excluded."""
    out, pos = [], 0
    while pos + 110 <= len(data):
        if data[pos : pos + 6] not in (b"070701", b"070702"):
            raise HarnessError(f"{origin}: not a newc cpio at byte {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_end = pos + 110 + namesize
        name = data[pos + 110 : name_end - 1]
        body = name_end + (-name_end % 4)
        contents = data[body : body + filesize]
        pos = body + filesize + (-(body + filesize) % 4)
        if name == _CPIO_TRAILER:
            break
        out.append((fields, name, contents))
    return out


def _merge_cpio(parts: Sequence[Path], dest: Path) -> Path:
    """One newc archive of `parts` in order (later entries win, as when the
    kernel unpacks them concatenated). LAVA unpacks the initramfs with
    `cpio --extract`, which stops at the first archive's trailer: the
    image's extra archives (kernel selftests) must be inside the first.
    Inode numbers are renumbered: the same number in two archives would
    read as a hard link."""
    chunks: list[bytes] = []

    def entry(fields: list[int], name: bytes, contents: bytes) -> None:
        fields = [*fields[:11], len(name) + 1, 0]
        fields[6] = len(contents)
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"
        chunks.extend([head, b"\0" * (-len(head) % 4), contents, b"\0" * (-len(contents) % 4)])

    inodes: dict[tuple[int, int], int] = {}
    for i, part in enumerate(parts):
        for fields, name, contents in _cpio_entries(part.read_bytes(), part):
            fields[0] = inodes.setdefault((i, fields[0]), len(inodes) + 1)
            entry(fields, name, contents)
    entry([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], _CPIO_TRAILER, b"")
    dest.unlink(missing_ok=True)
    dest.write_bytes(b"".join(chunks))
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
    from harness.pipeline import build_all, selftest_suites
    from harness.scenario.capabilities import static_capabilities

    if not scenarios:
        raise ConfigError("lava export: no scenario to export")
    # What no LAVA job can run is known from the scenario files: when that is
    # every scenario, say so before the kernel build, not after.
    static = [(s.name, _why_not(s)) for s in scenarios]
    if all(why is not None for _, why in static):
        left = "; ".join(f"{name}: {why}" for name, why in static)
        raise ConfigError(f"lava export: no scenario a LAVA job can run ({left})")
    # The kernel selftests the scenarios need are packed in, as `run` packs them.
    artifacts = build_all(target, upto=upto, suites=selftest_suites(scenarios))
    store = output / "artifacts"
    store.mkdir(parents=True, exist_ok=True)
    kernel = _place(artifacts.kernel.image, store / "Image")
    initramfs = store / "initramfs.cpio"
    if artifacts.image.extras:
        _merge_cpio([artifacts.image.initramfs, *artifacts.image.extras], initramfs)
    else:
        _place(artifacts.image.initramfs, initramfs)
    jobs: list[Path] = []
    report: list[str] = []
    for profile in profiles:
        caps = static_capabilities(artifacts.kernel, profile.features)
        plan = make_plan(target, profile, scenarios, caps)
        where = f"{target.name} x {profile.name}"
        for name, why in plan.left_out.items():
            report.append(f"{where}: left out {name}: {why}")
        report += [f"{where}: note: {n}" for n in plan.notes]
        job_dir = output / f"{target.name}_{profile.name}"
        if not plan.scenarios:
            report.append(f"{where}: no scenario left to run: no job")
            for stale in (JOB_FILE, DEVICE_FILE):  # an earlier export's job must not stay behind
                (job_dir / stale).unlink(missing_ok=True)
            continue
        scratch = None
        if profile.scratch_disk_mb:
            scratch = store / f"scratch-{profile.scratch_disk_mb}M.img"
            with scratch.open("wb") as f:
                f.truncate(profile.scratch_disk_mb << 20)
        job_dir.mkdir(parents=True, exist_ok=True)
        job = job_definition(plan, kernel, initramfs, scratch, artifact_url)
        (job_dir / JOB_FILE).write_text(_dump(job))
        if with_device:
            (job_dir / DEVICE_FILE).write_text(_dump(device_dictionary(job["context"])))
        jobs.append(job_dir / JOB_FILE)
    left_out = output / LEFT_OUT_FILE
    left_out.write_text("".join(f"{line}\n" for line in report) or "nothing left out\n")
    for line in report:
        print(f"pkvm-harness: lava: {line}", file=sys.stderr)
    if not jobs:
        raise ConfigError(f"lava export: no job: every scenario was left out on every profile ({left_out})")
    return Exported(tuple(jobs), left_out)


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
                with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILLed: only a D state stays
                    proc.wait(10)
    return proc.returncode, time.monotonic() - start
