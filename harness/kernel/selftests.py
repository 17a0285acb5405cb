"""Kernel selftests (tools/testing/selftests/<suite>) built from the target's
own source tree, with its series applied: cross-compiled for arm64, static,
stripped, and cached by content like kernels.

The cache key covers the source, the series (prefix), the cross compiler,
the suite and the recipe; the target's config fragments do not matter (the
selftests are user space, built against the tree's UAPI headers). The image
stage packs a build into a cpio appended to the initramfs
(`GuestImage.with_selftests`), only when a scenario needs it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import paths, ui
from harness.cache import ContentStore, DigestMemo, digest, write_json
from harness.config.models import Target
from harness.debs import fetch_debs
from harness.errors import BuildError, ConfigError, PatchError
from harness.kernel.build import ARCH, Toolchain, target_series
from harness.kernel.gitutil import archive_into
from harness.kernel.series import PatchSeries, applied_commit, checkout
from harness.kernel.source import prepare_source, source_identity
from harness.timeouts import QUICK_S, SELFTEST_BUILD_S, tool_deadline

RECIPE_VERSION = "kselftest-recipe-v1"
# What headers_install and the selftests' makefiles read of the source tree.
_TREE_PARTS = ("Makefile", "scripts", "include", "arch/arm64", "usr", "tools", "drivers/iommu/iommufd")
GUEST_DIR = "usr/lib/kselftests"  # /usr/lib/kselftests/<suite>/<test> in the guest


@dataclass(frozen=True)
class Suite:
    directory: str  # under tools/testing/selftests
    # arm64 Debian packages whose static libraries and headers the suite
    # links against, unpacked into a sysroot of their own.
    debs: tuple[str, ...] = ()


SUITES: dict[str, Suite] = {
    "kvm": Suite("kvm"),
    "iommu": Suite("iommu", debs=("libcap-dev",)),
}


@dataclass(frozen=True)
class SelftestBuild:
    suite: str
    key: str
    directory: Path  # the cache entry; bin/ holds the binaries, laid out as in the suite
    tests: tuple[str, ...]
    metadata: dict[str, Any] = field(hash=False, compare=False)
    cached: bool = False

    @property
    def bin(self) -> Path:
        return self.directory / "bin"


def _load(directory: Path, cached: bool) -> SelftestBuild:
    meta = json.loads((directory / "metadata.json").read_text())
    return SelftestBuild(meta["suite"], directory.name, directory, tuple(meta["tests"]), meta, cached)


def touches_selftest_inputs(series: PatchSeries) -> bool:
    """A selftest build reads only `_TREE_PARTS` of the tree (it archives
    them): a series that changes none of them (a kernel-side negative test)
    gives the very same archive, so the same binaries as its base."""
    return series.touches(_TREE_PARTS)


def build_selftests(
    target: Target, suite: str, *, upto: int | None = None, jobs: int | None = None
) -> SelftestBuild:
    """The `suite` selftests of `target`'s source at patch `upto` of its
    series (all when None), from the cache when built before."""
    if suite not in SUITES:
        raise ConfigError(f"unknown kselftest suite '{suite}' (known: {', '.join(sorted(SUITES))})")
    spec = SUITES[suite]
    cache = paths.cache_root()
    toolchain = Toolchain("gcc")  # static user space: the cross gcc and its libc, whatever the kernel uses
    tc_version = toolchain.check()
    source_id = source_identity(target.source, DigestMemo(cache / "digests.json"))
    series = target_series(target, upto)
    if series is not None and not touches_selftest_inputs(series):
        # The same binaries as the base's: build (or reuse) those.
        series = None
    series_id = series.identity if series else None
    key = digest([RECIPE_VERSION, ARCH, source_id, series_id or "no-series", tc_version, suite, *spec.debs])
    store = ContentStore(cache / "kselftests")
    hit = store.get(key)
    if hit is not None:
        return _load(hit, cached=True)
    sources = ContentStore(cache / "sources")
    base = prepare_source(target.source, source_id, sources)
    with store.lock(key):
        if store.get(key) is None:
            sysroot_debs = fetch_debs(list(spec.debs), cache / "debs", BuildError) if spec.debs else []
            commit = applied_commit(base.path, series)
            if commit is None:  # the series was never applied: apply it (the work tree is shared)
                with sources.lock(f"{base.key}.worktree"):
                    try:
                        commit = checkout(base.path, series)
                    except PatchError as exc:
                        exc.series_defect = True
                        raise
            meta: dict[str, Any] = {
                "suite": suite,
                "target": target.name,
                "kernel_version": base.version,
                "source": source_id,
                "series": series_id,
                "commit": commit,
                "toolchain": tc_version,
                "debs": [d.name for d in sysroot_debs],
            }
            with store.stage(key) as stage:
                _build(base.path, commit, spec, toolchain, stage, sysroot_debs, jobs, meta)
    return _load(store.path(key), cached=False)


def _make(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        with tool_deadline(BuildError, f"selftest build step {argv[0]} (log: {log})"):
            run = subprocess.run(
                argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=SELFTEST_BUILD_S
            )
        rc = run.returncode
    if rc != 0:
        lines = log.read_text(errors="replace").splitlines()
        errors = [ln for ln in lines if "error:" in ln or "Error " in ln] or [f"make exited {rc}"]
        raise BuildError(f"selftest build failed: {errors[0].strip()}", log=log)


def _build(
    repo: Path,
    commit: str,
    spec: Suite,
    toolchain: Toolchain,
    stage: Path,
    debs: list[Path],
    jobs: int | None,
    meta: dict[str, Any],
) -> None:
    start = time.monotonic()
    log = stage / "build.log"
    cross = toolchain.cross_compile
    with tempfile.TemporaryDirectory(prefix="kselftest-") as tmp:
        work = Path(tmp)
        # The parts of the tree at `commit` that the UAPI headers and the
        # selftests are made of, exported from git: the shared work tree is
        # neither read nor locked, so a kernel build of the same source may
        # run meanwhile.
        tree = work / "src"
        tree.mkdir()
        archive_into(repo, commit, tree, BuildError, "selftest build", _TREE_PARTS)
        headers = work / "headers"
        # The UAPI headers of this very tree (the selftests test its ioctls).
        hdr_cmd = [
            "make",
            "-s",
            f"O={work / 'hdr-build'}",
            f"ARCH={ARCH}",
            f"CROSS_COMPILE={cross}",
            "headers_install",
            f"INSTALL_HDR_PATH={headers}",
        ]
        ui.info("kselftest", f"{spec.directory}: headers_install (log: {log})")
        _make(hdr_cmd, tree, log)
        cflags, ldflags = "", "-static"
        if debs:
            sysroot = work / "sysroot"
            for deb in debs:
                with tool_deadline(BuildError, f"dpkg-deb -x {deb.name}"):
                    subprocess.run(["dpkg-deb", "-x", str(deb), str(sysroot)], check=True, timeout=QUICK_S)
            cflags = f"-I{sysroot}/usr/include"
            ldflags += f" -L{sysroot}/usr/lib/aarch64-linux-gnu"
        out = work / "out"
        out.mkdir()
        make_cmd = [
            "make",
            "-s",
            f"-j{jobs or os.cpu_count() or 1}",
            "-C",
            f"tools/testing/selftests/{spec.directory}",
            f"ARCH={ARCH}",
            f"CROSS_COMPILE={cross}",
            f"OUTPUT={out}",
            f"KHDR_INCLUDES=-isystem {headers}/include",
        ]
        # In the environment, so the suite's own `CFLAGS +=`/`LDFLAGS +=` add to them.
        env = {**os.environ, "CFLAGS": cflags, "LDFLAGS": ldflags}
        ui.info("kselftest", f"make -C tools/testing/selftests/{spec.directory} (static, {ARCH})")
        _make(make_cmd, tree, log, env)
        tests = _install(out, stage / "bin", f"{cross}strip")
    if not tests:
        raise BuildError(f"selftest build of {spec.directory} produced no test binaries", log=log)
    meta |= {
        "tests": tests,
        "size_bytes": sum((stage / "bin" / t).stat().st_size for t in tests),
        "build_seconds": round(time.monotonic() - start, 1),
        "reproducer": {
            "headers": shlex.join(hdr_cmd),
            "make": f"CFLAGS={shlex.quote(cflags)} LDFLAGS={shlex.quote(ldflags)} {shlex.join(make_cmd)}",
        },
    }
    write_json(stage / "metadata.json", meta)
    ui.info("kselftest", f"{spec.directory}: {len(tests)} binaries in {meta['build_seconds']}s")


def _is_executable_elf(path: Path) -> bool:
    if not path.is_file() or not os.access(path, os.X_OK):
        return False
    with path.open("rb") as f:
        head = f.read(18)
    # ELF, and e_type EXEC (2) or DYN (3): not an object file or archive.
    return head[:4] == b"\x7fELF" and head[16] in (2, 3)


def _install(out: Path, dest: Path, strip: str) -> list[str]:
    tests = []
    for path in sorted(out.rglob("*")):
        if not _is_executable_elf(path):
            continue
        rel = path.relative_to(out)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with tool_deadline(BuildError, f"{strip} {rel}"):
            subprocess.run([strip, "--strip-all", "-o", str(target), str(path)], check=True, timeout=QUICK_S)
        tests.append(str(rel))
    return tests
