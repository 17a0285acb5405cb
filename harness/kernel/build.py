"""make, cross toolchain, ccache, progress, and the artifact cache.

Two keys:
- the *input key* digests everything the build depends on that is cheap to
  know (source identity, series, fragment contents, toolchain, recipe). A hit
  there answers a warm `build` without unpacking, configuring or running make.
- the *build key* adds the resolved .config; artifacts are stored under it, so
  two inputs that resolve to the same config share one build.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__, paths, timeouts, ui
from harness.cache import ContentStore, DigestMemo, digest, write_json
from harness.config.models import Target
from harness.errors import BuildError, KconfigError, PatchError, ToolMissingError
from harness.kernel import diagnostics, kconfig
from harness.kernel.series import PatchSeries, checkout, load_series
from harness.kernel.source import check_base_commit, prepare_source, source_identity
from harness.timeouts import QUICK_S, tool_deadline

ARCH = "arm64"
# Bump when the way a config or build is produced changes meaning.
RECIPE_VERSION = "kernel-recipe-v1"


@dataclass(frozen=True)
class Toolchain:
    """The compiler a kernel is built with, and the make variables for it."""

    kind: str  # "gcc" or "llvm"
    cross_compile: str = "aarch64-linux-gnu-"

    @property
    def compiler(self) -> str:
        return "clang" if self.kind == "llvm" else f"{self.cross_compile}gcc"

    def check(self) -> str:
        """The compiler's version line (part of every cache key)."""
        needed = [self.compiler, "make", "flex", "bison", "bc"]
        if self.kind == "llvm":
            needed += ["ld.lld", "llvm-objcopy"]
        for tool in needed:
            if shutil.which(tool) is None:
                hint = "gcc-aarch64-linux-gnu" if tool == self.compiler else tool
                raise ToolMissingError(
                    f"toolchain {self.kind}: {tool} not found"
                    f" (install {hint}, e.g. with: sudo ci/setup-host.sh)"
                )
        with tool_deadline(ToolMissingError, f"{self.compiler} --version"):
            argv = [self.compiler, "--version"]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=QUICK_S)
        return out.stdout.splitlines()[0] if out.stdout else self.compiler

    def make_vars(self) -> list[str]:
        ccache = "ccache " if shutil.which("ccache") else ""
        if self.kind == "llvm":
            return [f"ARCH={ARCH}", "LLVM=1", f"CC={ccache}clang"]
        return [
            f"ARCH={ARCH}",
            f"CROSS_COMPILE={self.cross_compile}",
            f"CC={ccache}{self.compiler}",
        ]


@dataclass(frozen=True)
class KernelBuild:
    """Everything later stages need from a build; paths point into the cache."""

    target: str
    key: str
    directory: Path
    image: Path
    vmlinux: Path
    system_map: Path
    config: Path
    build_log: Path
    modules: Path | None
    metadata: dict[str, Any] = field(hash=False, compare=False)
    cached: bool = False

    @property
    def warnings(self) -> diagnostics.WarningMap | None:
        """Compiler warnings per unit, as of this build (None for builds
        cached before they were recorded)."""
        return diagnostics.load_map(self.directory / "warnings.json")

    @property
    def version(self) -> str:
        return str(self.metadata.get("kernel_version", "unknown"))


def _input_key(target: Target, source_id: str, series: PatchSeries | None, tc: str) -> str:
    parts: list[str | bytes] = [RECIPE_VERSION, ARCH, source_id, tc, target.toolchain]
    parts.append(series.identity if series else "no-series")
    for frag in target.fragments:
        parts += [frag.name, frag.read_bytes()]
    return digest(parts)


def _load(directory: Path, target: str, cached: bool) -> KernelBuild:
    meta = json.loads((directory / "metadata.json").read_text())
    modules = directory / "modules"
    return KernelBuild(
        target=target,
        key=directory.name,
        directory=directory,
        image=directory / "Image",
        vmlinux=directory / "vmlinux",
        system_map=directory / "System.map",
        config=directory / "config",
        build_log=directory / "build.log",
        modules=modules if modules.is_dir() else None,
        metadata=meta,
        cached=cached,
    )


