"""The command line's values and rules, checked before any work starts.

Two kinds of check live here, each in one place:
- argparse `type=` callables for one value (a count, a duration, a URL),
  whose error argparse reports as one line through `Parser.error`;
- `check_args`, the rules between options and the places a command writes
  to, called by the dispatcher before the command runs; `check_series`,
  the series read and --upto held against its length, called once the
  target is known and before anything builds.

Every failure is one line naming the option and the value, exit code 2.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from harness import paths
from harness.config.models import Target
from harness.errors import ConfigError, HarnessError
from harness.kernel.remote import is_git_url

# Marks a message of the types below: `Parser.error` puts the option's name
# in front of the value ("-j/--jobs 0: must be at least 1").
_VALUE = "\x1f"


def _number(value: str, kind: type[int] | type[float]) -> float:
    try:
        number = kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{_VALUE}{value}: not {what}") from None
    if kind is float and number != number:  # NaN compares false with everything
        raise argparse.ArgumentTypeError(f"{_VALUE}{value}: not a number")
    return number


def positive_int(value: str) -> int:
    """A count of at least 1 (-j, --shards)."""
    number = int(_number(value, int))
    if number < 1:
        raise argparse.ArgumentTypeError(f"{_VALUE}{value}: must be at least 1")
    return number


def non_negative_int(value: str) -> int:
    """A count that may be 0 (--retries, --confirm, --upto)."""
    number = int(_number(value, int))
    if number < 0:
        raise argparse.ArgumentTypeError(f"{_VALUE}{value}: must be 0 or more")
    return number


def positive_float(value: str) -> float:
    """A time in seconds, more than 0 (--boot-timeout, --hang-probe ...)."""
    number = _number(value, float)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{_VALUE}{value}: must be a number of seconds above 0")
    return number


def url(value: str) -> str:
    """An absolute URL: a scheme and, but for file:, a host."""
    parts = urlsplit(value)
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", parts.scheme) or not (parts.netloc or parts.scheme == "file"):
        raise argparse.ArgumentTypeError(
            f"{_VALUE}{value}: not a URL (e.g. https://lab.example.org/artifacts or file:///srv/artifacts)"
        )
    if any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(f"{_VALUE}{value}: a URL has no spaces (write them %20)")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, with a bad option answered in one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        named = re.match(rf"argument (?P<option>[^:]+): {_VALUE}(?P<rest>.*)", message, re.DOTALL)
        if named:
            message = f"{named['option']} {named['rest']}"
        message = message.replace(_VALUE, "")
        if message.startswith("argument "):
            message = message[len("argument ") :]
        self.exit(2, f"pkvm-harness: error: {message} (see {self.prog} --help)\n")


def writable_dir(path: Path, option: str = "--output") -> None:
    """`path` is (or can be made) a directory this process writes in; it is
    not made here (the command makes it when it writes)."""
    why = paths.unwritable(path)
    if why is not None:
        raise HarnessError(f"{option} {path}: cannot write there: {why}")


def writable_file(path: Path, option: str = "--output") -> None:
    """`path` names a file (not a directory) in a directory this process
    writes in; that directory is made if missing (the command writes the
    file there next)."""
    why = "Is a directory" if path.is_dir() else paths.unwritable(path.parent)
    if why is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or str(exc)
    if why is not None:
        raise HarnessError(f"{option} {path}: cannot write there: {why}")


# What each command writes: a directory (`dir`) or a file (`file`) named by
# --output, and whether it uses the cache (kernels, images, sources).
_WRITES: dict[tuple[str, ...], tuple[str | None, bool]] = {
    ("list",): (None, False),
    ("build",): (None, True),
    ("boot",): ("dir", True),
    ("run",): ("dir", True),
    ("report",): ("file", False),
    ("merge",): ("dir", False),
    ("ci", "generate"): ("file", False),
    ("lava", "export"): ("dir", True),
    ("lava", "import"): ("dir", False),
    ("series", "check"): ("dir", True),
    ("series", "bisect"): ("dir", True),
}


def command(args: argparse.Namespace) -> tuple[str, ...]:
    """The (sub)command as typed: ("series", "check"), ("run",) ..."""
    sub = {"ci": "ci_cmd", "lava": "lava_cmd", "series": "series_cmd"}.get(args.cmd)
    return (args.cmd, getattr(args, sub)) if sub else (args.cmd,)


def check_args(args: argparse.Namespace) -> None:
    """The rules between options, the environment, and the places a command
    writes: all before the command starts any work."""
    name = command(args)
    paths.data_search_path()  # PKVM_HARNESS_DATA names a directory
    if getattr(args, "shard", None) and not getattr(args, "matrix", None):
        raise ConfigError(f"--shard {args.shard} needs --matrix (a matrix is what is cut into shards)")
    if getattr(args, "matrix", None) and getattr(args, "upto", None) is not None and name == ("run",):
        raise ConfigError("--matrix takes targets, profiles and scenarios from its file: drop --upto")
    others = ("series", "source", "scenarios", "profile", "against_base")
    if name == ("run",) and args.matrix and any(getattr(args, o) for o in others):
        raise ConfigError("--matrix takes targets, profiles and scenarios from its file: drop the others")
    if getattr(args, "base", None) is not None:
        if not (args.source and is_git_url(args.source)):
            raise ConfigError("--base needs --source URL@REF (a git repository to take BASE..REF from)")
        if args.series:
            raise ConfigError("--base makes the commits BASE..REF the series: drop --series")
    if name[0] == "series" and args.upto is not None:
        raise ConfigError(
            f"--upto {args.upto}: series {name[1]} walks every patch of the series: drop --upto"
        )
    if name == ("series", "check") and args.profile and not args.boot:
        raise ConfigError(f"--profile {args.profile[0]} needs --boot (series check boots only with --boot)")
    writes, uses_cache = _WRITES.get(name, (None, False))
    output = getattr(args, "output", None)
    if output is not None and writes == "dir":
        writable_dir(Path(output))
    elif output is not None and writes == "file":
        writable_file(Path(output))
    if uses_cache:
        paths.check_cache()
        paths.source_dir()  # PKVM_HARNESS_SOURCES, if set, names a directory


def check_series(upto: int | None, target: Target, against_base: bool = False) -> None:
    """The target's series reads (no gap, no missing file), --upto K is a
    prefix of it, and --against-base has one: checked once the series is
    known, before anything builds."""
    if upto is not None and target.series is None:
        raise ConfigError(f"--upto {upto} needs a series (--series, or a target with a series:)")
    if against_base and target.series is None:
        raise ConfigError("--against-base needs a series (--series or the target's series:)")
    if target.series is None:
        return
    from harness.kernel.series import load_series

    count = len(load_series(target.series).patches)
    if upto is not None and upto > count:
        patches = "patch" if count == 1 else "patches"
        raise ConfigError(f"--upto {upto}: the series has {count} {patches} (0..{count})")
