"""The kernel build's progress line is true (issue 18): an estimate of the
steps left only for a full build, from the last full build of that O=
directory; an incremental build, whose make runs an unknown few steps, has
no ETA (it once said 256 minutes for a build that took 14 s)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness import timeouts
from harness.errors import BuildError
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


def test_a_make_that_goes_silent_is_killed_naming_the_silence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel build has no total deadline, but a make that stops printing
    (waiting forever on something) is killed after MAKE_SILENCE_S."""
    monkeypatch.setattr(timeouts, "MAKE_SILENCE_S", 1.0)
    hung = ["sh", "-c", "echo '  CC      drivers/iommu/foo.o'; exec sleep 600"]
    started = time.monotonic()
    with pytest.raises(BuildError, match=r"^kernel build hung: make printed nothing for 1s and was killed"):
        _run_make(hung, tmp_path, tmp_path / "build.log", None)
    assert time.monotonic() - started < 60  # not the sleep's 600 s


def test_make_reads_nothing_from_the_harness_stdin(tmp_path: Path) -> None:
    """kconfig asks about a symbol without a value; from a terminal that is a
    wait forever, from /dev/null the default. Here the harness's own fd 0
    has an answer waiting: make must not see it."""
    reads = ["sh", "-c", "if read -r a; then echo \"  CC      got-$a\"; else echo '  CC      eof'; fi"]
    r, w = os.pipe()
    os.write(w, b"yes\n")
    os.close(w)
    saved = os.dup(0)
    try:
        os.dup2(r, 0)
        _run_make(reads, tmp_path, tmp_path / "build.log", None)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)
    log = (tmp_path / "build.log").read_text()
    assert "  CC      eof" in log and "got-yes" not in log
