"""Every bad input gets one line naming the file, option or step, and the
right exit code (2: bad input; 1: a series' own defect). None of these
builds or boots anything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.cli import main

Case = tuple[str, Callable[[Path], list[str]], int, list[str]]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mbox_missing_patch(tmp: Path) -> Path:
    mail = (
        "From 0 Mon Sep 17 00:00:00 2001\nFrom: D <d@e>\nSubject: [PATCH {n}/3] x: part {n}\n\n"
        "---\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"
    )
    return _write(tmp / "gap.mbox", mail.format(n=1) + mail.format(n=3))


CASES: list[Case] = [
    ("unknown target", lambda t: ["build", "--target", "nope"], 2, ["unknown target 'nope'"]),
    ("unknown profile", lambda t: ["boot", "--profile", "nope"], 2, ["unknown profile 'nope'"]),
    (
        "unknown scenario",
        lambda t: ["run", "--output", str(t / "o"), "nope"],
        2,
        ["unknown scenario 'nope'"],
    ),
    (
        "malformed target YAML",
        lambda t: ["build", "--target", str(_write(t / "t.yaml", "name: x\nsource: [\n"))],
        2,
        ["t.yaml:3:", "invalid YAML"],
    ),
    (
        "unknown key in a target",
        lambda t: [
            "build",
            "--target",
            str(
                _write(
                    t / "t.yaml",
                    "name: x\nsource: {debian: linux-source-7.3}\nfragments: [base]\nfragmnts: []\n",
                )
            ),
        ],
        2,
        ["t.yaml:1", "Additional properties are not allowed ('fragmnts'"],
    ),
    (
        "missing fragment",
        lambda t: [
            "build",
            "--target",
            str(
                _write(t / "t.yaml", "name: x\nsource: {debian: linux-source-7.3}\nfragments: [base, nope]\n")
            ),
        ],
        2,
        ["t.yaml:3: fragment 'nope' not found"],
    ),
    (
        "target name that is a path",
        lambda t: [
            "build",
            "--target",
            str(
                _write(
                    t / "t.yaml", "name: ../../etc\nsource: {debian: linux-source-7.3}\nfragments: [base]\n"
                )
            ),
        ],
        2,
        ["t.yaml:1: name: '../../etc' does not match"],
    ),
    (
        "missing --source",
        lambda t: ["build", "--source", str(t / "none")],
        2,
        ["--source", "not a git work tree"],
    ),
    (
        "missing --series",
        lambda t: ["build", "--series", str(t / "none.mbox")],
        2,
        ["--series", "none.mbox"],
    ),
    (
        "a series with a gap",
        lambda t: ["build", "--series", str(_mbox_missing_patch(t))],
        2,
        ["patch 2/3 is missing (have 1, 3)"],
    ),
    (
        "unwritable --output",
        lambda t: ["run", "--output", "/proc/pkvm-harness-out", "boot-health"],
        2,
        ["--output /proc/pkvm-harness-out: cannot write there"],
    ),
    (
        "bad --shard",
        lambda t: ["run", "--matrix", "smoke", "--shard", "3/2", "--output", str(t / "o")],
        2,
        ["--shard 3/2: need 1 <= I <= N"],
    ),
    (
        "--matrix with --series",
        lambda t: ["run", "--matrix", "smoke", "--series", "x", "--output", str(t / "o")],
        2,
        ["--matrix takes targets, profiles and scenarios from its file"],
    ),
    (
        "--against-base without a series",
        lambda t: ["run", "--against-base", "--output", str(t / "o"), "boot-health"],
        2,
        ["--against-base needs a series"],
    ),
    (
        "an event-name typo in a scenario",
        lambda t: [
            "run",
            "--output",
            str(t / "o"),
            str(
                _write(
                    t / "s.yaml", "name: s\nforbid_events: [oops, hyp-panik]\nsteps:\n  - {name: a, run: x}\n"
                )
            ),
        ],
        2,
        ["s.yaml:2: forbid_events.1: unknown event 'hyp-panik' (did you mean 'hyp-panic'?)"],
    ),
    (
        "merge of something that is not a results directory",
        lambda t: ["merge", str(t), "--output", str(t / "m")],
        2,
        ["results.json: cannot read"],
    ),
    (
        "bisect without a series",
        lambda t: ["series", "bisect", "--output", str(t / "b"), "boot-health"],
        2,
        ["series bisect: no series given"],
    ),
]


@pytest.mark.parametrize(("what", "argv", "rc", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    what: str,
    argv: Callable[[Path], list[str]],
    rc: int,
    words: list[str],
) -> None:
    got = main(argv(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert got == rc, (what, err[-3:])
    last = err[-1]
    assert last.startswith("pkvm-harness: error: "), last
    for w in words:
        assert w in last, (what, last)
