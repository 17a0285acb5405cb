"""Patch series: what reviewers have at hand, read into one commit per patch
(applied with `git am`, so that per-patch checks and bisect can walk the
series later).

--series may be:
- an mbox: as `b4 am` writes it, or a raw thread as a list archive (lore)
  serves it, with its cover letter, replies and patches in any order;
- a directory of `git format-patch` files, or a quilt directory (its
  `series` file gives the order);
- a single patch file of any form: a format-patch mail, a mail saved from
  a mail client (no mbox `From ` line), or a bare `git diff`;
- a message-id, fetched with b4.
A file is told apart by its content, not its name."""

from __future__ import annotations

import email
import email.errors
import email.policy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

from harness import paths, ui
from harness.cache import digest
from harness.config.models import SeriesSpec
from harness.errors import ConfigError, PatchError
from harness.kernel.gitutil import GIT_ENV, git
from harness.timeouts import TOOL_S, tool_deadline

_SUBJECT_PREFIX = re.compile(r"^\s*(\[[^\]]*\]\s*)+")
# "Re:", and its translations some mail clients put in instead.
_REPLY = re.compile(r"^\s*(re|aw|sv|vs|antw)(\[\d+\])?\s*:", re.IGNORECASE)
# Inside the subject's [...] tags: "v2" (also "PATCHv2") and "3/5".
_TAG_VERSION = re.compile(r"(?:\b|PATCH)v(\d+)\b", re.IGNORECASE)
_TAG_NUMBER = re.compile(r"\b(\d+)/(\d+)\b")
_DIFF = re.compile(r"^(?:diff --git |--- [^\n]*\n\+\+\+ )", re.MULTILINE)
_BASE_COMMIT = re.compile(r"^base-commit: *([0-9a-f]{7,40})\s*$", re.MULTILINE)
# mboxrd: a body line "From ..." is stored as ">From ...", ">From " as
# ">>From " and so on; the escape is undone on reading, so it is lossless.
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)
# public-inbox (lore) and `b4 mbox` mark their mboxrd files with this
# separator; `git format-patch` and `b4 am` write mboxes that escape nothing.
_MBOXRD_MARK = b"From mboxrd@z "


@dataclass(frozen=True)
class Patch:
    index: int  # 1-based position in the series
    subject: str
    origin: str  # file name, or "mbox message N"
    data: bytes  # a mail in mboxrd form (git am --patch-format=mboxrd), or a bare diff
    is_mail: bool  # git-format-patch mail (git am) or a bare diff (git apply)
    number: int | None = None  # M of "[PATCH vN M/T]" when the subject numbers it
    author: str | None = None  # the mail's From: header
    message_id: str | None = None  # without the <>


# The paths a diff names: git's "diff --git a/X b/Y" header, or the "---"
# and "+++" lines of a bare diff (/dev/null for a created or deleted file
# never matches "a/" or "b/").
_DIFF_PATH = re.compile(rb"^(?:diff --git a/(\S+) b/(\S+)|--- a/(\S+)|\+\+\+ b/(\S+))", re.MULTILINE)


@dataclass(frozen=True)
class PatchSeries:
    spec: SeriesSpec
    patches: tuple[Patch, ...]
    cover_subject: str | None = None  # the cover letter ([PATCH 0/N]), never applied
    cover_body: str | None = None
    cover_message_id: str | None = None  # without the <>: a reply to the series threads under it
    base_commit: str | None = None  # a "base-commit:" trailer (git format-patch --base)
    version: int | None = None  # N of "[PATCH vN ...]" when the subjects give one
    total: int | None = None  # the whole series' length, for a prefix of it

    @property
    def identity(self) -> str:
        # The patches alone: the cover letter and the mail headers do not
        # change what is built.
        return digest(["series-v1", *(p.data for p in self.patches)])

    def describe(self, patch: Patch) -> str:
        total = self.total or len(self.patches)
        return f"patch {patch.index}/{total} '{patch.subject}' ({patch.origin})"

    def touched_paths(self) -> frozenset[str]:
        """Every tree path a patch of the series changes, creates, deletes
        or renames (both names of a rename), from the diffs themselves."""
        paths_: set[str] = set()
        for p in self.patches:
            for m in _DIFF_PATH.finditer(p.data):
                paths_.update(g.decode(errors="replace") for g in m.groups() if g)
        return frozenset(paths_)

    def touches(self, parts: tuple[str, ...]) -> bool:
        """Whether a patch changes `parts` (a path, or anything under a
        directory of that name)."""
        touched = self.touched_paths()
        return any(path == part or path.startswith(f"{part}/") for path in touched for part in parts)

    def prefix(self, count: int) -> PatchSeries:
        """The series up to and including patch `count` (per-patch checks
        and bisect build each prefix)."""
        return replace(self, patches=self.patches[:count], total=self.total or len(self.patches))


