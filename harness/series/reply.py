"""`series check --reply FILE` and `series bisect --reply FILE`: an RFC 5322
reply to the series, threaded under its cover letter (or patch 1), that a
reviewer sends with `git send-email` or their mail client.

The mail is plain text (UTF-8, 8bit, no MIME parts), every line at most 75
columns: a per-patch table (apply, build, warnings, boot, scenarios), then
for each failure the patch, the check, the first lines of the error, the
command that reproduces it, and the base and configuration it was built
from. A bisection's reply names the first bad patch by subject and
Message-ID. It is built only from what the command wrote (series.json,
bisect.json and the run directories they name), read through
harness.series.load."""

from __future__ import annotations

import email.policy
import email.utils
import re
import shlex
import subprocess
import textwrap
from collections.abc import Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from harness import __version__
from harness.kernel import diagnostics
from harness.report import ResultsError, RunResult, Verdict, load_results
from harness.series.check import PatchReport, SeriesReport
from harness.series.load import BisectFile, load_bisect, load_series_report

WIDTH = 75
# Headers folded at 75 as well; "\n" line ends, as git send-email and mbox
# tools expect of a file.
POLICY = email.policy.default.clone(max_line_length=WIDTH, linesep="\n")
_CONTEXT = 5  # lines of the build log after its first error


# ---------------------------------------------------------------- text helpers


def wrap(text: str, indent: str = "", subsequent: str | None = None) -> list[str]:
    """Paragraph text at WIDTH columns; a word longer than a line is cut."""
    out: list[str] = []
    for para in text.splitlines() or [""]:
        lines = textwrap.wrap(
            para,
            WIDTH,
            initial_indent=indent,
            subsequent_indent=indent if subsequent is None else subsequent,
            break_long_words=True,
            break_on_hyphens=False,
        )
        out += lines or [indent.rstrip()]
    return out


def quote(lines: Iterable[str], indent: str = "    ") -> list[str]:
    """Log or compiler lines, kept as they are but cut at WIDTH: the rest
    of a long line goes on the next, marked with a leading '+'."""
    out: list[str] = []
    room = WIDTH - len(indent)
    for line in lines:
        line = line.expandtabs(8).rstrip()
        if not line:
            out.append("")
            continue
        first = True
        while True:
            prefix = indent if first else indent[:-1] + "+"
            out.append(prefix + line[:room])
            line = line[room:]
            first = False
            if not line:
                break
    return out


def command(argv: list[str], indent: str = "  ") -> list[str]:
    """A shell command at WIDTH columns: words joined with ' \\' line
    continuations, and a word too long for a line split with a
    backslash-newline, which the shell removes (for unquoted words)."""
    words: list[str] = []
    i = 0
    while i < len(argv):  # an option stays on the line of its value
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            pair = f"{shlex.quote(argv[i])} {shlex.quote(argv[i + 1])}"
            if len(indent) + 2 + len(pair) + 2 <= WIDTH:
                words.append(pair)
                i += 2
                continue
        words.append(shlex.quote(argv[i]))
        i += 1
    lines: list[str] = []
    current = indent
    cont = indent + "  "
    for w in words:
        candidate = w if current.strip() == "" else " " + w
        if len(current) + len(candidate) + 2 <= WIDTH:
            current += candidate
            continue
        if current.strip():
            lines.append(current + " \\")
            current = cont
        while len(current) + len(w) + 2 > WIDTH and not w.startswith("'") and " " not in w:
            cut = WIDTH - len(current) - 1
            lines.append(current + w[:cut] + "\\")
            current, w = "", w[cut:]
        current += w
    lines.append(current)
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; the last column (a subject, a
    reason) wraps within what is left of the line."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lead = sum(widths) + len(widths)
    room = max(WIDTH - lead, 20)
    out = []
    for r in [header, *rows]:
        cells = " ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + " "
        last = textwrap.wrap(r[-1], room, break_long_words=True) or [""]
        out.append((cells + last[0]).rstrip())
        out += [(" " * lead + more).rstrip() for more in last[1:]]
    return out


def _mark(verdict: Verdict | None) -> str:
    if verdict is None:
        return "-"
    return {Verdict.PASS: "ok", Verdict.NOT_RUN: "-"}.get(verdict, str(verdict).upper())


# ---------------------------------------------------------------- headers


