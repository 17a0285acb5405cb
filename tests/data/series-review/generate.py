#!/usr/bin/env python3
"""Regenerates the series-review test series from a 7.3.4 tree:

    python3 tests/data/series-review/generate.py /path/to/linux-7.3.4-tree

Each series is real `git format-patch` output against that tree's files, made
in a scratch repository holding just the files it touches. All are NEGATIVE
TEST series for the harness's own tests (series check and bisect)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["kernel/reboot.c", "kernel/panic.c", "kernel/exit.c", "drivers/vfio/vfio_iommu_type1.c"]
UNMAP_NOOP = HERE.parent / "series" / "unmap-noop.patch"

Edit = Callable[[Path], None]


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_DATE": "2026-11-22T00:00:00Z", "GIT_COMMITTER_DATE": "2026-11-22T00:00:00Z"}
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**env, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    ).stdout


def insert_after(path: str, anchor: str, text: str) -> Edit:
    def edit(repo: Path) -> None:
        f = repo / path
        src = f.read_text()
        i = src.index(anchor) + len(anchor)
        f.write_text(src[:i] + text + src[i:])

    return edit


def replace(path: str, old: str, new: str) -> Edit:
    def edit(repo: Path) -> None:
        f = repo / path
        src = f.read_text()
        assert old in src, (path, old)
        f.write_text(src.replace(old, new, 1))

    return edit


def unmap_noop(repo: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "apply", str(UNMAP_NOOP)], check=True)


def comment(path: str, n: int) -> Edit:
    return insert_after(path, "#include", f" /* pkvm-harness series-review test {n}: comment only */")


BROKEN = "\nint pkvm_harness_broken = ;  /* NEGATIVE TEST: does not compile */\n"
UNUSED = "\nstatic void pkvm_harness_unused(void) { }  /* NEGATIVE TEST: a new warning */\n"


def make(name: str, patches: list[tuple[str, list[Edit]]], tree: Path, as_dir: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        git(repo, "init", "-q")
        git(repo, "config", "user.name", "pkvm-harness")
        git(repo, "config", "user.email", "pkvm-harness@localhost")
        for f in FILES:
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tree / f, repo / f)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "base")
        for subject, edits in patches:
            for e in edits:
                e(repo)
            git(repo, "commit", "-q", "-a", "-m", f"{subject}\n\npkvm-harness series-review test data.")
        out = HERE / name
        if as_dir:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            git(repo, "format-patch", "-q", "--zero-commit", "-o", str(out), f"HEAD~{len(patches)}")
        else:
            text = git(repo, "format-patch", "--zero-commit", "--stdout", f"HEAD~{len(patches)}")
            out.write_text(text)


def main(tree: Path) -> None:
    make(
        "build-break-fix",
        [
            ("kernel: reboot: a comment (series-review test)", [comment("kernel/reboot.c", 1)]),
            (
                "kernel: panic: NEGATIVE TEST: does not build",
                [insert_after("kernel/panic.c", "#include <linux/debug_locks.h>\n", BROKEN)],
            ),
            ("kernel: panic: fix the build again", [replace("kernel/panic.c", BROKEN, "\n")]),
        ],
        tree,
        as_dir=True,
    )
    make(
        "new-warning.mbox",
        [
            ("kernel: exit: a comment (series-review test)", [comment("kernel/exit.c", 1)]),
            (
                "kernel: reboot: NEGATIVE TEST: add an unused function",
                [insert_after("kernel/reboot.c", "#include <linux/uaccess.h>\n", UNUSED)],
            ),
            (
                "kernel: reboot: a comment that moves the warning",
                [comment("kernel/reboot.c", 2), comment("kernel/panic.c", 3)],
            ),
        ],
        tree,
        as_dir=False,
    )
    harmless = [
        ("kernel: exit: a comment (series-review test)", [comment("kernel/exit.c", 1)]),
        ("kernel: reboot: a comment (series-review test)", [comment("kernel/reboot.c", 2)]),
        ("kernel: panic: a comment (series-review test)", [comment("kernel/panic.c", 3)]),
    ]
    bad: tuple[str, list[Edit]] = ("vfio/type1: NEGATIVE TEST: unmap never reaches the IOMMU", [unmap_noop])
    tail = [
        ("kernel: exit: another comment", [comment("kernel/exit.c", 5)]),
        ("kernel: reboot: another comment", [comment("kernel/reboot.c", 6)]),
        ("kernel: panic: another comment", [comment("kernel/panic.c", 7)]),
    ]
    make("bisect-dma.mbox", [*harmless, bad, *tail], tree, as_dir=False)
    broken_far = [
        harmless[0],
        (
            "kernel: panic: NEGATIVE TEST: does not build",
            [insert_after("kernel/panic.c", "#include <linux/debug_locks.h>\n", BROKEN)],
        ),
        ("kernel: panic: fix the build again", [replace("kernel/panic.c", BROKEN, "\n")]),
    ]
    make("bisect-dma-unbuildable-far.mbox", [*broken_far, bad, *tail], tree, as_dir=False)
    broken_before: list[tuple[str, list[Edit]]] = [
        harmless[0],
        harmless[1],
        (
            "kernel: panic: NEGATIVE TEST: does not build",
            [insert_after("kernel/panic.c", "#include <linux/debug_locks.h>\n", BROKEN)],
        ),
        (
            "vfio/type1: NEGATIVE TEST: unmap never reaches the IOMMU (and fix the build)",
            [unmap_noop, replace("kernel/panic.c", BROKEN, "\n")],
        ),
    ]
    make("bisect-dma-unbuildable-before.mbox", [*broken_before, *tail], tree, as_dir=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
