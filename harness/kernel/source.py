"""Kernel sources: a Debian linux-source-* tarball, a tarball path, or a local
git tree. Each is unpacked once into the cache, keyed by its content."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import paths, ui
from harness.cache import ContentStore, DigestMemo, digest
from harness.config.models import SourceSpec
from harness.errors import SourceError
from harness.kernel.gitutil import archive_into, git
from harness.timeouts import TREE_S, tool_deadline


@dataclass(frozen=True)
class SourceTree:
    spec: SourceSpec
    identity: str  # e.g. "tarball:linux-source-7.3.tar.xz@sha256:76df..."
    key: str  # its content-store key
    path: Path  # a git work tree: base commit tagged harness-base
    version: str  # from the top Makefile, e.g. "7.3.4"


def _tarball_for(spec: SourceSpec) -> Path:
    if spec.kind == "debian":
        tarball = paths.source_dir() / f"{spec.location}.tar.xz"
        if not tarball.exists():
            raise SourceError(
                f"source {spec.describe()}: {tarball} not found (install it with: sudo ci/setup-host.sh)"
            )
        return tarball
    tarball = Path(spec.location)
    if not tarball.is_file():
        raise SourceError(f"source {spec.describe()}: no such tarball")
    return tarball


def _git_snapshot(spec: SourceSpec) -> str:
    """A commit for the working tree as it is, uncommitted changes included,
    without touching the user's branches (git stash create writes no ref)."""
    repo = Path(spec.location)
    if spec.rev is not None:  # a commit of a fetched remote (a bare mirror)
        return git(repo, "rev-parse", f"{spec.rev}^{{commit}}").stdout.strip()
    if not (repo / ".git").exists():
        raise SourceError(f"source {spec.describe()}: not a git work tree")
    stash = git(repo, "stash", "create", check=False).stdout.strip()
    rev = stash or git(repo, "rev-parse", "HEAD").stdout.strip()
    return rev


def _unpacked_with_tree(tree: str) -> str | None:
    """The identity of a source already unpacked in the cache whose base
    commit has this exact tree, if any."""
    for base in sorted((paths.cache_root() / "sources").glob("*/tree")):
        got = git(base, "log", "-1", "--max-parents=0", "--format=%T %s", "HEAD", check=False)
        sha, _, subject = got.stdout.strip().partition(" ")
        if got.returncode == 0 and sha == tree and subject.startswith("base: "):
            return subject.removeprefix("base: ")
    return None


def source_identity(spec: SourceSpec, memo: DigestMemo) -> str:
    if spec.kind == "git" and spec.rev is not None:
        # A fetched commit is identified by its tree: a branch of the very
        # tree a tarball gave (e.g. a reviewer's branch on top of the
        # release) shares that source's cache entry, work tree and O=
        # directory, so its patches build incrementally, not from cold.
        tree = git(Path(spec.location), "rev-parse", f"{spec.rev}^{{tree}}").stdout.strip()
        return _unpacked_with_tree(tree) or f"gittree:{tree}"
    if spec.kind == "git":
        return f"git:{spec.location}@{_git_snapshot(spec)}"
    tarball = _tarball_for(spec)
    return f"tarball:{tarball.name}@sha256:{memo.file_digest(tarball)}"


def _kernel_version(tree: Path) -> str:
    fields: dict[str, str] = {}
    with (tree / "Makefile").open() as f:
        for line in f:
            m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line)
            if m:
                fields[m.group(1)] = m.group(2)
            if len(fields) == 4:
                break
    return "{VERSION}.{PATCHLEVEL}.{SUBLEVEL}{EXTRAVERSION}".format_map({"EXTRAVERSION": "", **fields})


def _unpack(spec: SourceSpec, dest: Path) -> None:
    if spec.kind == "git":
        rev = _git_snapshot(spec)
        archive_into(spec.location, rev, dest, SourceError, f"source {spec.describe()}")
        return
    tarball = _tarball_for(spec)
    # Tarballs carry one top directory (linux-source-7.3/); strip it.
    with tool_deadline(SourceError, f"source {spec.describe()}: unpacking {tarball.name}"):
        result = subprocess.run(
            ["tar", "-x", "-f", str(tarball), "-C", str(dest), "--strip-components=1"],
            capture_output=True,
            text=True,
            timeout=TREE_S,
        )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        first = lines[0].removeprefix("tar: ")
        full = [ln.removeprefix("tar: ") for ln in lines if "No space left on device" in ln]
        if full:
            # The errno's own line: tar's first may be a short write
            # ("Wrote only 6656 of 8358 bytes") that does not say why.
            where = f"unpacking into {dest.parent} failed"
            raise SourceError(f"source {spec.describe()}: {where}: disk full ({full[0]})")
        raise SourceError(f"source {spec.describe()}: tar failed: {first}")
    if not (dest / "Makefile").exists() or not (dest / "arch" / "arm64").is_dir():
        raise SourceError(f"source {spec.describe()}: not a Linux kernel tree")


def prepare_source(spec: SourceSpec, identity: str, store: ContentStore) -> SourceTree:
    """Unpack (once) and make the tree a git repository with one base commit."""
    key = digest(["source-v1", identity])
    with store.lock(key, what=f"another process unpacking {spec.describe()}", stage="kernel"):
        if store.get(key) is None:
            ui.info("kernel", f"unpacking {spec.describe()} (once per source)")
            with store.stage(key) as stage:
                tree = stage / "tree"
                tree.mkdir()
                _unpack(spec, tree)
                git(tree, "init", "-q")
                # --force: Debian's packaging .gitignore ignores everything at the top.
                git(tree, "add", "-A", "--force")
                git(tree, "commit", "-q", "--no-verify", "-m", f"base: {identity}")
        tree = store.path(key) / "tree"
    return SourceTree(spec=spec, identity=identity, key=key, path=tree, version=_kernel_version(tree))


def check_base_commit(spec: SourceSpec, commit: str, version: str) -> str:
    """What a series' `base-commit:` trailer says about this source: on a
    git source, whether the commit is there and an ancestor of the base; a
    tarball has no commits, so the trailer is reported beside its version."""
    if spec.kind != "git":
        return (
            f"the series says base-commit {commit[:12]}; the source is a tarball of {version},"
            " which has no commits to check it against"
        )
    repo = Path(spec.location)
    if git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        return f"base-commit {commit[:12]} is not in the source: the series was written for another base"
    base = spec.rev or _git_snapshot(spec)
    if git(repo, "merge-base", "--is-ancestor", commit, base, check=False).returncode != 0:
        return (
            f"base-commit {commit[:12]} is not an ancestor of the base {base[:12]}:"
            " the series was written for another base"
        )
    return f"base-commit {commit[:12]} is an ancestor of the base {base[:12]}"
