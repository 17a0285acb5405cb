"""A `series check` of a 3-patch series whose patch 2 breaks the build,
run through the real `check_series` (series reading, per-patch checks,
series.json) with only the kernel build scripted: patches 1 and 3 build,
patch 2 fails with the compiler error the e2e test gets from the real
build of tests/data/series-review/build-break-fix on mainline-7.3.

The series is that directory's three `git format-patch` mails, posted as a
v2 thread with a cover letter (Message-IDs, In-Reply-To), as lore serves
it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.config import Registry
from harness.config.models import SeriesSpec
from harness.errors import BuildError
from harness.kernel import KernelBuild
from harness.series import check

REVIEW = Path(__file__).resolve().parent.parent / "data" / "series-review" / "build-break-fix"
COVER_ID = "20261122000000.0-1-review@example.org"
FIRST_ERROR = "kernel/panic.c:14: error: expected expression before ';' token"

# What gcc printed for patch 2 in the real build (the source tree is the
# cache's unpacked tarball; gcc quotes with U+2018/U+2019).
TREE = (
    "/root/.cache/pkvm-harness/sources/69146ac5211430345561815042ddfbcfce49a494868ba70e816596054d053779/tree"
)
BUILD_LOG = f"""\
make[1]: Entering directory '/root/.cache/pkvm-harness/work/b7bc1c7343ce54e9ca43b7ae'
  CC      kernel/panic.o
{TREE}/kernel/panic.c:14:27: error: expected expression before \u2018;\u2019 token
   14 | int pkvm_harness_broken = ;  /* NEGATIVE TEST: does not compile */
      |                           ^
make[4]: *** [{TREE}/scripts/Makefile.build:295: kernel/panic.o] Error 1
make[3]: *** [{TREE}/scripts/Makefile.build:556: kernel] Error 2
"""


def message_id(n: int) -> str:
    return f"20261122000000.{n}-{n + 1}-review@example.org"


def thread_mbox(path: Path) -> Path:
    """The three patches as a [PATCH v2 M/3] thread under a cover letter."""
    mails = [
        "From review@example.org Sun Nov 22 00:00:00 2026\n"
        "From: A Developer <dev@example.org>\n"
        "Date: Sun, 22 Nov 2026 00:00:00 +0000\n"
        "Subject: [PATCH v2 0/3] kernel: comments and a panic.c cleanup\n"
        f"Message-ID: <{COVER_ID}>\n"
        "\nThree small patches (series-review test data).\n"
    ]
    for n, patch in enumerate(sorted(REVIEW.glob("*.patch")), start=1):
        text = patch.read_text()
        head, body = text.split("\n\n", 1)
        lines = [ln for ln in head.splitlines()[1:]]
        lines = [ln.replace("[PATCH ", "[PATCH v2 ") for ln in lines]
        lines += [f"Message-ID: <{message_id(n)}>", f"In-Reply-To: <{COVER_ID}>", f"References: <{COVER_ID}>"]
        mails.append("From review@example.org Sun Nov 22 00:00:00 2026\n" + "\n".join(lines) + "\n\n" + body)
    path.write_text("\n".join(mails))
    return path


def fake_build(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build_kernel(target: Any, upto: int | None = None, **_: Any) -> KernelBuild:
        d = tmp / f"kernel-{upto}"
        d.mkdir(exist_ok=True)
        log = tmp / "build.log"  # as in the shared O= directory: the next build writes over it
        if upto == 2:
            log.write_text(BUILD_LOG)
            raise BuildError(f"kernel build failed: {FIRST_ERROR}", log=log, series_defect=True)
        log.write_text("  CC      kernel/reboot.o\n")
        (d / "warnings.json").write_text("{}")
        meta = {
            "kernel_version": "7.3.4",
            "commit": f"{upto:040x}",
            "build_seconds": 18.5,
            "config_sha256": "4f2d790445c4b799877a0b5c158a0c9d80c27070ea5ec9a2a6b5a10308d04abe",
            "fragments": ["base.config", "pkvm.config", "smmuv3.config"],
            "toolchain": "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0",
        }
        return KernelBuild(
            "mainline-7.3",
            "k",
            d,
            d / "Image",
            d / "vmlinux",
            d / "System.map",
            d / "config",
            log,
            None,
            meta,
        )

    monkeypatch.setattr(check, "build_kernel", build_kernel)


def build_break_check(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """series.json (and junit.xml) of the check, in tmp/check; patch 2's
    build log kept there (the shared one is patch 3's by then)."""
    fake_build(tmp, monkeypatch)
    mbox = thread_mbox(tmp / "thread.mbox")
    target = replace(Registry().target("mainline-7.3"), series=SeriesSpec("mbox", str(mbox)))
    out = tmp / "check"
    report = check.check_series(target, out, check.CheckOptions())
    assert [str(p.verdict) for p in report.patches] == ["pass", "fail", "pass"]
    data = json.loads((out / "series.json").read_text())
    assert data["thread"]["cover_message_id"] == COVER_ID
    assert data["patches"][1]["build_log"] == str(out / "patch-02-build.log")
    return out
