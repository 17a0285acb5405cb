"""Command line: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from harness import __version__, pipeline
from harness.config import Registry
from harness.config.models import SeriesSpec, SourceSpec, Target
from harness.errors import ConfigError, ExitCode, HarnessError, Interrupted
from harness.machine.qemu import install_signal_handlers
from harness.report import exit_code

DEFAULT_TARGET = "mainline-7.3"
DEFAULT_PROFILES = ("smmuv3-nested", "virtio-iommu")


def _source(value: str) -> SourceSpec:
    path = Path(value)
    if (path / ".git").exists():
        return SourceSpec("git", str(path.resolve()))
    if path.is_file():
        return SourceSpec("tarball", str(path.resolve()))
    raise ConfigError(f"--source {value}: not a git work tree or a tarball")


def _target(args: argparse.Namespace, reg: Registry) -> Target:
    """The named target with the command line's overrides applied."""
    target = reg.target(args.target)
    if args.source:
        target = replace(target, source=_source(args.source))
    if args.series:
        target = replace(target, series=_series(args.series))
    if args.toolchain:
        target = replace(target, toolchain=args.toolchain)
    return target


def _series(value: str | None) -> SeriesSpec | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        return SeriesSpec("dir", str(path.resolve()))
    if path.is_file():
        return SeriesSpec("mbox", str(path.resolve()))
    if "@" in value and "/" not in value:
        return SeriesSpec("b4", value.strip("<>"))
    raise ConfigError(f"--series {value}: no such file or directory, and not a message-id")


def cmd_list(args: argparse.Namespace, reg: Registry) -> int:
    kinds = [args.kind] if args.kind else ["targets", "profiles", "scenarios"]
    table: dict[str, list[dict[str, str]]] = {}
    for kind in kinds:
        if kind == "targets":
            items = [reg.target(n) for n in reg.target_names()]
            table[kind] = [{"name": t.name, "description": t.description} for t in items]
        elif kind == "profiles":
            profiles = [reg.profile(n) for n in reg.profile_names()]
            table[kind] = [{"name": p.name, "description": p.description} for p in profiles]
        else:
            scenarios = [reg.scenario(n) for n in reg.scenario_names()]
            table[kind] = [{"name": s.name, "description": s.description} for s in scenarios]
    if args.json:
        print(json.dumps(table, indent=2))
        return ExitCode.OK
    for kind, rows in table.items():
        print(f"{kind}:")
        for row in rows:
            summary = row["description"].split(". ")[0]
            print(f"  {row['name']:<28} {summary[:90]}{'...' if len(summary) > 90 else ''}")
    return ExitCode.OK


def cmd_build(args: argparse.Namespace, reg: Registry) -> int:
    artifacts = pipeline.build_all(_target(args, reg), args.jobs)
    print(
        json.dumps(
            {
                "kernel": str(artifacts.kernel.directory),
                "image": str(artifacts.kernel.image),
                "initramfs": str(artifacts.image.initramfs),
                "kernel_cached": artifacts.kernel.cached,
                "image_cached": artifacts.image.cached,
                "seconds": round(artifacts.seconds, 3),
            },
            indent=2,
        )
    )
    return ExitCode.OK


def cmd_boot(args: argparse.Namespace, reg: Registry) -> int:
    from harness.session.guest import booted_guest

    target, profile = _target(args, reg), reg.profile(args.profile)
    artifacts = pipeline.build_all(target)
    output = Path(args.output)
    with booted_guest(
        profile, artifacts.kernel.image, artifacts.image, output, target.cmdline, args.boot_timeout
    ) as guest:
        outcome = guest.boot_outcome
        assert outcome is not None
        print(f"console log: {guest.console_log}", file=sys.stderr)
        if not outcome.ready:
            print(f"boot {outcome.verdict.upper()}: {outcome.reason}", file=sys.stderr)
            return ExitCode.FAIL if outcome.verdict == "fail" else ExitCode.ERROR
        if args.command:
            result = guest.run("serial", args.command, args.timeout)
            print(result.output)
            return ExitCode.OK if result.status == 0 else ExitCode.FAIL
        print(
            f"ssh: ssh -p {guest.machine.spec.ssh_port} root@127.0.0.1 (key in this run only);"
            " serial shell follows, Ctrl-] to quit",
            file=sys.stderr,
        )
        with guest.interactive_console() as serial:
            serial.run("stty echo; PS1='pkvm-guest# '", 10, isolated=False)
            serial.interact()
    return ExitCode.OK


def cmd_run(args: argparse.Namespace, reg: Registry) -> int:
    target = _target(args, reg)
    profiles = tuple(reg.profile(p) for p in (args.profile or DEFAULT_PROFILES))
    names = args.scenarios or reg.scenario_names()
    scenarios = tuple(reg.scenario(n) for n in names)
    request = pipeline.RunRequest(target, profiles, scenarios, Path(args.output), args.boot_timeout)
    result = pipeline.run(request)
    counts = result.counts()
    print(" ".join(f"{k}={v}" for k, v in counts.items() if v) + f"  ({args.output}/results.json)")
    return exit_code(result.results)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pkvm-harness", description=__doc__)
    p.add_argument("--version", action="version", version=f"pkvm-harness {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    ls = sub.add_parser("list", help="targets, profiles, scenarios")
    ls.add_argument("kind", nargs="?", choices=["targets", "profiles", "scenarios"])
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--target", default=DEFAULT_TARGET, help="target name or .yaml path")
        sp.add_argument("--series", help="patch series: mbox file, patch dir, or message-id (b4)")
        sp.add_argument("--source", help="kernel source instead of the target's: git tree or tarball")
        sp.add_argument("--toolchain", choices=["gcc", "llvm"], help="gcc (cross) or llvm (LLVM=1)")

    b = sub.add_parser("build", help="build (or fetch from cache) the kernel and image")
    common(b)
    b.add_argument("--jobs", "-j", type=int, default=None)
    b.set_defaults(func=cmd_build)

    bt = sub.add_parser("boot", help="boot a guest and give an interactive shell")
    common(bt)
    bt.add_argument("--profile", default=DEFAULT_PROFILES[0])
    bt.add_argument("--output", default="out/boot")
    bt.add_argument("--boot-timeout", type=float, default=120.0)
    bt.add_argument("--command", "-c", help="run this command instead of a shell")
    bt.add_argument("--timeout", type=float, default=300.0)
    bt.set_defaults(func=cmd_boot)

    r = sub.add_parser("run", help="run scenarios and write results")
    common(r)
    r.add_argument(
        "--profile",
        action="append",
        help=f"machine profile (repeatable; default: {' '.join(DEFAULT_PROFILES)})",
    )
    r.add_argument("--output", required=True, help="results directory")
    r.add_argument("--boot-timeout", type=float, default=120.0)
    r.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: all")
    r.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    install_signal_handlers()
    try:
        return int(args.func(args, Registry()))
    except HarnessError as exc:
        print(f"pkvm-harness: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"pkvm-harness: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + int(signum)
    except Exception as exc:  # a harness bug is still an ERROR, never a FAIL
        if os.environ.get("PKVM_HARNESS_DEBUG"):
            traceback.print_exc()
        print(
            f"pkvm-harness: internal error: {type(exc).__name__}: {exc}"
            " (set PKVM_HARNESS_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return int(ExitCode.ERROR)


if __name__ == "__main__":
    sys.exit(main())
