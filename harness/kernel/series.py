"""Patch series: an mbox, a directory of patches (quilt `series` order if
present), or a b4 message-id. Applied with `git am`, one commit per patch, so
that per-patch checks and bisect can walk the series later."""

from __future__ import annotations

import email
import email.header
import email.policy
import mailbox
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import paths, ui
from harness.cache import digest
from harness.config.models import SeriesSpec
from harness.errors import PatchError
from harness.kernel.gitutil import git

_SUBJECT_PREFIX = re.compile(r"^\s*(\[[^\]]*\]\s*)+")


@dataclass(frozen=True)
class Patch:
    index: int  # 1-based position in the series
    subject: str
    origin: str  # file name, or "mbox message N"
    data: bytes
    is_mail: bool  # git-format-patch mail (git am) or a bare diff (git apply)


@dataclass(frozen=True)
class PatchSeries:
    spec: SeriesSpec
    patches: tuple[Patch, ...]

    @property
    def identity(self) -> str:
        return digest(["series-v1", *(p.data for p in self.patches)])

    def describe(self, patch: Patch) -> str:
        return f"patch {patch.index}/{len(self.patches)} '{patch.subject}' ({patch.origin})"


def _clean_subject(raw: str) -> str:
    text = str(email.header.make_header(email.header.decode_header(raw)))
    return _SUBJECT_PREFIX.sub("", " ".join(text.split())) or "(no subject)"


def _has_diff(data: bytes) -> bool:
    return b"\ndiff --git " in data or (b"\n--- " in data and b"\n+++ " in data)


def _from_mail_bytes(index: int, origin: str, data: bytes) -> Patch:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    subject = msg.get("Subject")
    if subject is None:  # a bare diff, e.g. from quilt
        return Patch(index, Path(origin).stem, origin, data, is_mail=False)
    return Patch(index, _clean_subject(subject), origin, data, is_mail=True)


def _load_mbox(path: Path, spec: SeriesSpec) -> list[Patch]:
    if not path.is_file():
        raise PatchError(f"series {spec.describe()}: no such mbox file")
    box = mailbox.mbox(str(path), create=False)
    patches: list[Patch] = []
    for n, key in enumerate(box.keys(), start=1):
        data = box.get_bytes(key, from_=True)
        if not _has_diff(data):
            continue  # a cover letter or a reply
        patches.append(_from_mail_bytes(len(patches) + 1, f"{path.name} message {n}", data))
    return patches


def _load_dir(path: Path, spec: SeriesSpec) -> list[Patch]:
    if not path.is_dir():
        raise PatchError(f"series {spec.describe()}: no such directory")
    order_file = path / "series"
    if order_file.is_file():
        names = [
            line.split("#")[0].split()[0]
            for line in order_file.read_text().splitlines()
            if line.split("#")[0].strip()
        ]
    else:
        names = sorted(p.name for p in path.iterdir() if p.suffix in (".patch", ".diff"))
    patches = []
    for i, name in enumerate(names, start=1):
        file = path / name
        if not file.is_file():
            raise PatchError(f"series {spec.describe()}: {order_file}: {name} not found")
        patches.append(_from_mail_bytes(i, name, file.read_bytes()))
    return patches


