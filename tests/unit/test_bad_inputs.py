"""Every bad input gets one line naming the file, option or step, and the
right exit code (2: bad input; 1: a series' own defect). None of these
builds or boots anything: the cache stays empty, and the build and boot
entry points raise if reached."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.cli import main

Case = tuple[str, Callable[[Path], list[str]], int, list[str]]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _one_patch(tmp: Path) -> Path:
    return _write(
        tmp / "one.patch",
        "From: D <d@e>\nSubject: [PATCH] x: one\n\n---\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n"
        "@@ -1 +1 @@\n-a\n+b\n",
    )


def _file(tmp: Path) -> Path:
    return _write(tmp / "a-file", "not a directory\n")


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
        "a lore link without a message-id",
        lambda t: ["build", "--series", "https://lore.kernel.org/all/"],
        2,
        ["--series https://lore.kernel.org/all/: a link without a message-id in it"],
    ),
    (
        "--base without a git URL",
        lambda t: ["build", "--source", str(t), "--base", "main"],
        2,
        ["--base needs --source URL@REF"],
    ),
    (
        "--base with --series (nothing fetched)",
        lambda t: [
            "build",
            "--source",
            f"file://{t}/repo@dev",
            "--base",
            "main",
            "--series",
            str(_one_patch(t)),
        ],
        2,
        ["--base makes the commits BASE..REF the series: drop --series"],
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
    # Options checked by nothing before (issue 18): each one started a build or a boot.
    (
        "--upto beyond the series",
        lambda t: ["build", "--series", str(_one_patch(t)), "--upto", "99"],
        2,
        ["--upto 99: the series has 1 patch (0..1)"],
    ),
    ("--upto negative", lambda t: ["build", "--upto", "-1"], 2, ["--upto -1: must be 0 or more"]),
    ("--upto without a series", lambda t: ["build", "--upto", "1"], 2, ["--upto 1 needs a series"]),
    (
        "--upto with --matrix",
        lambda t: ["run", "--matrix", "smoke", "--upto", "1", "--output", str(t / "o")],
        2,
        ["--matrix takes targets", "drop --upto"],
    ),
    (
        "--upto with series bisect",
        lambda t: ["series", "bisect", "--upto", "1", "--output", str(t / "o"), "boot-health"],
        2,
        ["--upto 1: series bisect walks every patch of the series"],
    ),
    ("-j 0", lambda t: ["build", "-j", "0"], 2, ["--jobs/-j 0: must be at least 1"]),
    (
        "-j -1",
        lambda t: ["run", "-j", "-1", "--output", str(t / "o")],
        2,
        ["--jobs/-j -1: must be at least 1"],
    ),
    (
        "-j not a number",
        lambda t: ["series", "check", "-j", "two", "--output", str(t / "o")],
        2,
        ["--jobs/-j two: not a whole number"],
    ),
    (
        "--retries -1",
        lambda t: ["run", "--retries", "-1", "--output", str(t / "o")],
        2,
        ["--retries -1: must be 0 or more"],
    ),
    (
        "--confirm -1",
        lambda t: ["series", "bisect", "--confirm", "-1", "--output", str(t / "o"), "boot-health"],
        2,
        ["--confirm -1: must be 0 or more"],
    ),
    (
        "--hang-probe 0",
        lambda t: ["run", "--hang-probe", "0", "--output", str(t / "o")],
        2,
        ["--hang-probe 0: must be a number of seconds above 0"],
    ),
    (
        "--hang-timeout nan",
        lambda t: ["run", "--hang-timeout", "nan", "--output", str(t / "o")],
        2,
        ["--hang-timeout nan: not a number"],
    ),
    (
        "--boot-timeout -5 (run)",
        lambda t: ["run", "--boot-timeout", "-5", "--output", str(t / "o")],
        2,
        ["--boot-timeout -5: must be a number of seconds above 0"],
    ),
    (
        "--boot-timeout -5 (boot)",
        lambda t: ["boot", "--boot-timeout", "-5"],
        2,
        ["--boot-timeout -5: must be a number of seconds above 0"],
    ),
    (
        "--boot-stall inf",
        lambda t: ["run", "--boot-stall", "inf", "--output", str(t / "o")],
        2,
        ["--boot-stall inf: must be a number of seconds above 0"],
    ),
    (
        "--shard without --matrix",
        lambda t: ["run", "--shard", "2/4", "--output", str(t / "o")],
        2,
        ["--shard 2/4 needs --matrix"],
    ),
    (
        "series check --profile without --boot",
        lambda t: ["series", "check", "--profile", "nosuch", "--output", str(t / "o")],
        2,
        ["--profile nosuch needs --boot"],
    ),
    (
        "--artifact-url not a URL",
        lambda t: ["lava", "export", "--artifact-url", "not a url", "--output", str(t / "o")],
        2,
        ["--artifact-url not a url: not a URL"],
    ),
    (
        "--artifact-url without a host",
        lambda t: ["lava", "export", "--artifact-url", "https:/lab/x", "--output", str(t / "o")],
        2,
        ["--artifact-url https:/lab/x: not a URL"],
    ),
    (
        "lava export of only what LAVA cannot run",
        lambda t: ["lava", "export", "--scenario", "dma-hotplug", "--output", str(t / "o")],
        2,
        ["lava export: no scenario a LAVA job can run (dma-hotplug: step device-add sends QMP"],
    ),
    (
        "ci generate --shards 0",
        lambda t: ["ci", "generate", "--github", "--shards", "0", "--output", str(t / "c")],
        2,
        ["--shards 0: must be at least 1"],
    ),
    (
        "ci generate --shards -3",
        lambda t: ["ci", "generate", "--gitlab", "--shards", "-3"],
        2,
        ["--shards -3: must be at least 1"],
    ),
    # --output naming a file, or a place nobody can write: in the words `run` uses.
    (
        "merge --output a file",
        lambda t: ["merge", str(t), "--output", str(_file(t))],
        2,
        ["--output ", "a-file: cannot write there: ", "a-file is a file, not a directory"],
    ),
    (
        "series check --output a file",
        lambda t: ["series", "check", "--output", str(_file(t))],
        2,
        ["--output ", "a-file: cannot write there: ", "a-file is a file, not a directory"],
    ),
    (
        "series bisect --output a file",
        lambda t: [
            "series",
            "bisect",
            "--series",
            str(_one_patch(t)),
            "--output",
            str(_file(t)),
            "boot-health",
        ],
        2,
        ["--output ", "a-file: cannot write there: ", "a-file is a file, not a directory"],
    ),
    (
        "boot --output a file",
        lambda t: ["boot", "--output", str(_file(t))],
        2,
        ["--output ", "a-file: cannot write there: ", "a-file is a file, not a directory"],
    ),
    (
        "ci generate --output in a file",
        lambda t: ["ci", "generate", "--gitlab", "--output", str(_file(t) / "x.yml")],
        2,
        ["a-file/x.yml: cannot write there: ", "a-file is a file"],
    ),
    (
        "ci generate --output a directory",
        lambda t: ["ci", "generate", "--gitlab", "--output", str(t)],
        2,
        ["--output ", ": cannot write there: Is a directory"],
    ),
    (
        "lava export --output a file",
        lambda t: ["lava", "export", "--output", str(_file(t))],
        2,
        ["--output ", "a-file: cannot write there: ", "a-file is a file, not a directory"],
    ),
    (
        "report --output under /proc",
        lambda t: ["report", str(t), "--output", "/proc/nope/x.html"],
        2,
        ["--output /proc/nope/x.html: cannot write there"],
    ),
    # Scenario files and names.
    (
        "a step that does nothing",
        lambda t: [
            "run",
            "--output",
            str(t / "o"),
            str(
                _write(
                    t / "s.yaml",
                    "name: s\nsteps:\n  - {name: a, run: x}\n  - name: idle\n    transport: ssh\n",
                )
            ),
        ],
        2,
        ["s.yaml:4: steps.1 (idle): does nothing"],
    ),
    (
        "a scenario name that is a path",
        lambda t: ["run", "--output", str(t / "o"), "../targets/mainline-7.3"],
        2,
        ["scenario '../targets/mainline-7.3': not a name"],
    ),
    (
        "a profile name that is a path",
        lambda t: ["boot", "--profile", "sub/x"],
        2,
        ["profile 'sub/x': not a name"],
    ),
]


class WorkStarted(BaseException):
    """Raised by a build or boot entry point: a bad input got that far.
    Not an Exception, so that main() does not report it as an internal error."""


def forbid_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every build and boot entry point raises WorkStarted."""
    import harness.kernel
    import harness.kernel.build
    import harness.machine.qemu
    import harness.pipeline
    import harness.series.bisect
    import harness.series.check

    def started(*args: object, **kwargs: object) -> None:
        raise WorkStarted

    for module in (
        harness.kernel,
        harness.kernel.build,
        harness.pipeline,
        harness.series.check,
        harness.series.bisect,
    ):
        monkeypatch.setattr(module, "build_kernel", started)
    monkeypatch.setattr(harness.pipeline, "build_all", started)
    monkeypatch.setattr(harness.machine.qemu.QemuMachine, "launch", started)


