"""`--source URL@REF [--base REF]` on a tiny tree (no kernel build): fetched
into the cache, resolved, BASE..REF as a series, the base-commit check, and a
one-line error when the URL cannot be reached."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.cache import ContentStore, DigestMemo
from harness.config.models import SourceSpec
from harness.errors import SourceError
from harness.kernel import remote
from harness.kernel.gitutil import GIT_ENV, git
from harness.kernel.series import checkout, load_series
from harness.kernel.source import check_base_commit, prepare_source, source_identity
from tests.unit.test_kernel_stage import make_tarball


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PKVM_HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def branch_on_top_of(base_tree: Path, work: Path) -> Path:
    """A reviewer's repository: a clone of the unpacked release with a
    two-commit branch `feature` on top of its base commit."""
    subprocess.run(
        ["git", "clone", "-q", str(base_tree), str(work)],
        check=True,
        env={**GIT_ENV, "PATH": "/usr/bin:/bin"},
    )
    git(work, "checkout", "-q", "-b", "feature")
    foo = work / "drivers" / "iommu" / "foo.c"
    for n, text in enumerate(("int a;\nint B;\nint c;\n", "int a;\nint BB;\nint c;\n"), start=1):
        foo.write_text(text)
        git(work, "commit", "-q", "-a", "-m", f"iommu: change {n}")
    git(work, "branch", "-q", "-f", "main", "HEAD~2")
    return work


def test_a_branch_of_the_unpacked_release_reuses_its_source_and_becomes_a_series(
    tmp_path: Path, cache: Path
) -> None:
    spec_tar = SourceSpec("tarball", str(make_tarball(tmp_path)))
    memo = DigestMemo(cache / "d.json")
    store = ContentStore(cache / "sources")
    tar_id = source_identity(spec_tar, memo)
    base = prepare_source(spec_tar, tar_id, store)
    work = branch_on_top_of(base.path, tmp_path / "linux")

    fetched = remote.fetch(f"file://{work}@feature", "main")
    # The same tree as the unpacked tarball: the same source identity, so the
    # same work tree and O= directory (incremental builds, not a cold one).
    assert source_identity(fetched.source(), memo) == tar_id
    series = load_series(remote.series_between(fetched))
    assert [p.subject for p in series.patches] == ["iommu: change 1", "iommu: change 2"]
    checkout(base.path, series)
    assert (base.path / "drivers" / "iommu" / "foo.c").read_text() == "int a;\nint BB;\nint c;\n"
    # Reproducers name the URL and the exact base commit.
    assert fetched.source().origin == f"file://{work}" and fetched.source().rev == fetched.base


def test_base_commit_trailer_checked_against_a_git_source(tmp_path: Path, cache: Path) -> None:
    spec_tar = SourceSpec("tarball", str(make_tarball(tmp_path)))
    base = prepare_source(
        spec_tar, source_identity(spec_tar, DigestMemo(cache / "d.json")), ContentStore(cache / "s")
    )
    work = branch_on_top_of(base.path, tmp_path / "linux")
    fetched = remote.fetch(f"file://{work}@feature", "main")
    src = fetched.source()
    main = git(work, "rev-parse", "main").stdout.strip()
    tip = git(work, "rev-parse", "feature").stdout.strip()
    assert check_base_commit(src, main, "7.3.4").startswith(
        f"base-commit {main[:12]} is an ancestor of the base"
    )
    assert "written for another base" in check_base_commit(src, tip, "7.3.4")  # the tip is after the base
    assert "is not in the source" in check_base_commit(src, "1" * 40, "7.3.4")
    assert "is a tarball of 7.3.4" in check_base_commit(spec_tar, main, "7.3.4")


def test_an_unreachable_url_is_a_one_line_error(cache: Path) -> None:
    with pytest.raises(SourceError) as err:
        remote.fetch("file:///nonexistent/linux.git@main", None)
    assert str(err.value).startswith("source file:///nonexistent/linux.git: cannot fetch it (")
    assert "\n" not in str(err.value)


def test_split_ref_keeps_scp_style_urls_whole() -> None:
    assert remote.split_ref("git@host:o/r.git") == ("git@host:o/r.git", "HEAD")
    assert remote.split_ref("git@host:o/r.git@main") == ("git@host:o/r.git", "main")
    assert remote.split_ref("file:///x/linux@topic/pkvm-smmu") == ("file:///x/linux", "topic/pkvm-smmu")


def test_a_branch_on_an_unpacked_source_fetches_only_its_own_commits(tmp_path: Path, cache: Path) -> None:
    spec_tar = SourceSpec("tarball", str(make_tarball(tmp_path)))
    store = ContentStore(cache / "sources")
    base = prepare_source(spec_tar, source_identity(spec_tar, DigestMemo(cache / "d.json")), store)
    work = branch_on_top_of(base.path, tmp_path / "linux")

    fetched = remote.fetch(f"file://{work}@feature", "main")
    alternates = (fetched.repo / "objects" / "info" / "alternates").read_text().split()
    assert alternates == [str(base.path / ".git" / "objects")]
    # The mirror's own objects: the two commits, their trees and blobs, not
    # the release's tree (which it reads through the alternate).
    own = git(fetched.repo, "count-objects", "-v").stdout
    counts = dict(line.split(": ") for line in own.splitlines())
    assert int(counts["count"]) + int(counts["in-pack"]) <= 12, own
    assert git(fetched.repo, "cat-file", "-e", f"{fetched.base}^{{tree}}").returncode == 0

    # The source it borrowed from gone: the mirror starts again (a whole
    # fetch) rather than failing.
    base.path.rename(tmp_path / "moved-away")
    again = remote.fetch(f"file://{work}@feature", "main")
    assert again.tip == fetched.tip
    assert (again.repo / "objects" / "info" / "alternates").read_text() == ""
    assert git(again.repo, "cat-file", "-e", f"{again.base}^{{tree}}").returncode == 0