def _sender() -> str:
    def git(key: str) -> str:
        try:
            out = subprocess.run(["git", "config", key], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    name, addr = git("user.name"), git("user.email")
    return email.utils.formataddr((name or "pkvm-harness", addr or "pkvm-harness@localhost"))


def _tag(thread: dict[str, Any], number: int | None) -> str:
    version = thread.get("version")
    v = f" v{version}" if version else ""
    total = thread.get("total") or 1
    if number is None or total == 1:
        return f"[PATCH{v}]"
    return f"[PATCH{v} {number}/{total}]"


def subject_and_parent(thread: dict[str, Any]) -> tuple[str, str | None]:
    """`Re: [PATCH vN 0/M] cover subject` and the cover letter's
    Message-ID; without a cover letter, patch 1's."""
    if thread.get("cover_subject") or thread.get("cover_message_id"):
        subject = f"Re: {_tag(thread, 0)} {thread.get('cover_subject') or ''}".rstrip()
        parent = thread.get("cover_message_id")
    else:
        subject = f"Re: {_tag(thread, 1)} {thread.get('first_subject') or ''}".rstrip()
        parent = thread.get("first_message_id")
    return subject, parent


def _message(subject: str, parent: str | None, to: list[str], body: list[str]) -> EmailMessage:
    for line in body:
        assert len(line) <= WIDTH, line
    msg = EmailMessage(policy=POLICY)
    msg["From"] = _sender()
    if to:
        msg["To"] = ", ".join(sorted(set(to)))
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain="pkvm-harness.invalid")
    if parent:
        msg["In-Reply-To"] = f"<{parent}>"
        msg["References"] = f"<{parent}>"
    msg["X-Mailer"] = f"pkvm-harness {__version__}"
    msg.set_content("\n".join(body) + "\n", cte="8bit")
    return msg