_PROGRESS = re.compile(r"^\s+(CC|AS|LD|AR|OBJCOPY|GZIP|LDS|HOSTCC|CPP)\s+(\S+)")


class SilenceWatch:
    """Kills a process that has printed nothing for `limit` seconds. A
    kernel build has no deadline (its length depends on the config, the
    machine and the cache), but it prints a line per step; no single step
    is silent for minutes unless something waits forever."""

    def __init__(self, proc: subprocess.Popen[str], limit: float) -> None:
        self.proc = proc
        self.limit = limit
        self.fired = False
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="make-silence", daemon=True)
        self._thread.start()

    def heard(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(5.0, self.limit / 4)):
            if time.monotonic() - self._last > self.limit and self.proc.poll() is None:
                self.fired = True
                self.proc.kill()
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)


def _run_make(argv: list[str], cwd: Path, log: Path, expected: int | None) -> int:
    """Run make, teeing into `log`, with a progress line; returns the number of
    build steps seen (kept to estimate the next build's progress)."""
    ticker = ui.Ticker("kernel")
    steps = 0
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        # stdin: nothing. A Kconfig symbol without a value (a series adding
        # one without a default) makes kconfig ask; from a terminal that
        # would be a wait forever, from /dev/null it is the default.
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        silence = SilenceWatch(proc, timeouts.MAKE_SILENCE_S)
        try:
            for line in proc.stdout:
                silence.heard()
                out.write(line)
                m = _PROGRESS.match(line)
                if m:
                    steps += 1
                    elapsed = time.monotonic() - start
                    pct = eta = ""
                    if expected and steps < expected:  # an estimate from the last full build of this O=
                        pct = f"/{expected} ~{min(99, 100 * steps // expected)}%"
                        left = elapsed / steps * max(expected - steps, 0)
                        eta = f", ETA {int(left // 60)}m{int(left % 60):02d}s"
                    ticker.update(f"{steps}{pct} steps, {elapsed:.0f}s{eta}: {m.group(2)}")
        finally:
            silence.stop()
            if proc.poll() is None:
                proc.kill()
            rc = proc.wait()
            ticker.done()
    if silence.fired:
        raise BuildError(
            f"kernel build hung: make printed nothing for {silence.limit:.0f}s and was killed", log=log
        )
    if rc != 0:
        text = log.read_text(errors="replace")
        error = diagnostics.first_error(text, cwd)
        if error is not None:
            first = error.describe()
        else:
            errors = [ln for ln in text.splitlines() if "error:" in ln or "Error " in ln]
            first = errors[0].strip() if errors else f"make exited {rc}"
        raise BuildError(f"kernel build failed: {first}", log=log)
    return steps


def target_series(target: Target, upto: int | None) -> PatchSeries | None:
    """The target's series, cut to its first `upto` patches (None: all of
    them; 0: none, the base)."""
    series = load_series(target.series) if target.series else None
    if series is not None and upto is not None:
        series = series.prefix(upto) if upto > 0 else None
    return series


def check_applies(target: Target, upto: int | None = None) -> None:
    """Apply the target's series (its first `upto` patches) on the base
    before anything builds or boots: a patch that does not apply is the
    series' own FAIL (`series_defect`), with the line `build` gives. The
    applied series is kept as a branch of the source's work tree, so the
    build that follows only checks it out."""
    series = target_series(target, upto)
    if series is None:
        return
    cache = paths.cache_root()
    source_id = source_identity(target.source, DigestMemo(cache / "digests.json"))
    sources = ContentStore(cache / "sources")
    base = prepare_source(target.source, source_id, sources)
    with sources.lock(
        f"{base.key}.worktree", what=f"another process using the {base.version} source tree", stage="kernel"
    ):
        try:
            checkout(base.path, series)
        except PatchError as exc:
            exc.series_defect = True
            raise