@pytest.fixture(autouse=True)
def no_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache, and every build and boot entry point raising. After
    the command the cache holds nothing: no source unpacked, nothing built."""
    forbid_work(monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("PKVM_HARNESS_CACHE", str(cache))
    monkeypatch.delenv("PKVM_HARNESS_DATA", raising=False)
    monkeypatch.delenv("PKVM_HARNESS_SOURCES", raising=False)
    yield cache
    assert sorted(cache.iterdir()) == [], "a bad input reached the cache (a build or a fetch started)"


def _main(argv: list[str]) -> int:
    """main() as the shell sees it: argparse's verdict on a value is exit 2 too."""
    try:
        return main(argv)
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


def _one_line(capsys: pytest.CaptureFixture[str], what: str, got: int, rc: int, words: list[str]) -> None:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert got == rc, (what, err[-3:])
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    last = err[-1]
    assert last.startswith("pkvm-harness: error: "), last
    for w in words:
        assert w in last, (what, last)


@pytest.mark.parametrize(("what", "argv", "rc", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    what: str,
    argv: Callable[[Path], list[str]],
    rc: int,
    words: list[str],
) -> None:
    _one_line(capsys, what, _main(argv(tmp_path)), rc, words)


ENV_CASES = [
    (
        "PKVM_HARNESS_SOURCES",
        "/nonexistent/sources",
        ["run", "--output", "OUT"],
        ["PKVM_HARNESS_SOURCES=/nonexistent/sources: no such directory"],
    ),
    (
        "PKVM_HARNESS_DATA",
        "/nonexistent/pkvm-data",
        ["list"],
        ["PKVM_HARNESS_DATA=/nonexistent/pkvm-data: no such directory"],
    ),
    (
        "PKVM_HARNESS_DATA",
        "/nonexistent/pkvm-data",
        ["build"],
        ["PKVM_HARNESS_DATA=/nonexistent/pkvm-data: no such directory"],
    ),
    ("PKVM_HARNESS_CACHE", "/proc/nope", ["build"], ["PKVM_HARNESS_CACHE=/proc/nope: cannot write there"]),
    (
        "PKVM_HARNESS_CACHE",
        "/proc/nope",
        ["series", "check", "--output", "OUT"],
        ["PKVM_HARNESS_CACHE=/proc/nope: cannot write there"],
    ),
]


@pytest.mark.parametrize(
    ("var", "value", "argv", "words"), ENV_CASES, ids=[f"{c[0]}-{c[2][0]}" for c in ENV_CASES]
)
def test_a_bad_environment_variable_is_one_line_before_any_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    var: str,
    value: str,
    argv: list[str],
    words: list[str],
) -> None:
    monkeypatch.setenv(var, value)
    got = _main([str(tmp_path / "o") if a == "OUT" else a for a in argv])
    _one_line(capsys, var, got, 2, words)