def _fetch_b4(msgid: str, spec: SeriesSpec) -> Path:
    """b4 needs the network; the fetched mbox is kept so rebuilds work offline."""
    cached = paths.cache_root() / "b4" / f"{digest([msgid])[:16]}.mbx"
    if cached.exists():
        return cached
    if shutil.which("b4") is None:
        raise PatchError(f"series {spec.describe()}: b4 is not installed (pip install b4)")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["b4", "-q", "am", "-o", tmp, "-n", "series", msgid],
            capture_output=True,
            text=True,
        )
        mbx = Path(tmp) / "series.mbx"
        if result.returncode != 0 or not mbx.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PatchError(f"series {spec.describe()}: b4 could not fetch it: {last}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mbx, cached)
    return cached


def load_series(spec: SeriesSpec) -> PatchSeries:
    if spec.kind == "mbox":
        patches = _load_mbox(Path(spec.location), spec)
    elif spec.kind == "dir":
        patches = _load_dir(Path(spec.location), spec)
    else:
        patches = _load_mbox(_fetch_b4(spec.location, spec), spec)
    if not patches:
        raise PatchError(f"series {spec.describe()}: contains no patches")
    return PatchSeries(spec, tuple(patches))


_FAILED_FILE = re.compile(
    r"^error: (?:patch failed: (?P<a>[^:\s]+):\d+"
    r"|(?P<b>\S+): (?:patch does not apply|does not exist in index|already exists in index)"
    r"|could not apply .*? to (?P<c>\S+))"
    r"|^Checking patch (?P<d>\S+)\.\.\.\nerror:",
    re.MULTILINE,
)


def _conflicting_files(output: str) -> list[str]:
    files: list[str] = []
    for m in _FAILED_FILE.finditer(output):
        name = next(g for g in m.groups() if g)
        if name not in files:
            files.append(name)
    return files


def _apply_one(tree: Path, series: PatchSeries, patch: Patch, scratch: Path) -> None:
    file = scratch / f"{patch.index:04d}.patch"
    file.write_bytes(patch.data)
    if patch.is_mail:
        result = git(tree, "am", "--keep-cr", "--no-3way", str(file), check=False)
    else:
        result = git(tree, "apply", "--index", str(file), check=False)
        if result.returncode == 0:
            result = git(tree, "commit", "-q", "--no-verify", "-m", patch.subject, check=False)
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    if patch.is_mail:
        git(tree, "am", "--abort", check=False)
    files = _conflicting_files(output)
    where = f"conflicts in {', '.join(files)}" if files else _last_error(output)
    raise PatchError(f"{series.describe(patch)} does not apply: {where}")


def _last_error(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith(("error:", "fatal:"))]
    return (lines or output.strip().splitlines() or ["git failed"])[-1]


BASE_TAG = "harness-base"


def _branch(series: PatchSeries) -> str:
    return f"harness/series-{series.identity[:16]}"


def checkout(tree: Path, series: PatchSeries | None) -> str:
    """Check out the base, or base + series (one commit per patch, applied
    once and kept as a branch), in the source's shared work tree; returns
    the commit. The caller holds the source lock: the work tree is shared
    by every build of this source, which is what lets make and ccache
    rebuild only what a series changes (and what per-patch checks and
    bisect need later)."""
    if git(tree, "rev-parse", "-q", "--verify", f"refs/tags/{BASE_TAG}", check=False).returncode:
        root = git(tree, "rev-list", "--max-parents=0", "HEAD").stdout.split()[0]
        git(tree, "tag", BASE_TAG, root)
    if series is None:
        git(tree, "checkout", "-q", "-f", "--detach", BASE_TAG)
        return git(tree, "rev-parse", "HEAD").stdout.strip()
    branch = _branch(series)
    if git(tree, "rev-parse", "-q", "--verify", f"refs/heads/{branch}", check=False).returncode == 0:
        git(tree, "checkout", "-q", "-f", branch)
        return git(tree, "rev-parse", "HEAD").stdout.strip()
    ui.info("kernel", f"applying {len(series.patches)} patches ({series.spec.describe()})")
    work = f"{branch}-applying"
    git(tree, "checkout", "-q", "-f", "-B", work, BASE_TAG)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for patch in series.patches:
                _apply_one(tree, series, patch, Path(scratch))
    except BaseException:
        git(tree, "am", "--abort", check=False)
        git(tree, "checkout", "-q", "-f", "--detach", BASE_TAG)
        git(tree, "branch", "-D", work, check=False)
        raise
    # Only a fully applied series gets its final name.
    git(tree, "branch", "-M", work, branch)
    return git(tree, "rev-parse", "HEAD").stdout.strip()
