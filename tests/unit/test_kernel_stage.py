"""Kernel stage pieces that need no real kernel: series loading and
application (on a tiny tarball "kernel"), kconfig verification, the cache."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from harness.cache import ContentStore, DigestMemo
from harness.cli import main
from harness.config.models import SeriesSpec, SourceSpec
from harness.errors import KconfigError, PatchError
from harness.kernel import kconfig
from harness.kernel.gitutil import git
from harness.kernel.series import BASE_TAG, checkout, load_series
from harness.kernel.source import prepare_source, source_identity

PATCH = """From 1111111111111111111111111111111111111111 Mon Sep 17 00:00:00 2001
From: Dev <dev@example.org>
Date: Mon, 1 Jan 2024 00:00:00 +0000
Subject: [PATCH {n}/2] iommu: {subject}

---
 drivers/iommu/foo.c | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/drivers/iommu/foo.c b/drivers/iommu/foo.c
--- a/drivers/iommu/foo.c
+++ b/drivers/iommu/foo.c
@@ -1,3 +1,3 @@
 int a;
-{old}
+{new}
 int c;
--
2.39.5

"""


def make_tarball(tmp_path: Path) -> Path:
    root = tmp_path / "linux-tiny"
    (root / "arch" / "arm64").mkdir(parents=True)
    (root / "drivers" / "iommu").mkdir(parents=True)
    (root / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\nEXTRAVERSION =\n")
    (root / "drivers" / "iommu" / "foo.c").write_text("int a;\nint b;\nint c;\n")
    tarball = tmp_path / "linux-tiny.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname="linux-tiny")
    return tarball


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PKVM_HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_mbox_series_skips_cover_letter_and_cleans_subjects(tmp_path: Path) -> None:
    cover = (
        "From 0 Mon Sep 17 00:00:00 2001\nFrom: Dev <d@e>\n"
        "Subject: [PATCH 0/2] cover letter\n\nJust words.\n\n"
    )
    p1 = PATCH.format(n=1, subject="first", old="int b;", new="int B;")
    p2 = PATCH.format(n=2, subject="second", old="int B;", new="int BB;")
    mbox = tmp_path / "series.mbox"
    mbox.write_text(cover + p1 + p2)
    series = load_series(SeriesSpec("mbox", str(mbox)))
    assert [p.subject for p in series.patches] == ["iommu: first", "iommu: second"]
    assert [p.index for p in series.patches] == [1, 2]


def test_patch_dir_uses_quilt_series_order(tmp_path: Path) -> None:
    d = tmp_path / "patches"
    d.mkdir()
    (d / "b.patch").write_text(PATCH.format(n=1, subject="bee", old="int b;", new="int B;"))
    (d / "a.patch").write_text(PATCH.format(n=2, subject="ay", old="int B;", new="int BB;"))
    (d / "series").write_text("# order\nb.patch\na.patch\n")
    series = load_series(SeriesSpec("dir", str(d)))
    assert [p.origin for p in series.patches] == ["b.patch", "a.patch"]


def test_series_applies_as_one_commit_per_patch(tmp_path: Path, cache: Path) -> None:
    spec = SourceSpec("tarball", str(make_tarball(tmp_path)))
    store = ContentStore(cache / "sources")
    base = prepare_source(spec, source_identity(spec, DigestMemo(cache / "d.json")), store)
    assert base.version == "7.3.4"
    mbox = tmp_path / "s.mbox"
    mbox.write_text(
        PATCH.format(n=1, subject="first", old="int b;", new="int B;")
        + PATCH.format(n=2, subject="second", old="int B;", new="int BB;")
    )
    series = load_series(SeriesSpec("mbox", str(mbox)))
    head = checkout(base.path, series)
    log = git(base.path, "log", "--format=%s").stdout.splitlines()
    assert log[:2] == ["iommu: second", "iommu: first"] and log[2].startswith("base: ")
    foo = base.path / "drivers/iommu/foo.c"
    assert foo.read_text() == "int a;\nint BB;\nint c;\n"
    # Back to the base and again to the series (now a kept branch): same commit.
    checkout(base.path, None)
    assert foo.read_text() == "int a;\nint b;\nint c;\n"
    assert checkout(base.path, series) == head


def test_patch_that_does_not_apply_names_position_subject_and_file(tmp_path: Path, cache: Path) -> None:
    spec = SourceSpec("tarball", str(make_tarball(tmp_path)))
    store = ContentStore(cache / "sources")
    base = prepare_source(spec, source_identity(spec, DigestMemo(cache / "d.json")), store)
    mbox = tmp_path / "s.mbox"
    mbox.write_text(
        PATCH.format(n=1, subject="good", old="int b;", new="int B;")
        + PATCH.format(n=2, subject="stale", old="int zzz;", new="int y;")
    )
    with pytest.raises(PatchError) as err:
        checkout(base.path, load_series(SeriesSpec("mbox", str(mbox))))
    assert str(err.value) == (
        "patch 2/2 'iommu: stale' (s.mbox message 2) does not apply: conflicts in drivers/iommu/foo.c"
    )
    # Nothing half-applied is left: the tree is back at the base, no branch.
    assert (
        git(base.path, "rev-parse", "HEAD").stdout
        == git(base.path, "rev-parse", f"{BASE_TAG}^{{commit}}").stdout
    )
    assert git(base.path, "branch", "--list", "harness/*").stdout.strip() == ""
    assert git(base.path, "status", "--porcelain").stdout == ""


def test_cli_patch_that_does_not_apply_is_the_series_fail_exit_1(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = make_tarball(tmp_path)
    target = tmp_path / "tiny.yaml"
    target.write_text(f"name: tiny\nsource: {{tarball: {tarball}}}\nfragments: [base]\n")
    bad = tmp_path / "0001-stale.patch"
    bad.write_text(PATCH.format(n=1, subject="stale", old="int zzz;", new="int y;"))
    rc = main(["build", "--target", str(target), "--series", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    # The series' own defect: a FAIL of the series, not bad input.
    assert rc == 1
    assert err[-1] == (
        "pkvm-harness: FAIL: patch 1/1 'iommu: stale' (0001-stale.patch message 1)"
        " does not apply: conflicts in drivers/iommu/foo.c"
    )


def test_cli_missing_cross_compiler_is_one_line_error_exit_2(
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH at all
    rc = main(["build", "--target", "mainline-7.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "pkvm-harness: error: toolchain gcc: aarch64-linux-gnu-gcc not found"
        " (install gcc-aarch64-linux-gnu, e.g. with: sudo ci/setup-host.sh)"
    ]


def test_kconfig_dropped_option_is_named(tmp_path: Path) -> None:
    frag = tmp_path / "pkvm.config"
    frag.write_text("# c\nCONFIG_KVM=y\nCONFIG_ARM_SMMU_V3_PKVM=y\n# CONFIG_JUMP_LABEL is not set\n")
    config = "CONFIG_KVM=y\n# CONFIG_JUMP_LABEL is not set\n"
    (dropped,) = kconfig.dropped_options(config, [frag])
    assert dropped.describe() == "pkvm.config:3: CONFIG_ARM_SMMU_V3_PKVM=y"
    # An option absent from .config counts as "not set" (JUMP_LABEL above).


def test_kconfig_later_fragment_overrides_earlier(tmp_path: Path) -> None:
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    a.write_text("CONFIG_JUMP_LABEL=y\n")
    b.write_text("# CONFIG_JUMP_LABEL is not set\n")
    assert kconfig.dropped_options("", [a, b]) == []
    assert [r.option for r in kconfig.dropped_options("", [b, a])] == ["CONFIG_JUMP_LABEL"]


def test_bad_fragment_line(tmp_path: Path) -> None:
    f = tmp_path / "x.config"
    f.write_text("CONFIG_A=y\nKVM=y\n")
    with pytest.raises(Exception, match=r"x\.config:2: not a Kconfig line"):
        kconfig.parse_fragment(f)


def test_content_store_alias_and_atomic_stage(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "s")
    with pytest.raises(RuntimeError), store.stage("k1") as stage:
        (stage / "f").write_text("half")
        raise RuntimeError("killed")
    assert store.get("k1") is None
    with store.stage("k1") as stage:
        (stage / "f").write_text("whole")
    store.set_alias("input", "k1")
    hit = store.alias("input")
    assert hit is not None and (hit / "f").read_text() == "whole"


def test_a_dropped_option_says_whether_the_symbol_exists_and_names_its_dependency(tmp_path: Path) -> None:
    from harness.kernel.kconfig import why_dropped

    (tmp_path / "drivers").mkdir()
    (tmp_path / "drivers" / "Kconfig").write_text(
        'config IOMMUFD_TEST\n\tbool "test"\n\tdepends on IOMMUFD\n\tdepends on A || B\n\thelp\n'
        "\t  x\n\nconfig OTHER\n\tdepends on NOPE\n"
    )
    assert why_dropped(tmp_path, "CONFIG_IOMMUFD_TEST") == (
        "unmet dependency: IOMMUFD_TEST (drivers/Kconfig:1) depends on IOMMUFD && (A || B)"
    )
    assert why_dropped(tmp_path, "CONFIG_ARM_SMMU_V3_PKVM") == (
        "this kernel source has no symbol ARM_SMMU_V3_PKVM"
        " (no Kconfig entry: does it come with a patch series?)"
    )


def test_a_prefix_is_applied_once_and_the_next_prefix_continues_from_it(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = SourceSpec("tarball", str(make_tarball(tmp_path)))
    base = prepare_source(
        spec, source_identity(spec, DigestMemo(cache / "d.json")), ContentStore(cache / "s")
    )
    mbox = tmp_path / "s.mbox"
    mbox.write_text(
        PATCH.format(n=1, subject="first", old="int b;", new="int B;")
        + PATCH.format(n=2, subject="second", old="int B;", new="int BB;")
    )
    series = load_series(SeriesSpec("mbox", str(mbox)))
    one = checkout(base.path, series.prefix(1))
    assert (base.path / "drivers/iommu/foo.c").read_text() == "int a;\nint B;\nint c;\n"
    capsys.readouterr()
    two = checkout(base.path, series)
    assert "applying 1 patches (" in capsys.readouterr().err  # only patch 2: patch 1 was there
    assert git(base.path, "rev-parse", "HEAD~1").stdout.strip() == one != two
    assert series.prefix(1).describe(series.patches[0]).startswith("patch 1/2 ")


SERIES = Path(__file__).resolve().parents[1] / "data" / "series"


def test_a_series_names_the_paths_it_touches() -> None:
    unmap_noop = load_series(SeriesSpec("mbox", str(SERIES / "unmap-noop.patch")))
    assert unmap_noop.touched_paths() == {"drivers/vfio/vfio_iommu_type1.c"}
    assert unmap_noop.touches(("drivers/vfio",)) and not unmap_noop.touches(("drivers/vf",))
    enable = load_series(SeriesSpec("mbox", str(SERIES / "test-enable-cacheable-pfnmap.patch")))
    assert any(p.endswith("Kconfig") for p in enable.touched_paths())
    # What decides whether a series can reuse its base's resolved .config.
    assert not kconfig.reads_kconfig_inputs(unmap_noop.touched_paths())
    assert kconfig.reads_kconfig_inputs(enable.touched_paths())


@pytest.mark.parametrize(
    ("path", "reads"),
    [
        ("arch/arm64/Kconfig", True),
        ("lib/Kconfig.debug", True),
        ("scripts/Kconfig.include", True),
        ("scripts/cc-version.sh", True),
        ("Makefile", True),
        ("drivers/iommu/Makefile", False),
        ("drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c", False),
        ("Documentation/Kconfig", True),  # conservative: any Kconfig* file
    ],
)
def test_what_kconfig_reads(path: str, reads: bool) -> None:
    assert kconfig.reads_kconfig_inputs([path]) is reads


def _fake_kconfig_tree(tmp_path: Path, config_text: str) -> tuple[list[str], Path, Path, Path]:
    """A tree whose `make *config` and merge_config.sh only count their runs
    and leave `config_text` as the .config."""
    tree, outdir = tmp_path / "tree", tmp_path / "out"
    (tree / "scripts" / "kconfig").mkdir(parents=True)
    outdir.mkdir()
    runs = tmp_path / "runs"
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    merge.write_text(f"#!/bin/sh\necho merge >> {runs}\n")
    make = tmp_path / "make"
    make.write_text(f"#!/bin/sh\necho make >> {runs}\nprintf '%s' '{config_text}' > {outdir}/.config\n")
    for script in (merge, make):
        script.chmod(0o755)
    return [str(make)], tree, outdir, runs


def test_a_resolved_config_is_reused_for_the_same_kconfig_inputs(tmp_path: Path) -> None:
    frag = tmp_path / "pkvm.config"
    frag.write_text("CONFIG_KVM=y\n")
    make, tree, outdir, runs = _fake_kconfig_tree(tmp_path, "CONFIG_KVM=y\n")
    saved = tmp_path / "kconfig" / "key.config"
    log = tmp_path / "log"
    assert kconfig.resolve_config(make, tree, outdir, [frag], log, saved) == "CONFIG_KVM=y\n"
    assert runs.read_text().split() == ["make", "merge", "make"] and saved.read_text() == "CONFIG_KVM=y\n"

    (outdir / ".config").write_text("CONFIG_KVM=n\n")  # another series' config in the O= dir
    assert kconfig.resolve_config(make, tree, outdir, [frag], log, saved) == "CONFIG_KVM=y\n"
    assert runs.read_text().split() == ["make", "merge", "make"]  # no step ran again
    assert (outdir / ".config").read_text() == "CONFIG_KVM=y\n"
    assert f"# .config from {saved}" in log.read_text()


def test_a_reused_config_is_still_checked_for_dropped_options(tmp_path: Path) -> None:
    frag = tmp_path / "pkvm.config"
    frag.write_text("CONFIG_KVM=y\n")
    make, tree, outdir, _ = _fake_kconfig_tree(tmp_path, "")
    saved = tmp_path / "key.config"
    saved.write_text("# CONFIG_KVM is not set\n")
    with pytest.raises(KconfigError, match=r"config option dropped: pkvm.config:1: CONFIG_KVM=y"):
        kconfig.resolve_config(make, tree, outdir, [frag], tmp_path / "log", saved)


def test_a_full_disk_while_unpacking_names_the_errno_whatever_tar_says_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run (make test, 2026-12-03): tar's first line was a short write,
    "Wrote only 6656 of 8358 bytes"; the cause was on a later line."""
    import subprocess

    from harness.errors import SourceError
    from harness.kernel import source

    stderr = (
        "tar: Documentation/power/opp.rst: Wrote only 6656 of 8358 bytes\n"
        "tar: Documentation/power/pci.rst: Cannot write: No space left on device\n"
        "tar: Exiting with failure status due to previous errors\n"
    )
    monkeypatch.setattr(
        subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 2, "", stderr)
    )
    spec = SourceSpec("tarball", str(make_tarball(tmp_path)))
    with pytest.raises(SourceError) as err:
        source._unpack(spec, tmp_path / "dest" / "tree")
    assert str(err.value).endswith(
        "failed: disk full (Documentation/power/pci.rst: Cannot write: No space left on device)"
    )
