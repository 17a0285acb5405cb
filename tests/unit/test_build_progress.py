"""The kernel build's progress line is true (issue 18): an estimate of the
steps left only for a full build, from the last full build of that O=
directory; an incremental build, whose make runs an unknown few steps, has
no ETA (it once said 256 minutes for a build that took 14 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.kernel.build import STEPS_FILE, _expected_steps, _run_make


def test_a_full_build_is_estimated_from_the_last_full_build(tmp_path: Path) -> None:
    assert _expected_steps(tmp_path) == (True, None)  # never built here: nothing to go by
    (tmp_path / STEPS_FILE).write_text("1667")
    assert _expected_steps(tmp_path) == (True, 1667)


def test_an_incremental_build_has_no_estimate(tmp_path: Path) -> None:
    (tmp_path / STEPS_FILE).write_text("1667")
    (tmp_path / "vmlinux").write_bytes(b"")
    assert _expected_steps(tmp_path) == (False, None)


@pytest.mark.parametrize(("expected", "eta"), [(None, False), (10, True)])
def test_the_progress_line_gives_an_eta_only_with_an_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], expected: int | None, eta: bool
) -> None:
    fake_make = ["sh", "-c", "echo '  CC      drivers/iommu/foo.o'"]
    assert _run_make(fake_make, tmp_path, tmp_path / "build.log", expected) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "drivers/iommu/foo.o" in line
    assert ("ETA" in line) == eta, line
    assert ("/10 " in line) == eta, line