def work_dir(source_id: str, tc_version: str, name: str = "") -> Path:
    """The persistent O= directory of a source built with a toolchain (and
    a target's own `build_dir` name, if it has one)."""
    work_key = digest(["work-v1", source_id, name, tc_version])
    outdir = paths.cache_root() / "work" / work_key[:24]
    outdir.mkdir(parents=True, exist_ok=True)
    return outdir


def build_kernel(
    target: Target, *, jobs: int | None = None, upto: int | None = None, warnings_level: str | None = None
) -> KernelBuild:
    """Build `target`: its source with the first `upto` patches of its
    series (all of them when None; 0 is the base), configured with its
    fragments. "The kernel at patch k of series S" is a build input like any
    other: it has its own cache key, so series check, bisect and run share
    builds. A series' own defects (a patch that does not apply, a build that
    fails, a requested option that disappears) carry `series_defect`."""
    cache = paths.cache_root()
    toolchain = Toolchain(target.toolchain)
    tc_version = toolchain.check()
    memo = DigestMemo(cache / "digests.json")
    source_id = source_identity(target.source, memo)
    series = target_series(target, upto)
    extra = [f"W={warnings_level}"] if warnings_level else []
    input_key = _input_key(target, source_id, series, tc_version) + (f"+W={warnings_level}" if extra else "")

    store = ContentStore(cache / "kernels")
    hit = store.alias(input_key)
    if hit is not None:
        return _load(hit, target.name, cached=True)

    sources = ContentStore(cache / "sources")
    base = prepare_source(target.source, source_id, sources)
    # One persistent O= directory per source and toolchain, shared by every
    # series built on it: switching series rebuilds only what changed.
    outdir = work_dir(source_id, tc_version, target.build_dir)
    log = outdir / "build.log"
    make = ["make", f"O={outdir}", *toolchain.make_vars(), "LOCALVERSION=", *extra]
    try:
        with sources.lock(
            f"{base.key}.worktree",
            what=f"another process using the {base.version} source tree",
            stage="kernel",
        ):
            commit = checkout(base.path, series)
            log.write_text("")
            ui.info(
                "kernel", f"configuring {target.name} ({base.version}, {len(target.fragments)} fragments)"
            )
            saved = _saved_config(target, source_id, series, tc_version, toolchain.make_vars())
            config_text = kconfig.resolve_config(make, base.path, outdir, target.fragments, log, saved)
            build_key = digest(["build", input_key, config_text])
            with store.lock(build_key, what=f"another build of {target.name}", stage="kernel"):
                if store.get(build_key) is None:
                    meta = _metadata(
                        target, base.version, source_id, series, tc_version, config_text, make, upto
                    )
                    meta["commit"] = commit
                    if series is not None and series.base_commit:
                        note = check_base_commit(target.source, series.base_commit, base.version)
                        meta["series"] |= {"base_commit": series.base_commit, "base_commit_check": note}
                        ui.info("kernel", note)
                    _build_into_store(store, build_key, make, base.path, outdir, log, config_text, jobs, meta)
    except (PatchError, BuildError, KconfigError) as exc:
        # Loading the series happened above: what fails here is the series
        # applying, building or configuring on this base.
        if series is not None and (not isinstance(exc, KconfigError) or "dropped" in str(exc)):
            exc.series_defect = True
        raise
    store.set_alias(input_key, build_key)
    return _load(store.path(build_key), target.name, cached=False)


def _saved_config(
    target: Target, source_id: str, series: PatchSeries | None, tc_version: str, make_vars: list[str]
) -> Path:
    """Where the resolved .config of this source, series, fragments and
    toolchain is kept. A series that changes no Kconfig input (most
    negative-test and review series: C files only) resolves to its base's
    .config, so they share one."""
    changes_kconfig = series is not None and kconfig.reads_kconfig_inputs(series.touched_paths())
    kconfig_changes = series.identity if series is not None and changes_kconfig else "none"
    key = digest(
        [
            "kconfig-v1",
            source_id,
            kconfig_changes,
            tc_version,
            *make_vars,
            *(f"{f.name}\n{f.read_text()}" for f in target.fragments),
        ]
    )
    return paths.cache_root() / "kconfig" / f"{key}.config"