@dataclass(frozen=True)
class _Mail:
    """One message (or file) of the input, read but not yet sorted out."""

    origin: str
    data: bytes  # what git am (mboxrd) or git apply gets
    is_mail: bool
    subject: str  # without the [PATCH ...] tags
    author: str | None
    message_id: str | None
    body: str  # decoded text (quoted-printable and base64 undone)
    is_reply: bool
    has_diff: bool
    version: int | None  # N of the [PATCH vN M/T] tags
    position: tuple[int, int] | None  # (M, T)

    @property
    def number(self) -> int | None:
        return self.position[0] if self.position else None

    @property
    def version_or_1(self) -> int:
        return self.version or 1  # "[PATCH]" is v1

    def as_patch(self, index: int) -> Patch:
        return Patch(
            index,
            self.subject,
            self.origin,
            self.data,
            self.is_mail,
            number=self.number,
            author=self.author,
            message_id=self.message_id,
        )


def _header(msg: EmailMessage, name: str) -> str | None:
    try:
        value = msg.get(name)
    except (email.errors.MessageError, ValueError, IndexError, LookupError):
        return None  # a header too malformed to decode names nothing
    return None if value is None else " ".join(str(value).split())


def _body_text(msg: EmailMessage) -> str:
    """The text parts decoded, to look for a diff and trailers in: the
    mail's own bytes may be quoted-printable or base64."""
    texts: list[str] = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        try:
            texts.append(str(part.get_content(errors="replace")))
        except (LookupError, ValueError):  # an unknown or bogus charset
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode("utf-8", "replace"))
    return "\n".join(texts)


def _lf_if_crlf(data: bytes) -> bytes:
    """A file saved with CRLF line ends (a Windows mail client, an .eml
    export) must reach git with LF ends: `git am --keep-cr`, which patches
    that add or keep CRs need, leaves a CR on every line of such a mail and
    nothing applies. The first line (an mbox From line, a header, a diff
    header) is never patch content, so its end tells how the file was saved;
    in a file saved with LF ends, CRs are patch content and are kept."""
    first = data.split(b"\n", 1)[0]
    return data.replace(b"\r\n", b"\n") if first.endswith(b"\r") else data


def _as_mboxrd(data: bytes) -> bytes:
    """One mail as git am --patch-format=mboxrd reads it back unchanged,
    whatever "From " lines its body holds."""
    first, newline, rest = data.partition(b"\n")
    if first.startswith(b"From "):  # the mbox separator line stays as it is
        return first + newline + _FROM_LINE.sub(rb">\1", rest)
    return _FROM_LINE.sub(rb">\1", data)


def _read_mail(origin: str, data: bytes) -> _Mail:
    data = _lf_if_crlf(data)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    if "Subject" not in msg:  # a bare diff (quilt, git diff): git apply, named after its file
        text = data.decode("utf-8", "replace")
        has_diff = _DIFF.search(text) is not None
        stem = Path(origin).stem
        return _Mail(origin, data, False, stem, None, None, text, False, has_diff, None, None)
    raw_subject = _header(msg, "Subject") or ""
    tags = _SUBJECT_PREFIX.match(raw_subject)
    tag_text = tags.group(0) if tags else ""
    version = _TAG_VERSION.search(tag_text)
    number = _TAG_NUMBER.search(tag_text)
    message_id = _header(msg, "Message-ID")
    body = _body_text(msg)
    return _Mail(
        origin=origin,
        data=_as_mboxrd(data),
        is_mail=True,
        subject=_SUBJECT_PREFIX.sub("", raw_subject) or "(no subject)",
        author=_header(msg, "From"),
        message_id=message_id.strip("<>") if message_id else None,
        body=body,
        is_reply=_REPLY.match(raw_subject) is not None,
        has_diff=_DIFF.search(body) is not None,
        version=int(version.group(1)) if version else None,
        position=(int(number.group(1)), int(number.group(2))) if number else None,
    )


