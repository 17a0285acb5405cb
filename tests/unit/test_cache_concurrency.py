"""Two processes that want the same artifact at once build it once, and both
get the complete entry (the lock + stage + rename protocol build.py and the
image stage use); a builder that dies midway leaves nothing that is served."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.cache import ContentStore

WORKER = r"""
import sys, time
from pathlib import Path
from harness.cache import ContentStore
store, key, log = ContentStore(Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3])
with store.lock(key):
    if store.get(key) is None:
        with log.open("a") as f:
            f.write("built\n")
        with store.stage(key) as stage:
            (stage / "Image").write_bytes(b"x" * 1_000_000)
            time.sleep(1.0)  # a slow build: the other process must wait, not build
            if sys.argv[4] == "die":
                raise SystemExit("killed midway")
entry = store.get(key)
print(entry and (entry / "Image").stat().st_size)
"""


def run_workers(root: Path, log: Path, modes: list[str]) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), "k", str(log), mode], stdout=subprocess.PIPE, text=True
        )
        for mode in modes
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, ""))
    return out


def test_two_concurrent_builds_of_one_artifact_build_it_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    results = run_workers(tmp_path / "store", log, ["ok", "ok"])
    assert log.read_text() == "built\n"
    assert [r.stdout.strip() for r in results] == ["1000000", "1000000"]


def test_a_build_that_dies_midway_leaves_no_entry(tmp_path: Path) -> None:
    log = tmp_path / "log"
    (died,) = run_workers(tmp_path / "store", log, ["die"])
    assert died.returncode != 0
    store = ContentStore(tmp_path / "store")
    assert store.get("k") is None
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".stage-")]
    # The next build does the work again and is served complete.
    (ok,) = run_workers(tmp_path / "store", log, ["ok"])
    assert ok.stdout.strip() == "1000000" and log.read_text() == "built\nbuilt\n"


def test_waiting_for_a_lock_is_said_at_once_and_repeated_with_its_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: while another process holds a build's lock, the command says
    what it waits for and who holds it, at once and every WAIT_REPORT_S."""
    import harness.cache

    monkeypatch.setattr(harness.cache, "WAIT_REPORT_S", 0.3)
    store = ContentStore(tmp_path / "store")
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store.lock("k"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    threading.Timer(1.0, release.set).start()
    start = time.monotonic()
    with store.lock("k", what="another build of tiny", stage="kernel"):
        waited = time.monotonic() - start
    thread.join(10)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "waiting" in ln]
    assert waited >= 0.9
    assert len(lines) >= 3, lines  # at once, then every 0.3 s of about 1 s
    assert re.fullmatch(
        rf"\[kernel\] waiting for another build of tiny"
        rf" \(lock held by pid {os.getpid()} since \d\d:\d\d:\d\d\)",
        lines[0],
    ), lines[0]


def test_a_free_lock_is_taken_without_a_word(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ContentStore(tmp_path / "store")
    with store.lock("k", what="another build of tiny"):
        pass
    with store.lock("k", what="another build of tiny"):
        pass
    assert capsys.readouterr().err == ""