STEPS_FILE = ".harness-steps"


def _expected_steps(outdir: Path) -> tuple[bool, int | None]:
    """Whether the make about to run in `outdir` is a full build (no
    vmlinux there yet), and how many steps it will take: the count of the
    last full build, for a full build only. An incremental build runs an
    unknown few of them, so it gets no estimate (an ETA of hours for a
    build that ends in seconds is worse than none)."""
    full = not (outdir / "vmlinux").exists()
    count_file = outdir / STEPS_FILE
    if not full or not count_file.exists():
        return full, None
    return full, int(count_file.read_text())


def _build_into_store(
    store: ContentStore,
    key: str,
    make: list[str],
    tree: Path,
    outdir: Path,
    log: Path,
    config_text: str,
    jobs: int | None,
    metadata: dict[str, Any],
) -> None:
    jobs = jobs or os.cpu_count() or 1
    modules = kconfig.parse_config(config_text).get("CONFIG_MODULES", "n") == "y"
    goals = ["Image", "modules"] if modules else ["Image"]
    warnings_file = outdir / "warnings.json"
    previous = diagnostics.load_map(warnings_file)
    if previous is None and (outdir / "vmlinux").exists():
        # This work tree was built before warnings were kept per unit: start
        # from clean once (ccache makes it cheap), so the map is complete.
        ui.info("kernel", "recompiling once to record every unit's warnings")
        _run_make([*make, "clean"], tree, log, None)
    full, expected = _expected_steps(outdir)
    ui.info("kernel", f"make -j{jobs} {' '.join(goals)} (log: {log})")
    start = time.monotonic()
    env_make = [*make, f"-j{jobs}", *goals]
    offset = log.stat().st_size if log.exists() else 0
    try:
        steps = _run_make(env_make, tree, log, expected)
    finally:
        # Whatever make compiled (even in a failed build) has its warnings now.
        with log.open("rb") as f:
            f.seek(offset)
            output = f.read().decode(errors="replace")
        current = diagnostics.update(previous or {}, output, tree)
        diagnostics.save_map(warnings_file, current)
    if full:
        (outdir / STEPS_FILE).write_text(str(steps))
    metadata["build_seconds"] = round(time.monotonic() - start, 1)
    with store.stage(key) as stage:
        shutil.copy2(outdir / "arch" / "arm64" / "boot" / "Image", stage / "Image")
        shutil.copy2(outdir / "vmlinux", stage / "vmlinux")
        shutil.copy2(outdir / "System.map", stage / "System.map")
        (stage / "config").write_text(config_text)
        if modules:
            _run_make([*make, f"INSTALL_MOD_PATH={stage / 'modules'}", "modules_install"], tree, log, None)
        shutil.copy2(log, stage / "build.log")
        diagnostics.save_map(stage / "warnings.json", current)
        metadata["warnings"] = sum(len(w) for w in current.values())
        write_json(stage / "metadata.json", metadata)
    ui.info("kernel", f"built in {metadata['build_seconds']}s, cached as {key[:16]}")


def _metadata(
    target: Target,
    version: str,
    source_id: str,
    series: PatchSeries | None,
    tc: str,
    config_text: str,
    make: list[str],
    upto: int | None,
) -> dict[str, Any]:
    return {
        "target": target.name,
        "kernel_version": version,
        "source": source_id,
        "series": None
        if series is None
        else {
            "spec": series.spec.describe(),
            "identity": series.identity,
            "patches": [{"index": p.index, "subject": p.subject, "origin": p.origin} for p in series.patches],
        },
        "fragments": [f.name for f in target.fragments],
        "toolchain": tc,
        "config_sha256": digest([config_text]),
        "harness_version": __version__,
        "reproducer": {
            "harness": shlex.join(["pkvm-harness", "build", *target.cli_args(upto)]),
            "make": shlex.join([*make, "Image"]),
        },
    }