def write_message(msg: EmailMessage, path: Path) -> Path:
    """The mail as bytes: a str generator would re-encode an 8bit UTF-8
    body (gcc's quotes) as base64; written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(msg.as_bytes(policy=POLICY))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- series check


def _run(directory: Path) -> RunResult | None:
    try:
        return load_results(directory)
    except ResultsError:
        return None


def first_error_lines(log: str | None) -> list[str]:
    """The build log from its first error on, as the compiler printed it
    (source line, caret), up to the next make line; [] without a log."""
    lines: list[str] = []
    if not log or not Path(log).is_file():
        return lines
    text = Path(log).read_text(errors="replace").splitlines()
    error = diagnostics.first_error("\n".join(text))
    at = None
    if error is not None:
        at = next((i for i, ln in enumerate(text) if f":{error.line}:" in ln and "error:" in ln), None)
    if at is None:
        at = next((i for i, ln in enumerate(text) if "error:" in ln or "Error " in ln), None)
    if at is None:
        return lines
    block = [text[at]]
    for ln in text[at + 1 : at + 1 + _CONTEXT]:
        if ln.startswith(("make", "  CC", "  LD", "  AR")) or not ln.strip():
            break
        block.append(ln)
    return block


def _relative(block: list[str], reason: str) -> list[str]:
    """The log's paths as the reason gives them: relative to the source
    tree (the cache's absolute path means nothing to the mail's readers)."""
    logged = re.match(r"(\S+?):\d+:", block[0]) if block else None
    said = re.search(r"(\S+?):\d+: (?:fatal )?error", reason)
    if logged and said and logged.group(1).endswith("/" + said.group(1)):
        prefix = logged.group(1)[: -len(said.group(1))]
        return [ln.replace(prefix, "") for ln in block]
    return block


def _ids(base: dict[str, Any]) -> list[str]:
    source = base.get("source") or "?"
    version = base.get("kernel_version")
    out = [f"base: {source}" + (f" (Linux {version})" if version else "")]
    if base.get("series_base_commit"):
        out.append(f"base-commit: {base['series_base_commit']}")
    frags = base.get("fragments")
    config = "+".join(str(f).removesuffix(".config") for f in frags) if frags else "?"
    sha = base.get("config_sha256")
    out.append(f"config: {config}" + (f", .config sha256 {sha[:16]}" if sha else ""))
    if base.get("toolchain"):
        out.append(f"compiler: {base['toolchain']}")
    return out


def _upto(cli_args: list[str], k: int) -> list[str]:
    args = list(cli_args)
    if "--series" in args and "--upto" not in args:
        i = args.index("--series") + 2
        args[i:i] = ["--upto", str(k)]
    return args


def _boot_columns(directory: Path, p: PatchReport) -> tuple[str, str, RunResult | None]:
    run = _run(directory / f"patch-{p.number:02d}")
    if run is None:
        boot = next((c for c in p.checks if c.check == "boot"), None)
        return _mark(boot.verdict if boot else None), "-", None
    boots = "ok" if run.boots and all(b.verdict == Verdict.PASS for b in run.boots) else "FAIL"
    if not run.boots:
        boots = "-"
    counted = [r for r in run.results if r.verdict != Verdict.SKIP]
    passed = sum(1 for r in counted if r.verdict in (Verdict.PASS, Verdict.XFAIL))
    return boots, f"{passed}/{len(counted)}", run


def series_reply(directory: Path) -> EmailMessage:
    report = load_series_report(directory)
    thread = report.thread or {"total": len(report.patches)}
    subject, parent = subject_and_parent(thread)
    total = thread.get("total") or len(report.patches)
    rows, failures = [], []
    for p in report.patches:
        checks = {c.check: c for c in p.checks}
        build = checks.get("build")
        kconfig = checks.get("kconfig")
        build_col = _mark(build.verdict if build else None)
        if kconfig is not None and kconfig.verdict in (Verdict.FAIL, Verdict.ERROR):
            build_col = "CONFIG"
        warn = checks.get("warnings")
        boot_col, scen_col, run = _boot_columns(directory, p)
        apply = checks.get("apply")
        rows.append(
            [
                f"{p.number}/{total}",
                _mark(apply.verdict if apply else None),
                build_col,
                _mark(warn.verdict if warn else None),
                boot_col,
                scen_col,
                p.subject,
            ]
        )
        for c in p.checks:
            if c.verdict in (Verdict.FAIL, Verdict.ERROR):
                failures.append(_failure(report, p, c.check, c.verdict, c.reason, run, total))
    bad = [p for p in report.patches if p.verdict in (Verdict.FAIL, Verdict.ERROR)]
    n = len(report.patches)
    version = f"v{thread['version']}, " if thread.get("version") else ""
    booted = any(c.check == "boot" for p in report.patches for c in p.checks)
    body = [
        "Hi,",
        "",
        *wrap(
            f"pkvm-harness checked this series ({version}{n} patch{'es' if n != 1 else ''}) patch by"
            f" patch on {report.target}: each patch applied on top of the ones before, built for"
            " arm64, compared for new compiler warnings" + (", booted under QEMU" if booted else "") + "."
        ),
        "",
    ]
    if bad:
        named = ", ".join(f"{p.number}/{total}" for p in bad)
        body += wrap(f"Patch{'es' if len(bad) > 1 else ''} {named} did not pass; details below.")
    else:
        body += wrap("Every patch passed every check.")
    body += [""]
    body += _table(["patch", "apply", "build", "warnings", "boot", "scenarios", "subject"], rows)
    for f in failures:
        body += ["", *f]
    for note in report.notes:
        body += ["", *wrap(f"Note: {note}")]
    if parent is None:
        body += ["", *wrap("(The series carried no Message-ID: send this as a reply from your mail client.)")]
    body += ["", "-- ", f"pkvm-harness {__version__}, series check (series.json in {directory})"[:WIDTH]]
    authors = [p.author for p in report.patches if p.author]
    return _message(subject, parent, authors, body)


def _failure(
    report: SeriesReport,
    p: PatchReport,
    check: str,
    verdict: Verdict,
    reason: str,
    run: RunResult | None,
    total: int,
) -> list[str]:
    out = wrap(f'Patch {p.number}/{total} "{p.subject}"')
    if p.message_id:
        out += wrap(f"Message-ID: <{p.message_id}>", "  ")
    who = "the series" if verdict == Verdict.FAIL else "the harness (not the series)"
    out += wrap(f"check: {check}: {str(verdict).upper()}, {who}", "  ")
    out += ["", "  first error lines:"]
    cli_args = [str(a) for a in report.base.get("cli_args") or ["--target", report.target]]
    if check == "build":
        out += [ln for line in reason.splitlines()[:_CONTEXT] for ln in wrap(line, "    ", "      ")]
        block = _relative(first_error_lines(p.build_log), reason)
        if block:
            out += ["", "  build log:", *quote(block)]
        argv = ["pkvm-harness", "build", *_upto(cli_args, p.number)]
    elif check == "warnings":
        out += quote(p.new_warnings[:_CONTEXT] or reason.splitlines()[:_CONTEXT])
        argv = ["pkvm-harness", "series", "check", *cli_args, "--output", "out/check"]
    elif check == "boot" and run is not None:
        cell = next((r for r in run.results if r.verdict in (Verdict.FAIL, Verdict.ERROR)), None)
        lines = [reason]
        if cell is not None:
            events = [
                str(t)
                for e in cell.events
                if e.get("severity") != "info"
                for t in (e.get("symbolised") or e.get("trace") or [])
            ][:_CONTEXT]
            lines = [f"{cell.scenario} [{cell.profile}]: {cell.reason}", *events]
        out += [ln for line in lines for ln in wrap(line, "    ", "      ")]
        scen = [cell.scenario] if cell else []
        prof = ["--profile", cell.profile] if cell else []
        argv = ["pkvm-harness", "run", *_upto(cli_args, p.number), *prof, "--output", "out/repro", *scen]
    else:
        out += [ln for line in reason.splitlines()[:_CONTEXT] for ln in wrap(line, "    ", "      ")]
        argv = ["pkvm-harness", "build", *_upto(cli_args, p.number)]
    out += ["", "  reproduce:", *command(argv, "    ")]
    out += ["", *[ln for i in _ids(report.base) for ln in wrap(i, "  ", "    ")]]
    return out


# ---------------------------------------------------------------- bisect


def _step_kernel(b: BisectFile) -> dict[str, Any]:
    """The kernel metadata of a bisection step that built (its results.json)."""
    for s in b.steps:
        if s.results:
            run = _run(Path(s.results))
            if run is not None and run.targets:
                return dict(run.targets[0].kernel)
    return {}


def bisect_reply(directory: Path) -> EmailMessage:
    b = load_bisect(directory)
    thread = b.thread or {}
    subject, parent = subject_and_parent(thread)
    scen = ", ".join(b.scenarios)
    body = ["Hi,", ""]
    body += wrap(
        f"pkvm-harness bisected this series on {b.target} with {scen} on the {b.profile} profile"
        " (QEMU): the base passes and the whole series fails."
    )
    body += [""]
    if b.verdict == "found" and b.first_bad is not None:
        fb = b.first_bad
        body += wrap("The first bad patch is:")
        body += ["", *wrap(f"{_tag(thread, fb.number)} {fb.subject}", "  ", "    ")]
        if fb.message_id:
            body += wrap(f"Message-ID: <{fb.message_id}>", "  ")
        body += [""]
        last = next((s for s in reversed(b.steps) if s.patch == fb.number and s.state == "bad"), None)
        if last is not None:
            body += ["  how it fails:", *[ln for ln in wrap(last.reason, "    ", "      ")]]
        if b.fails_differently:
            body += ["", *wrap("(It fails differently from the whole series: look at both.)", "  ")]
        confirm = [s for s in b.steps if s.role == "confirm"]
        if confirm:
            states = ", ".join(f"patch {s.patch} {s.state}" for s in confirm)
            body += ["", *wrap(f"confirmed by running again: {states}", "  ", "    ")]
        script = directory / "reproduce.sh"
        if script.is_file():
            argv = shlex.split(
                next(ln for ln in script.read_text().splitlines() if ln and not ln.startswith("#"))
            )
            body += ["", "  reproduce:", *command(argv, "    ")]
    elif b.verdict == "ambiguous":
        body += wrap(f"The first bad patch could not be pinned down: {b.reason}")
        for c in b.candidates:
            body += wrap(f"{_tag(thread, c.number)} {c.subject}", "  ", "    ")
            if c.message_id:
                body += wrap(f"Message-ID: <{c.message_id}>", "    ")
    else:
        body += wrap(f"The bisection gave no answer: {b.reason}")
    rows = [[str(s.patch), s.role, s.state, re.sub(r"\s+", " ", s.reason)] for s in b.steps]
    body += ["", *wrap("Each step (patch 0 is the base):"), ""]
    body += _table(["patch", "role", "state", "result"], rows)
    kernel = _step_kernel(b)
    if kernel:
        body += ["", *[ln for i in _ids(kernel) for ln in wrap(i, "  ", "    ")]]
    counts = b.counts
    if counts:
        body += ["", *wrap(f"{counts.get('builds', 0)} builds, {counts.get('boots', 0)} boots.")]
    if parent is None:
        body += ["", *wrap("(The series carried no Message-ID: send this as a reply from your mail client.)")]
    body += ["", "-- ", f"pkvm-harness {__version__}, series bisect (bisect.json in {directory})"[:WIDTH]]
    return _message(subject, parent, [], body)


def write_reply(kind: str, directory: Path, path: Path) -> Path:
    msg = series_reply(directory) if kind == "check" else bisect_reply(directory)
    return write_message(msg, path)
