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

from harness import pipeline
from harness.config import Registry
from harness.config.models import SeriesSpec
from harness.report import RunResult
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


HYP_PANIC = {
    "signature": "hyp-panic",
    "kind": "hyp",
    "severity": "error",
    "fatal": True,
    "line": 133,
    "timestamp": 1.2,
    "message": "kvm [1]: nVHE hyp panic at: [<ffff8000804bff7c>] __kvm_nvhe_handle_trap+0x54/0x124!",
    "fields": {"function": "handle_trap"},
    "trace": [
        "[    1.200000] kvm [1]: nVHE hyp panic at: [<ffff8000804bff7c>] __kvm_nvhe_handle_trap+0x54/0x124!"
    ],
}


def test_a_boot_failure_names_the_scenario_its_events_and_the_run_that_reproduces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`series check --boot`: patch 3 builds but its boot-health FAILs (the
    boot itself is scripted: what `pipeline.run_with` writes for it)."""
    from harness.report import BootRecord, RunRecorder, ScenarioResult, TargetRecord, Verdict
    from harness.series import check

    def run_with(request: pipeline.RunRequest, artifacts: object) -> RunResult:
        k = request.upto
        rec = RunRecorder(request.output, "0.3.0", "QEMU emulator version 10.0.2", "pkvm-harness run")
        rec.add_target(TargetRecord("mainline-7.3", {"kernel_version": "7.3.4"}, {}))
        bad = k == 3
        rec.add_boot(
            BootRecord(
                "b1",
                "mainline-7.3",
                "smmuv3-nested",
                str(request.output),
                "console.log",
                not bad,
                Verdict.FAIL if bad else Verdict.PASS,
                "",
                2.8,
            )
        )
        reason = (
            "boot: hyp-panic: kvm [1]: nVHE hyp panic at: __kvm_nvhe_handle_trap+0x54/0x124" if bad else ""
        )
        rec.record(
            ScenarioResult(
                "boot-health",
                "smmuv3-nested",
                "mainline-7.3",
                Verdict.FAIL if bad else Verdict.PASS,
                reason,
                3.0,
                events=(HYP_PANIC,) if bad else (),
                boot="b1",
            )
        )
        return rec.finish({})

    monkeypatch.setattr(pipeline, "run_with", run_with)
    monkeypatch.setattr(check, "build_image", lambda: None)
    reg = Registry()
    options = check.CheckOptions((reg.profile("smmuv3-nested"),), (reg.scenario("boot-health"),))
    from tests.unit.series_fixture import fake_build

    fake_build(tmp_path, monkeypatch)
    target = replace(
        reg.target("mainline-7.3"), series=SeriesSpec("mbox", str(thread_mbox(tmp_path / "t.mbox")))
    )
    check.check_series(target, tmp_path / "check", options)
    lines = body_lines(check_form(reply.write_reply("check", tmp_path / "check", tmp_path / "r.eml")))
    rows = {ln.split()[0]: ln.split()[1:6] for ln in lines if ln[:2] in ("1/", "2/", "3/")}
    assert rows["1/3"] == ["ok", "ok", "ok", "ok", "1/1"]
    assert rows["3/3"] == ["ok", "ok", "ok", "FAIL", "0/1"]
    text = "\n".join(lines)
    boot = text.split('Patch 3/3 "kernel: panic: fix the build again"', 1)[1]
    assert "check: boot: FAIL" in boot and "boot-health [smmuv3-nested]: boot: hyp-panic" in boot
    assert "__kvm_nvhe_handle_trap+0x54/0x124!" in boot  # the event's trace
    argv = shlex.split(boot.split("reproduce:\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", ""))
    assert argv[:2] == ["pkvm-harness", "run"] and argv[argv.index("--upto") + 1] == "3"
    assert argv[argv.index("--profile") + 1] == "smmuv3-nested" and argv[-1] == "boot-health"
