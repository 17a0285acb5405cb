"""Kernel configuration: allnoconfig, fragments merged with the kernel's own
merge_config.sh, olddefconfig, then a check that every option a fragment
asked for has the value it asked for. Kconfig silently drops an option whose
dependencies are unmet; the harness does not."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError, KconfigError
from harness.timeouts import TOOL_S, tool_deadline

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class ConfigRequest:
    option: str
    value: str  # "y", "m", "n", a number or a quoted string
    fragment: Path
    line: int

    def describe(self) -> str:
        want = f"{self.option} is not set" if self.value == "n" else f"{self.option}={self.value}"
        return f"{self.fragment.name}:{self.line}: {want}"


def parse_fragment(path: Path) -> list[ConfigRequest]:
    requests = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if m := _SET.match(line):
            requests.append(ConfigRequest(m.group(1), m.group(2), path, n))
        elif m := _UNSET.match(line):
            requests.append(ConfigRequest(m.group(1), "n", path, n))
        elif not line.startswith("#"):
            raise ConfigError(f"{path}:{n}: not a Kconfig line: {line!r}")
    return requests


def parse_config(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if m := _SET.match(line):
            values[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            values[m.group(1)] = "n"
    return values


def dropped_options(config_text: str, fragments: Sequence[Path]) -> list[ConfigRequest]:
    """Requests whose final value differs. Later fragments override earlier
    ones, as merge_config.sh does, so only the last request per option counts."""
    final: dict[str, ConfigRequest] = {}
    for frag in fragments:
        for req in parse_fragment(frag):
            final[req.option] = req
    values = parse_config(config_text)
    return [r for r in final.values() if values.get(r.option, "n") != r.value]


def reads_kconfig_inputs(paths: Iterable[str]) -> bool:
    """Whether changing `paths` can change what Kconfig resolves: a Kconfig*
    file (they `source` one another), a script under scripts/ (Kconfig's
    $(shell,...) and $(cc-option,...) run them, and scripts/kconfig is
    Kconfig itself), or the top-level Makefile (the version in the .config
    header)."""
    return any(
        Path(path).name.startswith("Kconfig") or path.startswith("scripts/") or path == "Makefile"
        for path in paths
    )


def resolve_config(
    make: Sequence[str],
    tree: Path,
    outdir: Path,
    fragments: Sequence[Path],
    log: Path,
    saved: Path | None = None,
) -> str:
    """Run allnoconfig + merge_config.sh + olddefconfig in `outdir` and return
    the verified .config text. `saved`: where the .config of these very
    Kconfig inputs (source, fragments, toolchain) is kept: reused when there,
    written when not. The three steps cost ~9 s on this machine, more than
    the compile of a typical one-file negative series."""
    config = outdir / ".config"
    if saved is not None and saved.is_file():
        text = saved.read_text()
        with log.open("a") as out:
            out.write(f"# .config from {saved} (the same Kconfig inputs, resolved before)\n")
        # Untouched when equal: a newer .config makes kbuild sync again.
        if not config.is_file() or config.read_text() != text:
            config.write_text(text)
    else:
        _run_config_steps(make, tree, outdir, fragments, log)
        text = config.read_text()
    dropped = dropped_options(text, fragments)
    if dropped:
        got = parse_config(text)
        first = dropped[0]
        more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
        raise KconfigError(
            f"config option dropped: {first.describe()} but .config has"
            f" {first.option}={got.get(first.option, 'n')}: {why_dropped(tree, first.option)}{more}"
        )
    if saved is not None and not saved.is_file():
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_name(f".{saved.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, saved)  # whole or absent, for a concurrent reader
    return text


def _run_config_steps(
    make: Sequence[str], tree: Path, outdir: Path, fragments: Sequence[Path], log: Path
) -> None:
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    config = outdir / ".config"
    steps: list[tuple[str, list[str]]] = [
        ("allnoconfig", [*make, "allnoconfig"]),
        ("merge_config.sh", [str(merge), "-m", "-O", str(outdir), str(config), *map(str, fragments)]),
        ("olddefconfig", [*make, "olddefconfig"]),
    ]
    with log.open("a") as out:
        for name, argv in steps:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            with tool_deadline(KconfigError, f"kconfig step {name} (see {log})"):
                result = subprocess.run(argv, cwd=tree, stdout=out, stderr=subprocess.STDOUT, timeout=TOOL_S)
            if result.returncode != 0:
                raise KconfigError(f"kconfig step {name} failed (see {log})")


_ENTRY = re.compile(r"^\s*(?:menu)?config\s+(\S+)\s*$")
_DEPENDS = re.compile(r"^\s*depends\s+on\s+(.+?)\s*$")


def why_dropped(tree: Path, option: str) -> str:
    """Why Kconfig refused an option: the symbol does not exist in this
    source at all (it may come with a patch series), or its entry's
    `depends on` lines, named with the Kconfig file and line."""
    symbol = option.removeprefix("CONFIG_")
    for kconfig in sorted(tree.rglob("Kconfig*")):
        if not kconfig.is_file():
            continue
        lines = kconfig.read_text(errors="replace").splitlines()
        for n, line in enumerate(lines):
            m = _ENTRY.match(line)
            if m is None or m[1] != symbol:
                continue
            depends = []
            for follow in lines[n + 1 :]:
                if _ENTRY.match(follow) or re.match(r"^\s*(?:endmenu|endif|menu|if|choice|source)\b", follow):
                    break
                if d := _DEPENDS.match(follow):
                    depends.append(d[1])
            where = f"{kconfig.relative_to(tree)}:{n + 1}"
            if depends:
                expr = " && ".join(f"({d})" if "||" in d else d for d in depends)
                return f"unmet dependency: {symbol} ({where}) depends on {expr}"
            return f"{symbol} ({where}) has no 'depends on': look at its 'select'/'if' context"
    return f"this kernel source has no symbol {symbol} (no Kconfig entry: does it come with a patch series?)"
