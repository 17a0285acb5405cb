"""Sources that live in a remote git repository: `--source URL@REF`, fetched
once into the cache (a bare mirror per URL, refreshed on use), and resolved
to commits. With `--base BASE`, the commits BASE..REF become a patch series
(git format-patch), so `series check` and `bisect` walk a development branch
the same way they walk an mbox."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness import paths, ui
from harness.cache import digest
from harness.config.models import SeriesSpec, SourceSpec
from harness.errors import SourceError
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


def fetch(value: str, base: str | None) -> RemoteSource:
    url, ref = split_ref(value)
    mirror = paths.cache_root() / "git" / digest([url])[:24]
    if not (mirror / "HEAD").exists():
        mirror.mkdir(parents=True, exist_ok=True)
        git(mirror, "init", "-q", "--bare")
    ui.info("kernel", f"fetching {url}")
    got = git(
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
