"""A series that does not apply is the series' FAIL (exit 1), said in the
line `build` gives (the patch and where), before anything builds or boots:
by `run` and by `series bisect` (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from tests.unit.test_bad_inputs import WorkStarted, forbid_work
from tests.unit.test_kernel_stage import make_tarball

STALE = """From 1111111111111111111111111111111111111111 Mon Sep 17 00:00:00 2001
From: Dev <dev@example.org>
Date: Mon, 1 Jan 2024 00:00:00 +0000
Subject: [PATCH] iommu: stale

---
 drivers/iommu/foo.c | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/drivers/iommu/foo.c b/drivers/iommu/foo.c
--- a/drivers/iommu/foo.c
+++ b/drivers/iommu/foo.c
@@ -1,3 +1,3 @@
 int a;
-int zzz;
+int y;
 int c;
--
2.39.5

"""


@pytest.fixture
def tiny_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tarball = make_tarball(tmp_path)
    target = tmp_path / "tiny.yaml"
    target.write_text(f"name: tiny\nsource: {{tarball: {tarball}}}\nfragments: [base]\n")
    monkeypatch.setenv("PKVM_HARNESS_CACHE", str(tmp_path / "cache"))

    forbid_work(monkeypatch)
    return target


LINE = (
    "pkvm-harness: FAIL: patch 1/1 'iommu: stale' (0001-stale.patch message 1)"
    " does not apply: conflicts in drivers/iommu/foo.c"
)


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--output", "OUT", "boot-health"],
        ["run", "--against-base", "--output", "OUT", "boot-health"],
        ["series", "bisect", "--output", "OUT", "boot-health"],
    ],
    ids=["run", "run --against-base", "series bisect"],
)
def test_a_series_that_does_not_apply_is_its_fail_before_any_build(
    tmp_path: Path, tiny_target: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    bad = tmp_path / "0001-stale.patch"
    bad.write_text(STALE)
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in command]
    rc = main([*argv, "--target", str(tiny_target), "--series", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1, err[-3:]
    assert err[-1] == LINE
    assert not (tmp_path / "cache" / "kernels").exists()
    assert not (out / "results.json").exists() and not (out / "bisect.json").exists()


def test_a_series_that_applies_goes_on_to_the_build(
    tmp_path: Path, tiny_target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "0001-good.patch"
    good.write_text(STALE.replace("-int zzz;", "-int b;"))
    with pytest.raises(WorkStarted):
        main(
            [
                "run",
                "--target",
                str(tiny_target),
                "--series",
                str(good),
                "--output",
                str(tmp_path / "o"),
                "boot-health",
            ]
        )


def test_series_check_says_which_patch_does_not_apply_before_any_build(
    tmp_path: Path, tiny_target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """series check still checks the patches before the one that does not
    apply (its report is per patch), but says that one first."""
    bad = tmp_path / "0001-stale.patch"
    bad.write_text(STALE)
    with pytest.raises(WorkStarted):  # the base build, after the line
        main(
            [
                "series",
                "check",
                "--target",
                str(tiny_target),
                "--series",
                str(bad),
                "--output",
                str(tmp_path / "o"),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        "[series] patch 1/1 'iommu: stale' (0001-stale.patch message 1)"
        " does not apply: conflicts in drivers/iommu/foo.c: checking the patches before it"
    ) in err