def _split_mbox(path: Path, spec: SeriesSpec) -> list[_Mail]:
    """git's own splitter, as git am would split the file: it starts a mail
    only at a real mbox From line (with a date), undoes mboxrd's >From
    escaping (in files marked as mboxrd), and with --keep-cr leaves line
    ends to _lf_if_crlf, which keeps the CRs that are patch content."""
    mboxrd = path.read_bytes().lstrip().startswith(_MBOXRD_MARK)
    with tempfile.TemporaryDirectory() as tmp:
        with tool_deadline(PatchError, f"series {spec.describe()}: git mailsplit"):
            rd = ["--mboxrd"] if mboxrd else []
            result = subprocess.run(
                ["git", "mailsplit", "-b", "--keep-cr", *rd, f"-o{tmp}", str(path)],
                env={**os.environ, **GIT_ENV},
                capture_output=True,
                text=True,
                timeout=TOOL_S,
            )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PatchError(f"series {spec.describe()}: git mailsplit cannot read {path.name}: {last}")
        mails = []
        for n, file in enumerate(sorted(Path(tmp).iterdir()), start=1):
            data = _lf_if_crlf(file.read_bytes())
            # The blank line before the next From line belongs to the mbox,
            # not to the mail (as Python's mailbox reads it too).
            if data.endswith(b"\n\n"):
                data = data[:-1]
            mails.append(_read_mail(f"{path.name} message {n}", data))
    return mails


def _read_file(path: Path, spec: SeriesSpec) -> list[_Mail]:
    if not path.is_file():
        raise PatchError(f"series {spec.describe()}: no such mbox file")
    data = path.read_bytes()
    if data.lstrip().startswith(b"From "):
        return _split_mbox(path, spec)
    if not data.strip():
        return []
    # One mail saved without an mbox From line, or a bare diff.
    return [_read_mail(path.name, data)]


