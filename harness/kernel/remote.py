"""What `--source` names: a local git work tree or tarball, or a remote git
repository, `--source URL@REF`, fetched once into the cache (a bare mirror
per URL, refreshed on use), and resolved to commits. With `--base BASE`,
the commits BASE..REF become a patch series (git format-patch), so `series
check` and `bisect` walk a development branch the same way they walk an
mbox."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import paths, ui
from harness.cache import digest
from harness.config.models import SeriesSpec, SourceSpec
from harness.errors import ConfigError, SourceError
from harness.kernel.gitutil import git

_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)")


def is_git_url(value: str) -> bool:
    return bool(_URL.match(value))


def split_ref(value: str) -> tuple[str, str]:
    """`URL@REF` -> (URL, REF); REF defaults to HEAD. The `@` of
    `user@host:path` comes before the path (no `/` ahead of it), a ref's
    after it, and a ref has no `:`."""
    head, sep, ref = value.rpartition("@")
    if sep and "/" in head and ref and ":" not in ref:
        return head, ref
    return value, "HEAD"


@dataclass(frozen=True)
class RemoteSource:
    url: str
    ref: str
    repo: Path  # the bare mirror in the cache
    tip: str  # REF, resolved
    base: str | None = None  # BASE, resolved, when given

    def source(self) -> SourceSpec:
        """The kernel source: the base when there is one (the series goes on
        top), else the tip."""
        return SourceSpec("git", str(self.repo), rev=self.base or self.tip, origin=self.url)


def _resolve(repo: Path, name: str, url: str) -> str:
    for candidate in (name, f"refs/remotes/origin/{name}", f"refs/tags/{name}"):
        got = git(repo, "rev-parse", "-q", "--verify", f"{candidate}^{{commit}}", check=False)
        if got.returncode == 0:
            return got.stdout.strip()
    raise SourceError(f"source {url}: no commit, branch or tag '{name}' there")


_BROKEN_MIRROR = re.compile(r"missing (?:blob|tree|commit|object)|bad object|unable to read|did not send all")


def _borrow_unpacked_sources(mirror: Path) -> None:
    """Let the mirror read the objects of every source unpacked in the cache
    (git alternates). A branch built on such a tree (a developer's clone of
    the harness's tree, or a series pushed on top of its base) then fetches
    only its own commits, not the whole kernel (~300 MB, 40 s here). The
    list is rewritten on every fetch, so a source that is gone is not
    named; the harness never deletes one."""
    objects = sorted(
        str(p) for p in (paths.cache_root() / "sources").glob("*/tree/.git/objects") if p.is_dir()
    )
    info = mirror / "objects" / "info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "alternates").write_text("".join(f"{o}\n" for o in objects))


def _fetch_into(mirror: Path, url: str) -> subprocess.CompletedProcess[str]:
    if not (mirror / "HEAD").exists():
        mirror.mkdir(parents=True, exist_ok=True)
        git(mirror, "init", "-q", "--bare")
    _borrow_unpacked_sources(mirror)
    return git(
        mirror,
        "fetch",
        "-q",
        "--tags",
        "--force",
        url,
        "+refs/heads/*:refs/remotes/origin/*",
        "+HEAD:refs/remotes/origin/HEAD",
        check=False,
    )


def fetch(value: str, base: str | None) -> RemoteSource:
    url, ref = split_ref(value)
    mirror = paths.cache_root() / "git" / digest([url])[:24]
    ui.info("kernel", f"fetching {url}")
    got = _fetch_into(mirror, url)
    if got.returncode != 0 and _BROKEN_MIRROR.search(got.stderr):
        # A mirror whose objects are incomplete (objects it borrowed are
        # gone, or an interrupted fetch): start it again, once. Other
        # failures (an unreachable URL) keep what it has.
        shutil.rmtree(mirror, ignore_errors=True)
        got = _fetch_into(mirror, url)
    if got.returncode != 0:
        last = (got.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceError(f"source {url}: cannot fetch it ({last.removeprefix('fatal: ')})")
    tip = _resolve(mirror, ref, url)
    base_commit = None
    if base is not None:
        base_commit = _resolve(mirror, base, url)
        if git(mirror, "merge-base", "--is-ancestor", base_commit, tip, check=False).returncode != 0:
            raise SourceError(f"source {url}: --base {base} is not an ancestor of {ref}")
    return RemoteSource(url, ref, mirror, tip, base_commit)


def series_between(remote: RemoteSource) -> SeriesSpec:
    """`git format-patch BASE..TIP` into the cache: one patch per commit, in
    order, numbered, as a reviewer's series."""
    assert remote.base is not None
    out = paths.cache_root() / "git-series" / digest([remote.url, remote.base, remote.tip])[:24]
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        count = git(remote.repo, "rev-list", "--count", f"{remote.base}..{remote.tip}").stdout.strip()
        if count == "0":
            raise SourceError(f"source {remote.url}: no commits between the base and {remote.ref}")
        git(remote.repo, "format-patch", "-q", "--numbered", "-o", str(out), f"{remote.base}..{remote.tip}")
        (out / ".complete").write_text("")
    return SeriesSpec("dir", str(out))


def source_spec(value: str, base: str | None = None) -> tuple[SourceSpec, SeriesSpec | None]:
    """What `--source VALUE [--base BASE]` names: the kernel source, and the
    series BASE..REF when BASE is given (a git URL only: options.check_args
    holds --base to one). A URL is fetched here; a local value is a git work
    tree or a tarball."""
    if is_git_url(value):
        fetched = fetch(value, base)
        return fetched.source(), (series_between(fetched) if fetched.base is not None else None)
    path = Path(value)
    if (path / ".git").exists():
        return SourceSpec("git", str(path.resolve())), None
    if path.is_file():
        return SourceSpec("tarball", str(path.resolve())), None
    raise ConfigError(f"--source {value}: not a git work tree or a tarball")