def test_the_table_holds_every_input_of_issue_18() -> None:
    """The closing note of issue 18 gives this count."""
    assert len(CASES) + len(ENV_CASES) >= 55


def test_help_names_the_exit_codes_the_defaults_and_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import DEFAULT_TARGET, parser

    p = parser()
    top = p.format_help()
    assert "Command line:" not in top  # the description is about the tool, not the module
    for words in ("exit codes:", "128+N", f"--target {DEFAULT_TARGET}", "PKVM_HARNESS_CACHE", "examples:"):
        assert words in top, words

    def leaves(parser: argparse.ArgumentParser, path: list[str]) -> list[list[str]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [path]
        return [leaf for name, sp in subs[0].choices.items() for leaf in leaves(sp, [*path, name])]

    commands = leaves(p, [])
    assert ["series", "bisect"] in commands and ["lava", "import"] in commands and len(commands) >= 11
    for argv in commands:
        with pytest.raises(SystemExit) as exit:
            p.parse_args([*argv, "--help"])
        assert exit.value.code == 0
        text = capsys.readouterr().out
        assert "examples:\n  pkvm-harness " + argv[0] in text, argv
        sub = p
        for word in argv:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        silent = [a.option_strings or [a.dest] for a in sub._actions if not a.help]
        assert silent == [], (argv, silent)


def test_a_bad_input_leaves_no_output_directory_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "out"
    assert _main(["run", "--output", str(out), "nosuch-scenario"]) == 2
    assert "unknown scenario 'nosuch-scenario'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
