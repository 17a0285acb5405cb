"""Command line: argument parsing and dispatch only (the values and the
rules between options are checked in harness.options)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from harness import __version__, options, pipeline, ui
from harness.config import Registry

# Re-exported: the defaults every front end shares, defined once.
from harness.config.defaults import DEFAULT_PROFILES as DEFAULT_PROFILES
from harness.config.defaults import DEFAULT_TARGET as DEFAULT_TARGET
from harness.config.models import Target
from harness.errors import ExitCode, HarnessError, Interrupted, PatchError
from harness.kernel import remote
from harness.kernel.series import series_spec
from harness.machine.qemu import install_signal_handlers
from harness.report import RunResult, Verdict, exit_code, verdicts
from harness.report.compare import against_base, compare, render_text
from harness.report.writers import atomic_write
from harness.session.liveness import LivenessPolicy

DESCRIPTION = """\
Integration tests for arm64 pKVM and its IOMMU work: build an arm64 kernel
(a target's source, optionally with a patch series and config fragments),
boot it under QEMU on machine profiles (SMMUv3 stage 1/2/nested,
virtio-iommu, ...), run YAML scenarios in the guest, and write results.json,
junit.xml and an HTML report."""

EPILOG = f"""\
defaults:
  --target {DEFAULT_TARGET}; `run` boots the profiles {" and ".join(DEFAULT_PROFILES)}
  and runs every scenario. `pkvm-harness list` names every target, profile
  and scenario; `pkvm-harness COMMAND --help` tells each command's options.

exit codes:
  0      everything passed (or was skipped)
  1      FAIL: the kernel, or the patch series under test, misbehaved
  2      ERROR: bad input, a missing tool, or a fault of the harness or its
         infrastructure (it outranks a FAIL)
  128+N  interrupted by signal N (130: Ctrl-C, 143: SIGTERM)

environment:
  PKVM_HARNESS_CACHE  where kernels, images and sources are cached
                      (default ~/.cache/pkvm-harness)
  PKVM_HARNESS_DATA   a directory holding targets/, profiles/, scenarios/ ...
  PKVM_HARNESS_SOURCES  the linux-source-*.tar.xz tarballs
                      (default /var/cache/pkvm-harness/sources)
  PKVM_HARNESS_DEBUG  set to 1: a traceback with an internal error

examples:
  pkvm-harness list
  pkvm-harness run --output out/r1 boot-health
  pkvm-harness series check --series fix.mbox --output out/check"""


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  pkvm-harness {line}" for line in lines)


def _target(args: argparse.Namespace, reg: Registry) -> Target:
    """The named target with the command line's overrides applied."""
    target = reg.target(args.target)
    if args.source:
        source, series = remote.source_spec(args.source, getattr(args, "base", None))
        target = replace(target, source=source, series=series or target.series)
    if args.series:
        target = replace(target, series=series_spec(args.series))
    if args.toolchain:
        target = replace(target, toolchain=args.toolchain)
    options.check_series(args.upto, target, getattr(args, "against_base", False))
    return target


def _liveness(args: argparse.Namespace) -> LivenessPolicy:
    return LivenessPolicy(
        interval_s=args.hang_probe, probe_timeout_s=args.hang_timeout, boot_stall_s=args.boot_stall
    )


def _summary(result: RunResult, output: str) -> int:
    """A run's counts and where its results are; its exit code."""
    counts = result.counts()
    print(" ".join(f"{k}={v}" for k, v in counts.items() if v) + f"  ({output}/results.json)")
    return exit_code(result.results)


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
    # What `run` of these scenarios would build besides the kernel and the
    # image: the kernel selftest suites they need (`all`: every scenario's).
    names = reg.scenario_names() if args.scenarios == ["all"] else args.scenarios
    suites = pipeline.selftest_suites(reg.scenario(n) for n in names)
    artifacts = pipeline.build_all(_target(args, reg), args.jobs, args.upto, suites)
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
    artifacts = pipeline.build_all(target, upto=args.upto)
    output = Path(args.output)
    with booted_guest(
        profile, artifacts.kernel.image, artifacts.image, output, target.cmdline, args.boot_timeout
    ) as guest:
        outcome = guest.boot_outcome
        assert outcome is not None
        print(f"console log: {guest.console_log}", file=sys.stderr)
        if not outcome.ready:
            print(f"boot {outcome.verdict.upper()}: {outcome.reason}", file=sys.stderr)
            return verdicts.exit_code([outcome.verdict])
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


def cmd_run_matrix(args: argparse.Namespace, reg: Registry) -> int:
    from harness.matrix.model import default_jobs, load_matrix, matrix_path, parse_shard

    matrix = load_matrix(matrix_path(args.matrix), reg)
    if args.shard:
        matrix = matrix.shard(*parse_shard(args.shard))
    jobs = args.jobs or default_jobs()
    liveness = _liveness(args)
    output = Path(args.output)
    requests = [
        pipeline.RunRequest(t, (p,), s, output, args.boot_timeout, liveness, retries=args.retries)
        for t, p, s in matrix.units()
    ]
    cells = sum(len(r.scenarios) for r in requests)
    shard = f", shard {args.shard}" if args.shard else ""
    ui.info(
        "matrix", f"{matrix.name}: {cells} cells in {len(requests)} target x profile units, -j {jobs}{shard}"
    )
    result = pipeline.run_units(requests, output, jobs)
    return _summary(result, args.output)


def cmd_run(args: argparse.Namespace, reg: Registry) -> int:
    from harness.matrix.model import default_jobs

    if args.matrix:
        return cmd_run_matrix(args, reg)
    target = _target(args, reg)
    profiles = tuple(reg.profile(p) for p in (args.profile or DEFAULT_PROFILES))
    names = args.scenarios or reg.scenario_names()
    scenarios = tuple(reg.scenario(n) for n in names)
    from harness.kernel.build import check_applies

    check_applies(target, args.upto)  # a series that does not apply: its FAIL, before any build
    liveness = _liveness(args)
    output = Path(args.output)
    request = pipeline.RunRequest(
        target, profiles, scenarios, output, args.boot_timeout, liveness, retries=args.retries, upto=args.upto
    )
    # Each profile (and each side of --against-base) is a unit of its own
    # boots: they run side by side, as a matrix's units do.
    jobs = args.jobs or default_jobs()
    if args.against_base:
        sides = [replace(request, side="base", upto=0), replace(request, side="tip")]
        result = pipeline.run_units(sides, output, jobs)
        comparison = against_base(result.results, output)
        for line in render_text(comparison):
            print(line)
        print(f"({args.output}/results.json, {args.output}/comparison.json)")
        return verdicts.against_base_exit_code(
            (r.verdict for r in result.results), bool(comparison.regressions), bool(comparison.inconclusive)
        )
    result = pipeline.run(request, jobs)
    return _summary(result, args.output)


def cmd_report(args: argparse.Namespace, reg: Registry) -> int:
    from harness.report.html import write_report

    dirs = [Path(d) for d in args.dirs]
    after = dirs[-1]
    before = dirs[0] if len(dirs) >= 2 else None  # the first run against the last
    history = dirs if len(dirs) >= 2 else []  # every metric across the runs, as charts
    out = write_report(after, before, Path(args.output) if args.output else None, history)
    if before is not None:
        from harness.report import load_results

        for line in render_text(compare(load_results(before).results, load_results(after).results)):
            print(line)
    print(out)
    return ExitCode.OK


def cmd_kcidb(args: argparse.Namespace, reg: Registry) -> int:
    from harness.export.kcidb import write_kcidb

    output = Path(args.output) if args.output else None
    options.writable_file(output or Path(args.dir) / "kcidb.json")
    print(write_kcidb(Path(args.dir), output, args.origin, args.artifact_url, reg))
    return ExitCode.OK


def cmd_merge(args: argparse.Namespace, reg: Registry) -> int:
    from harness.report.merge import merge_into

    merged = merge_into([Path(d) for d in args.inputs], Path(args.output))
    return _summary(merged, args.output)


def cmd_ci_generate(args: argparse.Namespace, reg: Registry) -> int:
    from harness.export.ci import generate
    from harness.matrix.model import load_matrix, matrix_path

    kind = "gitlab" if args.gitlab else "github"
    text = generate(load_matrix(matrix_path(args.matrix), reg), kind, args.shards)
    default = "ci/gitlab-ci.yml" if kind == "gitlab" else "ci/github-workflow.yml"
    out = Path(args.output or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    print(out)
    return ExitCode.OK


def cmd_series_check(args: argparse.Namespace, reg: Registry) -> int:
    from harness.options import writable_file
    from harness.series.check import CheckOptions, check_series

    if args.reply:
        writable_file(Path(args.reply), "--reply")
    target = _target(args, reg)
    profiles = tuple(reg.profile(p) for p in (args.profile or ())) if args.boot else ()
    scenarios = tuple(reg.scenario(n) for n in (args.scenario or ["boot-health"]))
    options = CheckOptions(profiles, scenarios, args.allow_warnings, args.warnings_level, args.jobs)
    if args.boot and not profiles:
        options = replace(options, profiles=(reg.profile(DEFAULT_PROFILES[0]),))
    from harness.kernel.build import check_applies

    try:
        check_applies(target)  # said before any build; the patches before it are still checked
    except PatchError as exc:
        ui.info("series", f"{exc}: checking the patches before it")
    report = check_series(target, Path(args.output), options)
    print(f"({args.output}/series.json, {args.output}/junit.xml)")
    if args.reply:
        from harness.series.reply import write_reply

        print(f"(reply: {write_reply('check', Path(args.output), Path(args.reply))})")
    return int(report.exit_code)


def cmd_series_bisect(args: argparse.Namespace, reg: Registry) -> int:
    from harness.series.bisect import Bisector

    if args.reply:
        options.writable_file(Path(args.reply), "--reply")
    target = _target(args, reg)
    scenarios = tuple(reg.scenario(n) for n in args.scenarios)
    bisector = Bisector(target, reg.profile(args.profile), scenarios, Path(args.output), args.confirm)
    from harness.kernel.build import check_applies

    check_applies(target)  # a tip that does not apply: the series' FAIL, not "nothing to bisect"
    report = bisector.run()
    print(report.reason)
    print(f"({args.output}/bisect.json)")
    if args.reply:
        from harness.series.reply import write_reply

        print(f"(reply: {write_reply('bisect', Path(args.output), Path(args.reply))})")
    return int(report.exit_code)


def cmd_lava(args: argparse.Namespace, reg: Registry) -> int:
    if args.lava_cmd == "export":
        from harness.export import lava

        target = _target(args, reg)
        # Default: the whole suite on every profile (one job per profile).
        profiles = [reg.profile(p) for p in (args.profile or reg.profile_names())]
        scenarios = [reg.scenario(n) for n in (args.scenario or reg.scenario_names())]
        exported = lava.export(
            target, profiles, scenarios, Path(args.output), args.artifact_url, args.device_dict, args.upto
        )
        for job in exported.jobs:
            print(job)
        return ExitCode.OK
    from harness.export.lava_import import import_results

    result = import_results(Path(args.job_output), Path(args.output), reg)
    return _summary(result, args.output)


def parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = options.Parser(prog="pkvm-harness", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    p.add_argument("--version", action="version", version=f"pkvm-harness {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, summary: str, *examples: str) -> argparse.ArgumentParser:
        """A subcommand whose help ends with examples and the exit codes."""
        epilog = (
            _examples(*examples)
            + "\n\nexit codes: 0 pass, 1 FAIL, 2 ERROR (bad input, harness), 128+N signal N"
        )
        return sub.add_parser(name, help=summary, description=summary, epilog=epilog, formatter_class=raw)

    ls = command("list", "targets, profiles, scenarios", "list", "list scenarios", "list profiles --json")
    ls.add_argument(
        "kind", nargs="?", choices=["targets", "profiles", "scenarios"], help="default: all three"
    )
    ls.add_argument("--json", action="store_true", help="as JSON")
    ls.set_defaults(func=cmd_list)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--target", default=DEFAULT_TARGET, help=f"target name or .yaml path (default {DEFAULT_TARGET})"
        )
        sp.add_argument("--series", help="patch series: mbox file, patch dir, or message-id (b4)")
        sp.add_argument(
            "--source",
            help="kernel source instead of the target's: a git work tree, a tarball, or a git URL@REF"
            " (fetched into the cache; file:// works offline)",
        )
        sp.add_argument(
            "--base", metavar="REF", help="with --source URL@REF: the commits REF..URL's REF are the series"
        )
        sp.add_argument("--toolchain", choices=["gcc", "llvm"], help="gcc (cross) or llvm (LLVM=1)")
        sp.add_argument(
            "--upto",
            type=options.non_negative_int,
            metavar="K",
            help="only the first K patches of the series (0: the base)",
        )

    b = command(
        "build",
        "build (or fetch from cache) the kernel and image",
        "build",
        "build --target stable-6.12 --series fix.mbox --upto 2",
        "build --toolchain llvm all",
    )
    common(b)
    b.add_argument(
        "--jobs", "-j", type=options.positive_int, default=None, help="make -j (default: all CPUs)"
    )
    b.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="also build what these scenarios need (kernel selftest suites); `all`: every scenario",
    )
    b.set_defaults(func=cmd_build)

    bt = command(
        "boot",
        "boot a guest and give an interactive shell",
        "boot",
        "boot --target stable-6.12 --profile smmuv3-s2",
        "boot --profile virtio-iommu -c 'dmesg | grep -i iommu'",
    )
    common(bt)
    bt.add_argument("--profile", default=DEFAULT_PROFILES[0], help=f"default {DEFAULT_PROFILES[0]}")
    bt.add_argument("--output", default="out/boot", help="console and QEMU logs (default out/boot)")
    bt.add_argument(
        "--boot-timeout",
        type=options.positive_float,
        default=120.0,
        metavar="SECONDS",
        help="give up on a boot that reaches no shell in this long (default 120)",
    )
    bt.add_argument("--command", "-c", help="run this command instead of a shell")
    bt.add_argument(
        "--timeout",
        type=options.positive_float,
        default=300.0,
        metavar="SECONDS",
        help="with --command: its time limit (default 300)",
    )
    bt.set_defaults(func=cmd_boot)

    r = command(
        "run",
        "run scenarios and write results",
        "run --output out/r1 boot-health dma-roundtrip",
        "run --series fix.mbox --against-base --profile smmuv3-nested --output out/vs-base",
        "run --matrix regression --shard 2/4 --output out/s2",
    )
    common(r)
    r.add_argument(
        "--profile",
        action="append",
        help=f"machine profile (repeatable; default: {' '.join(DEFAULT_PROFILES)})",
    )
    r.add_argument("--output", required=True, help="results directory")
    r.add_argument(
        "--boot-timeout",
        type=options.positive_float,
        default=120.0,
        metavar="SECONDS",
        help="give up on a boot that reaches no shell in this long (default 120)",
    )
    r.add_argument(
        "--retries",
        type=options.non_negative_int,
        default=1,
        help="re-run a cell that ended in ERROR (infrastructure) this many times on a fresh boot;"
        " a FAIL is never retried (default 1)",
    )
    r.add_argument(
        "--hang-probe",
        type=options.positive_float,
        default=LivenessPolicy.interval_s,
        metavar="SECONDS",
        help="probe a silent guest after this long; it is hung when it then does not answer"
        f" within --hang-timeout (default {LivenessPolicy.interval_s:.0f})",
    )
    r.add_argument(
        "--hang-timeout",
        type=options.positive_float,
        default=LivenessPolicy.probe_timeout_s,
        metavar="SECONDS",
        help="a probed guest that does not answer in this long is hung: FAIL"
        f" (default {LivenessPolicy.probe_timeout_s:.0f})",
    )
    r.add_argument(
        "--boot-stall",
        type=options.positive_float,
        default=LivenessPolicy.boot_stall_s,
        metavar="SECONDS",
        help="a boot whose console stays silent this long (with CPU to run) has stalled: FAIL"
        f" (default {LivenessPolicy.boot_stall_s:.0f})",
    )
    r.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: all")
    r.set_defaults(func=cmd_run)
    r.add_argument("--against-base", action="store_true", help="run the base too; report regressions")
    r.add_argument(
        "--matrix", metavar="FILE", help="a matrix file (or a name from matrices/, e.g. regression)"
    )
    r.add_argument(
        "--jobs",
        "-j",
        type=options.positive_int,
        help="target x profile units run side by side (default: fits cores and memory)",
    )
    r.add_argument("--shard", metavar="I/N", help="with --matrix: run only shard I of N (for CI)")

    ci = command("ci", "CI pipelines for a matrix", "ci generate --gitlab", "ci generate --github --shards 8")
    cisub = ci.add_subparsers(dest="ci_cmd", required=True, metavar="COMMAND")
    gen = cisub.add_parser(
        "generate",
        help="write a GitLab CI or GitHub Actions pipeline",
        description="write a GitLab CI or GitHub Actions pipeline: one job per shard of the matrix",
        epilog=_examples(
            "ci generate --gitlab", "ci generate --github --matrix smoke --shards 2 --output ci.yml"
        ),
        formatter_class=raw,
    )
    gen.add_argument("--matrix", default="regression", help="matrix file or name (default regression)")
    which = gen.add_mutually_exclusive_group(required=True)
    which.add_argument("--gitlab", action="store_true", help="a .gitlab-ci.yml")
    which.add_argument("--github", action="store_true", help="a GitHub Actions workflow")
    gen.add_argument(
        "--shards",
        type=options.positive_int,
        default=4,
        metavar="N",
        help="cut the matrix into N jobs run in parallel (default 4)",
    )
    gen.add_argument("--output", help="default: ci/gitlab-ci.yml or ci/github-workflow.yml")
    gen.set_defaults(func=cmd_ci_generate)

    rp = command(
        "report",
        "an HTML report of a results directory; of several: what changed (first -> last) and"
        " each metric across them as a chart",
        "report out/r1",
        "report out/before out/after --output out/diff.html",
        "report out/mon out/tue out/wed",
    )
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="DIR, or runs oldest first (BEFORE AFTER ...)")
    rp.add_argument("--output", help="default: report.html in the (last) results directory")
    rp.set_defaults(func=cmd_report)

    kc = command(
        "kcidb",
        "KCIDB I/O JSON of a results directory or a series check (kcidb-io's latest schema, validated)",
        "kcidb out/r1",
        "kcidb out/check --origin my_lab --artifact-url https://lab.example/out/check",
    )
    from harness.export.kcidb import DEFAULT_ORIGIN, origin_name

    kc.add_argument("dir", metavar="DIR", help="a run's results directory, or a series check's output")
    kc.add_argument(
        "--origin", type=origin_name, default=DEFAULT_ORIGIN, help=f"the submitter (default {DEFAULT_ORIGIN})"
    )
    kc.add_argument("--artifact-url", type=options.url, help="where DIR is published (default: file:// URLs)")
    kc.add_argument("--output", help="default: kcidb.json in DIR")
    kc.set_defaults(func=cmd_kcidb)

    mg = command(
        "merge",
        "combine results directories (shards) into one",
        "merge out/s1 out/s2 out/s3 out/s4 --output out/all",
    )
    mg.add_argument("inputs", nargs="+", metavar="DIR", help="results directories (each with results.json)")
    mg.add_argument("--output", required=True, help="the merged results directory")
    mg.set_defaults(func=cmd_merge)

    lv = command(
        "lava",
        "LAVA: export jobs for a lab; import lava-run's output",
        "lava export --profile smmuv3-nested --device-dict --output out/lava",
        "lava import out/lava-run --output out/lava-results",
    )
    lvsub = lv.add_subparsers(dest="lava_cmd", required=True, metavar="COMMAND")
    lx = lvsub.add_parser(
        "export",
        help="a LAVA job definition per target x profile",
        description="a LAVA job definition per target x profile (default: every profile, every scenario)",
        epilog=_examples(
            "lava export --profile smmuv3-nested --scenario boot-health --output out/lava",
            "lava export --artifact-url https://lab.example/pkvm --output out/lava",
        ),
        formatter_class=raw,
    )
    common(lx)
    lx.add_argument("--profile", action="append", help="repeatable (default: every profile)")
    lx.add_argument("--scenario", action="append", help="repeatable (default: all)")
    lx.add_argument(
        "--artifact-url", type=options.url, metavar="BASE", help="artifacts under this URL (default: file://)"
    )
    lx.add_argument("--device-dict", action="store_true", help="also a device for lava-run here")
    lx.add_argument("--output", required=True, help="jobs, artifacts and left-out.txt go here")
    lx.set_defaults(func=cmd_lava)
    li = lvsub.add_parser(
        "import",
        help="lava-run's output directory into results.json",
        description="lava-run's output directory into results.json",
        epilog=_examples("lava import out/lava-run --output out/lava-results"),
        formatter_class=raw,
    )
    li.add_argument("job_output", metavar="JOB_OUTPUT_DIR", help="lava-run's --output-dir")
    li.add_argument("--output", required=True, help="results directory")
    li.set_defaults(func=cmd_lava)

    se = command(
        "series",
        "a reviewer's checks of a patch series",
        "series check --series thread.mbox --output out/check",
        "series bisect --series thread.mbox --output out/bisect dma-after-unmap",
    )
    ssub = se.add_subparsers(dest="series_cmd", required=True, metavar="COMMAND")
    ck = ssub.add_parser(
        "check",
        help="per patch: applies, builds, no new warning, options kept, boots",
        description="per patch: applies, builds, no new warning, options kept; with --boot, boots",
        epilog=_examples(
            "series check --series thread.mbox --output out/check",
            "series check --series thread.mbox --boot --profile smmuv3-nested --output out/check",
        ),
        formatter_class=raw,
    )
    common(ck)
    ck.add_argument("--output", required=True, help="series.json and junit.xml go here")
    ck.add_argument("--boot", action="store_true", help="boot each patch and run the smoke set")
    ck.add_argument(
        "--profile",
        action="append",
        help=f"with --boot: profiles to boot on (repeatable; default {DEFAULT_PROFILES[0]})",
    )
    ck.add_argument("--scenario", action="append", help="smoke set (repeatable; default boot-health)")
    ck.add_argument("--allow-warnings", action="store_true", help="new warnings are informational")
    ck.add_argument(
        "--reply", metavar="FILE", help="also write a reply mail to the series (for git send-email)"
    )
    ck.add_argument("--warnings-level", metavar="N", help="make W=N (e.g. 1)")
    ck.add_argument(
        "--jobs", "-j", type=options.positive_int, default=None, help="make -j (default: all CPUs)"
    )
    ck.set_defaults(func=cmd_series_check)
    bi = ssub.add_parser(
        "bisect",
        help="the first patch that breaks the given scenarios",
        description="the first patch of the series that breaks the given scenarios",
        epilog=_examples(
            "series bisect --series thread.mbox --output out/bisect dma-after-unmap",
            "series bisect --series thread.mbox --confirm 2 --output out/b boot-health",
        ),
        formatter_class=raw,
    )
    common(bi)
    bi.add_argument("--output", required=True, help="bisect.json and each step's results go here")
    bi.add_argument(
        "--profile", default=DEFAULT_PROFILES[0], help=f"the profile to boot (default {DEFAULT_PROFILES[0]})"
    )
    bi.add_argument(
        "--confirm",
        type=options.non_negative_int,
        default=1,
        help="re-runs of the answer and its parent (default 1)",
    )
    bi.add_argument("--reply", metavar="FILE", help="also write a reply mail naming the first bad patch")
    bi.add_argument(
        "scenarios", nargs="+", metavar="SCENARIO", help="what must pass on the base and fail at the tip"
    )
    bi.set_defaults(func=cmd_series_bisect)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    install_signal_handlers()
    try:
        options.check_args(args)
        return int(args.func(args, Registry()))
    except HarnessError as exc:
        kind = "FAIL" if verdicts.failure_verdict(exc) == Verdict.FAIL else "error"
        print(f"pkvm-harness: {kind}: {exc}", file=sys.stderr)
        return int(verdicts.error_exit_code(exc))
    except BrokenPipeError:  # e.g. `pkvm-harness list | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)
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
