"""Fault injection (#11 §4): a full disk during a build, SIGHUP during a
boot. (QEMU killed mid-scenario, a hang, SIGINT/SIGTERM/SIGKILL and launch
failures are in test_verdicts.py and test_lifecycle.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import harness, qemu_pids
from tests.e2e.test_lifecycle import start_boot, wait_for


@pytest.fixture
def tiny_disk(tmp_path: Path) -> object:
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a small tmpfs (CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_during_a_build_is_one_clear_error_and_nothing_half_written_is_served(
    tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKVM_HARNESS_CACHE", str(tiny_disk))
    for _ in range(2):  # the second attempt must not find a half-unpacked source
        run = harness("build", "--target", "mainline-7.3")
        assert run.rc == 2
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("pkvm-harness: error: source debian:linux-source-7.3: unpacking into")
        assert "disk full" in last and "No space left on device" in last
        assert len(run.stderr.strip().splitlines()) < 5  # one error line, not tar's thousands
    sources = tiny_disk / "sources"
    assert not [p for p in sources.iterdir() if p.name not in ("index", ".locks")]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_sighup_during_a_boot_exits_129_and_leaves_no_qemu(tmp_path: Path) -> None:
    proc = start_boot(tmp_path)
    console = tmp_path / "console.log"
    try:
        wait_for(lambda: console.exists() and "PKVM-HARNESS-READY" in console.read_text(), 600)
        ours = qemu_pids(str(tmp_path))
        os.kill(proc.pid, signal.SIGHUP)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 129
    wait_for(lambda: not (qemu_pids() & ours), 10)


def test_sigterm_during_a_build_exits_143_and_the_cache_stays_sound(tmp_path: Path) -> None:
    """Interrupted in the middle of make: no half-written entry is ever
    served, and the next build of the same input completes."""
    import json
    import secrets
    import sys
    import time

    # A fresh one-line series, so that this build really runs make.
    token = secrets.token_hex(8)
    patch = tmp_path / "0001-comment.patch"
    patch.write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: pkvm-harness <pkvm-harness@localhost>\nSubject: [PATCH] kernel: a comment\n\n---\n"
        "diff --git a/kernel/exit.c b/kernel/exit.c\n--- a/kernel/exit.c\n+++ b/kernel/exit.c\n"
        "@@ -1,3 +1,4 @@\n+/* pkvm-harness interrupted-build test "
        + token
        + " */\n // SPDX-License-Identifier: GPL-2.0-only\n"
        " /*\n  *  linux/kernel/exit.c\n"
    )
    argv = [sys.executable, "-m", "harness.cli", "build", "--target", "mainline-7.3", "--series", str(patch)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "make -j" in line:
            time.sleep(3)
            proc.send_signal(signal.SIGTERM)
            break
    assert proc.wait(120) == 143
    again = harness("build", "--target", "mainline-7.3", "--series", str(patch))
    assert again.rc == 0, again.stderr[-1500:]
    info = json.loads(again.stdout)
    assert info["kernel_cached"] is False and Path(info["image"]).stat().st_size > 1 << 20
    third = harness("build", "--target", "mainline-7.3", "--series", str(patch))
    assert json.loads(third.stdout)["kernel_cached"] is True
