"""`series check --reply` and `series bisect --reply`: the mail, parsed back
with Python's `email` package, threads under the cover letter, says
`Re: [PATCH v2 0/3] ...`, keeps every line within 75 columns, and names
the patch that broke and its first error (check), or the first bad patch
by subject and Message-ID (bisect). The check is the real `check_series`
on a 3-patch thread whose patch 2 does not build (tests/unit/series_fixture.py);
the bisection is the real search on scripted outcomes."""

from __future__ import annotations

import email
import email.policy
import shlex
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest

from harness.config import Registry
from harness.config.models import SeriesSpec
from harness.series import reply
from harness.series.bisect import Bisector, StepOutcome
from tests.unit.series_fixture import COVER_ID, FIRST_ERROR, build_break_check, message_id, thread_mbox


def parse(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_lines(msg: EmailMessage) -> list[str]:
    assert msg.get_content_type() == "text/plain" and not msg.is_multipart()
    assert msg["Content-Transfer-Encoding"] == "8bit"
    text = msg.get_content()
    assert isinstance(text, str)
    return text.splitlines()


def check_form(path: Path) -> EmailMessage:
    """RFC 5322 on the wire: every physical line (headers folded) within 75
    columns; a reply that threads under the cover letter."""
    raw = path.read_text()
    assert "\r" not in raw and "\t" not in raw
    too_long = [ln for ln in raw.splitlines() if len(ln) > reply.WIDTH]
    assert not too_long, too_long
    msg = parse(path)
    for header in ("From", "Date", "Message-ID", "Subject"):
        assert msg[header], header
    assert msg["In-Reply-To"] == f"<{COVER_ID}>"
    assert msg["References"] == f"<{COVER_ID}>"
    assert msg["Message-ID"] != msg["In-Reply-To"]
    return msg


def test_a_build_break_at_patch_2_is_named_with_its_first_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = build_break_check(tmp_path, monkeypatch)
    path = reply.write_reply("check", out, tmp_path / "reply.eml")
    msg = check_form(path)
    assert msg["Subject"] == "Re: [PATCH v2 0/3] kernel: comments and a panic.c cleanup"
    assert msg["To"] == "pkvm-harness <pkvm-harness@localhost>"  # the patches' author (their From:)
    lines = body_lines(msg)
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("patch "))) :]
    rows = {ln.split()[0]: ln.split()[1:4] for ln in table[1:7] if ln[:1].isdigit()}
    assert rows == {"1/3": ["ok", "ok", "ok"], "2/3": ["ok", "FAIL", "-"], "3/3": ["ok", "ok", "ok"]}
    text = "\n".join(lines)
    failure = text.split('Patch 2/3 "kernel: panic: NEGATIVE TEST: does not build"', 1)[1]
    assert f"Message-ID: <{message_id(2)}>" in failure
    assert "check: build: FAIL" in failure
    error = " ".join(
        ln.strip() for ln in failure.split("first error lines:")[1].split("build log:")[0].splitlines()
    )
    assert FIRST_ERROR in error
    # The compiler's own lines, from the log kept for patch 2, in UTF-8 (8bit) with tree-relative paths.
    assert "    kernel/panic.c:14:27: error: expected expression before \u2018;\u2019 token\n" in failure
    assert "int pkvm_harness_broken = ;" in failure and "/root/.cache" not in text
    assert "Patch 1/3" not in text and "Patch 3/3" not in text  # only the failure gets details
    # The reproducer is one shell command that builds exactly patch 2.
    repro = failure.split("reproduce:\n", 1)[1].split("\n\n", 1)[0]
    argv = shlex.split(repro.replace("\\\n", ""))
    assert argv[:2] == ["pkvm-harness", "build"] and argv[argv.index("--upto") + 1] == "2"
    assert argv[argv.index("--series") + 1] == str(tmp_path / "thread.mbox")
    assert "base: debian:linux-source-7.3 (Linux 7.3.4)" in failure
    assert "config: base+pkvm+smmuv3, .config sha256 4f2d790445c4b799" in failure


def test_a_series_without_cover_letter_threads_under_patch_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = build_break_check(tmp_path, monkeypatch)
    series = out / "series.json"
    series.write_text(
        series.read_text()
        .replace(f'"{COVER_ID}"', "null")
        .replace('"cover_subject": "kernel: comments and a panic.c cleanup"', '"cover_subject": null')
    )
    msg = parse(reply.write_reply("check", out, tmp_path / "reply.eml"))
    assert msg["In-Reply-To"] == f"<{message_id(1)}>"
    assert msg["Subject"] == "Re: [PATCH v2 1/3] kernel: reboot: a comment (series-review test)"


class ThreadBisector(Bisector):
    """The bisection of the 3-patch thread, patch 2 the first bad one."""

    def __init__(self, output: Path, mbox: Path) -> None:
        reg = Registry()
        target = replace(reg.target("mainline-7.3"), series=SeriesSpec("mbox", str(mbox)))
        super().__init__(target, reg.profile("smmuv3-nested"), (reg.scenario("dma-after-unmap"),), output, 1)

    def test(self, k: int, role: str) -> StepOutcome:
        bad = k >= 2
        reason = "dma-after-unmap: step type1-after-unmap: DMA after unmap landed" if bad else "all passed"
        sig = ("dma-after-unmap/type1-after-unmap:",) if bad else ()
        return self._add(StepOutcome(k, "bad" if bad else "good", reason, sig, role, None, True))


def test_a_bisection_reply_names_the_first_bad_patch(tmp_path: Path) -> None:
    mbox = thread_mbox(tmp_path / "thread.mbox")
    report = ThreadBisector(tmp_path / "bisect", mbox).run()
    assert (report.verdict, report.first_bad) == ("found", 2)
    msg = check_form(reply.write_reply("bisect", tmp_path / "bisect", tmp_path / "bisect.eml"))
    assert msg["Subject"] == "Re: [PATCH v2 0/3] kernel: comments and a panic.c cleanup"
    text = "\n".join(body_lines(msg))
    first = text.split("The first bad patch is:", 1)[1]
    assert "[PATCH v2 2/3] kernel: panic: NEGATIVE TEST: does not build" in first
    assert f"Message-ID: <{message_id(2)}>" in first
    assert "DMA after unmap landed" in first
    repro = shlex.split(first.split("reproduce:\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", ""))
    assert repro[:2] == ["pkvm-harness", "run"] and repro[repro.index("--upto") + 1] == "2"
    assert repro[-1] == "dma-after-unmap"


@pytest.mark.parametrize("word", ["a" * 200, "/very/long/" * 20])
def test_commands_stay_within_75_columns_and_read_back(word: str) -> None:
    argv = ["pkvm-harness", "run", "--series", word, "--output", "out x"]
    lines = reply.command(argv, "    ")
    assert all(len(ln) <= reply.WIDTH for ln in lines)
    assert shlex.split("\n".join(lines).replace("\\\n", "")) == argv