def _quilt_order(path: Path, spec: SeriesSpec) -> list[str] | None:
    order_file = path / "series"
    if not order_file.is_file():
        return None
    names = [
        line.split("#")[0].split()[0]
        for line in order_file.read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    for name in names:
        if not (path / name).is_file():
            raise PatchError(f"series {spec.describe()}: {order_file}: {name} not found")
    return names


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _thread_patches(mails: list[_Mail], spec: SeriesSpec) -> tuple[list[_Mail], _Mail | None]:
    """The patches of a thread in [PATCH M/N] order, and its cover letter.
    Replies and mails without a diff are left out. A thread that mixes
    versions, lacks a patch or holds one twice cannot be applied as it is,
    and which one the reviewer meant is theirs to say."""
    where = f"series {spec.describe()}"
    posts = [m for m in mails if not m.is_reply]
    covers = [m for m in posts if m.number == 0]
    patches = [m for m in posts if m.number != 0 and m.has_diff]

    per_version = Counter(m.version_or_1 for m in patches)
    if len(per_version) > 1:
        versions = sorted(per_version)
        counts = ", ".join(f"v{v}: {_count(per_version[v], 'patch', 'patches')}" for v in versions)
        raise PatchError(
            f"{where}: mixes versions {_and([f'v{v}' for v in versions])} ({counts}):"
            f" give one version (b4 am -v {versions[-1]} picks one)"
        )
    version = next(iter(per_version), None)
    cover = next((c for c in covers if version is None or c.version_or_1 == version), None)

    by_number: dict[int, list[_Mail]] = {}
    totals: set[int] = set()
    unnumbered: list[_Mail] = []
    for m in patches:
        if m.position is None:
            unnumbered.append(m)
        else:
            by_number.setdefault(m.position[0], []).append(m)
            totals.add(m.position[1])
    if not by_number:
        return patches, cover  # "[PATCH]" mails: their order in the file is all there is
    have = f"have {', '.join(str(n) for n in sorted(by_number))}"
    if unnumbered:
        odd = unnumbered[0]
        raise PatchError(
            f"{where}: '{odd.subject}' ({odd.origin}) has no M/N number, unlike the others ({have})"
        )
    if len(totals) > 1:
        lengths = _and([f"/{t}" for t in sorted(totals)])
        raise PatchError(f"{where}: the patches disagree on the series length ({lengths})")
    (total,) = totals
    for number, same in sorted(by_number.items()):
        if len(same) > 1:
            times = "twice" if len(same) == 2 else f"{len(same)} times"
            origins = _and([m.origin for m in same])
            raise PatchError(f"{where}: patch {number}/{total} appears {times} ({origins}): keep one")
    beyond = [n for n in by_number if n > total]
    if beyond:
        raise PatchError(f"{where}: patch {max(beyond)}/{total} is beyond the series length ({have})")
    missing = [f"{n}/{total}" for n in range(1, total + 1) if n not in by_number]
    if len(missing) == 1:
        raise PatchError(f"{where}: patch {missing[0]} is missing ({have})")
    if missing:
        raise PatchError(f"{where}: patches {_and(missing)} are missing ({have})")
    return [by_number[n][0] for n in sorted(by_number)], cover


def _nothing_found(mails: list[_Mail], spec: SeriesSpec) -> str:
    """What the input held instead of patches, for the error."""
    if not mails:
        return " (no *.patch or *.diff file in it)" if spec.kind == "dir" else " (it is empty)"
    kinds = Counter(
        ("reply", "replies")
        if m.is_reply
        else ("cover letter", "cover letters")
        if m.number == 0
        else ("mail without a diff", "mails without a diff")
        for m in mails
    )
    return f" ({', '.join(_count(n, *kind) for kind, n in kinds.items())})"


def _offline_reason(stderr: str) -> str | None:
    """Why b4 could not reach the archive, when that is what its error
    says (in the words of requests and urllib3, which b4 fetches with)."""
    reasons = [
        ("NameResolutionError", "name resolution failed"),
        ("Name or service not known", "name resolution failed"),
        ("Temporary failure in name resolution", "name resolution failed"),
        ("Connection refused", "connection refused"),
        ("Network is unreachable", "network unreachable"),
        ("timed out", "timed out"),
        ("Failed to establish a new connection", "no connection"),
        ("Max retries exceeded", "no connection"),
        ("All hosts failed", "no connection"),
    ]
    return next((reason for text, reason in reasons if text in stderr), None)


def _unreachable(spec: SeriesSpec, host: str | None, reason: str) -> PatchError:
    archive = f"the mail archive {host}" if host else "the mail archive"
    return PatchError(
        f"series {spec.describe()}: cannot reach {archive} ({reason});"
        " without network, give the thread's mbox as --series FILE"
    )


def _b4_command() -> str | None:
    # b4 is a dependency: installed beside this Python even when its bin/
    # is not on PATH (a venv used without activating it).
    beside = Path(sys.executable).with_name("b4")
    return shutil.which("b4") or (str(beside) if beside.is_file() else None)


def _fetch_b4(msgid: str, spec: SeriesSpec) -> Path:
    """b4 needs the network; the fetched mbox (and the cover letter b4 puts
    beside it) is kept so rebuilds work offline."""
    cached = paths.cache_root() / "b4" / f"{digest([msgid])[:16]}.mbx"
    if cached.exists():
        return cached
    b4 = _b4_command()
    if b4 is None:
        raise PatchError(f"series {spec.describe()}: b4 is not installed (pip install b4)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = subprocess.run(
                [b4, "-q", "am", "-o", tmp, "-n", "series", msgid],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            raise _unreachable(spec, None, "b4 timed out") from None
        mbx = Path(tmp) / "series.mbx"
        if result.returncode != 0 or not mbx.exists():
            offline = _offline_reason(result.stderr)
            if offline is not None:
                host = re.search(r"host='([^']+)'", result.stderr)
                raise _unreachable(spec, host.group(1) if host else None, offline)
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PatchError(f"series {spec.describe()}: b4 could not fetch it: {last}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        cover = Path(tmp) / "series.cover"
        if cover.exists():  # before the mbox: the mbox's presence marks a complete fetch
            shutil.copyfile(cover, cached.with_suffix(".cover"))
        shutil.copyfile(mbx, cached)
    return cached


def _read_input(spec: SeriesSpec) -> tuple[list[_Mail], bool]:
    """The mails (or bare diffs) `spec` names, and whether their order is
    given (a quilt series file) rather than to be worked out."""
    if spec.kind == "mbox":
        return _read_file(Path(spec.location), spec), False
    if spec.kind == "dir":
        path = Path(spec.location)
        if not path.is_dir():
            raise PatchError(f"series {spec.describe()}: no such directory")
        listed = _quilt_order(path, spec)
        names = (
            listed
            if listed is not None
            else sorted(p.name for p in path.iterdir() if p.suffix in (".patch", ".diff"))
        )
        return [_read_mail(name, (path / name).read_bytes()) for name in names], listed is not None
    mbx = _fetch_b4(spec.location, spec)
    cover = mbx.with_suffix(".cover")
    cover_mail = [_read_mail(cover.name, cover.read_bytes())] if cover.is_file() else []
    return cover_mail + _split_mbox(mbx, spec), False


def _base_commit(mails: list[_Mail]) -> str | None:
    for mail in mails:
        found = _BASE_COMMIT.search(mail.body)
        if found:
            return found.group(1)
    return None


def series_spec(value: str) -> SeriesSpec:
    """What `--series VALUE` names: a directory of patches, a file (an mbox,
    one mail, a bare diff: `load_series` tells them apart by content,
    whatever the file is called), or a message-id for b4, possibly as a
    lore link or <id>."""
    path = Path(value).expanduser()
    if path.is_dir():
        return SeriesSpec("dir", str(path.resolve()))
    if path.is_file():
        return SeriesSpec("mbox", str(path.resolve()))
    if value.startswith(("https://", "http://")):
        # A link as reviewers paste it (.../r/<id>, .../all/<id>/T/#u):
        # b4 is given the message-id, which also names its cache entry.
        parts = [unquote(part) for part in urlsplit(value).path.split("/")]
        msgid = next((part for part in parts if "@" in part), None)
        if msgid is None:
            raise ConfigError(f"--series {value}: a link without a message-id in it")
        return SeriesSpec("b4", msgid.strip("<>"))
    if "@" in value and "/" not in value:
        return SeriesSpec("b4", value.strip().strip("<>"))
    raise ConfigError(f"--series {value}: no such file or directory, and not a message-id")


def load_series(spec: SeriesSpec) -> PatchSeries:
    mails, listed = _read_input(spec)
    cover: _Mail | None = None
    if listed:
        patches = mails  # a quilt series file lists the patches, in order
    elif len(mails) == 1:
        patches = [m for m in mails if m.has_diff]  # one patch is a series of one, whatever its subject
    else:
        patches, cover = _thread_patches(mails, spec)
    if not patches:
        raise PatchError(f"series {spec.describe()}: contains no patches{_nothing_found(mails, spec)}")
    return PatchSeries(
        spec,
        tuple(m.as_patch(i) for i, m in enumerate(patches, start=1)),
        cover_subject=cover.subject if cover else None,
        cover_body=(cover.body.strip() or None) if cover else None,
        cover_message_id=cover.message_id if cover else None,
        base_commit=_base_commit([cover, *patches] if cover else patches),
        version=next((m.version for m in patches if m.version is not None), None),
    )


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
        # mboxrd: the only mbox form in which any body line reads back as it
        # was (see _as_mboxrd); --keep-cr for patches to files with CRLF ends.
        result = git(tree, "am", "--keep-cr", "--no-3way", "--patch-format=mboxrd", str(file), check=False)
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


def applied_commit(tree: Path, series: PatchSeries | None) -> str | None:
    """The commit of the base, or of base + series when that was applied
    before, without touching the work tree (None: not applied yet)."""
    ref = f"refs/heads/{_branch(series)}" if series is not None else f"refs/tags/{BASE_TAG}"
    got = git(tree, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
    return got.stdout.strip() if got.returncode == 0 else None


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
    # A shorter prefix of this series may be applied already (series check
    # walks k = 1..N, bisect jumps around): continue from the longest one.
    done, start = 0, BASE_TAG
    for k in range(len(series.patches) - 1, 0, -1):
        shorter = _branch(series.prefix(k))
        if git(tree, "rev-parse", "-q", "--verify", f"refs/heads/{shorter}", check=False).returncode == 0:
            done, start = k, shorter
            break
    todo = series.patches[done:]
    ui.info("kernel", f"applying {len(todo)} patches ({series.spec.describe()}, from patch {done + 1})")
    work = f"{branch}-applying"
    git(tree, "checkout", "-q", "-f", "-B", work, start)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for patch in todo:
                _apply_one(tree, series, patch, Path(scratch))
    except BaseException:
        git(tree, "am", "--abort", check=False)
        git(tree, "checkout", "-q", "-f", "--detach", BASE_TAG)
        git(tree, "branch", "-D", work, check=False)
        raise
    # Only a fully applied series gets its final name.
    git(tree, "branch", "-M", work, branch)
    return git(tree, "rev-parse", "HEAD").stdout.strip()
