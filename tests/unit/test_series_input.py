"""--series as reviewers have it: a raw thread mbox from a list archive, the
mbox `b4 am` writes, format-patch directories, single mails saved from a
client, bare diffs; mboxrd escaping, CRLF, quoted-printable and base64.
The data in tests/data/series-input was made with git format-patch from
tests/data/series-input/base and then shaped like what lore and mail clients
serve; the patches apply to that base."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from harness.config.models import SeriesSpec
from harness.errors import ConfigError, PatchError
from harness.kernel.gitutil import git
from harness.kernel.series import BASE_TAG, PatchSeries, checkout, load_series, series_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "series-input"
SUBJECTS = [
    "iommu/pkvm: map pages through the hypervisor",
    "iommu/pkvm: unmap pages through the hypervisor",
    "iommu/pkvm: flush the IOTLB after unmap",
]
BASE_COMMIT = "2421ed6316651ebc4ce3f1e995a575a839e32bd8"
PKVM_IOMMU = "drivers/iommu/pkvm-iommu.c"


def load(name: str) -> PatchSeries:
    path = DATA / name
    return load_series(SeriesSpec("dir" if path.is_dir() else "mbox", str(path)))


def load_error(name: str) -> str:
    with pytest.raises(PatchError) as err:
        load(name)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture
def base_tree(tmp_path: Path) -> Path:
    """A git work tree holding the base the data's patches apply to."""
    tree = tmp_path / "linux"
    shutil.copytree(DATA / "base", tree)
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "base")
    return tree


def applied_subjects(tree: Path) -> list[str]:
    return git(tree, "log", "--reverse", "--format=%s", f"{BASE_TAG}..HEAD").stdout.splitlines()


# -- a thread as a list archive serves it ------------------------------------


def test_thread_mbox_is_applied_in_number_order_without_cover_letter_or_reply() -> None:
    # In the file: 2/3, 0/3, 1/3, Re: 1/3 (quoting a diff), 3/3.
    series = load("thread-v2.mbox")
    assert [p.subject for p in series.patches] == SUBJECTS
    assert [(p.index, p.number) for p in series.patches] == [(1, 1), (2, 2), (3, 3)]
    assert [p.origin for p in series.patches] == [
        "thread-v2.mbox message 3",
        "thread-v2.mbox message 1",
        "thread-v2.mbox message 5",
    ]
    assert [p.message_id for p in series.patches] == [
        "20261120101500.4242-2-ada@example.org",
        "20261120101500.4242-3-ada@example.org",
        "20261120101500.4242-4-ada@example.org",
    ]
    assert {p.author for p in series.patches} == {"Ada Lovelace <ada@example.org>"}
    assert series.version == 2


def test_cover_letter_is_the_description_and_base_commit_is_recorded() -> None:
    series = load("thread-v2.mbox")
    assert series.cover_subject == "iommu/pkvm: route DMA mappings through the hypervisor"
    assert series.cover_body is not None
    assert series.cover_body.startswith("Protected VMs must not see their memory")
    assert "Changes since v1:" in series.cover_body
    assert series.base_commit == BASE_COMMIT


def test_thread_mbox_applies_on_its_base(base_tree: Path) -> None:
    checkout(base_tree, load("thread-v2.mbox"))
    assert applied_subjects(base_tree) == SUBJECTS
    assert "kvm_call_hyp_nvhe(__pkvm_host_iommu_flush);" in (base_tree / PKVM_IOMMU).read_text()


def test_mbox_mixing_two_versions_is_refused() -> None:
    assert load_error("mixed-v1-v2.mbox") == (
        f"series mbox:{DATA / 'mixed-v1-v2.mbox'}: mixes versions v1 and v2"
        " (v1: 3 patches, v2: 3 patches): give one version (b4 am -v 2 picks one)"
    )


def test_thread_missing_a_patch_is_refused() -> None:
    assert load_error("missing-3-of-5.mbox") == (
        f"series mbox:{DATA / 'missing-3-of-5.mbox'}: patch 3/5 is missing (have 1, 2, 4, 5)"
    )


def test_thread_with_a_patch_twice_is_refused() -> None:
    assert load_error("duplicate-2-of-2.mbox") == (
        f"series mbox:{DATA / 'duplicate-2-of-2.mbox'}: patch 2/2 appears twice"
        " (duplicate-2-of-2.mbox message 2 and duplicate-2-of-2.mbox message 3): keep one"
    )


def test_thread_without_patches_says_what_it_holds(tmp_path: Path) -> None:
    text = (DATA / "thread-v2.mbox").read_text()
    mails = text.split("From mboxrd@z ")
    cover_and_reply = [m for m in mails if "[PATCH v2 0/3]" in m or "Subject: Re:" in m]
    mbox = tmp_path / "talk.mbox"
    mbox.write_text("".join("From mboxrd@z " + m for m in cover_and_reply))
    with pytest.raises(PatchError) as err:
        load_series(SeriesSpec("mbox", str(mbox)))
    assert str(err.value) == f"series mbox:{mbox}: contains no patches (1 cover letter, 1 reply)"


# -- mail encodings ----------------------------------------------------------


def test_mboxrd_from_escapes_are_undone_and_git_am_keeps_the_lines(base_tree: Path) -> None:
    # lore escapes body lines starting with "From " as ">From "; one of them
    # looks like an mbox separator, which a plain `git am` would split at.
    series = load("mboxrd-from-lines.mbox")
    assert [p.subject for p in series.patches] == SUBJECTS[:2]
    checkout(base_tree, series)
    message = git(base_tree, "log", "-1", "--format=%B", "HEAD~1").stdout
    assert "\nFrom the SMMUv3 specification, 3.13:" in message
    assert ">From" not in message
    assert applied_subjects(base_tree) == SUBJECTS[:2]


def test_crlf_mbox_reaches_git_am_with_lf_line_ends(base_tree: Path) -> None:
    assert b"\r\n" in (DATA / "crlf.mbox").read_bytes()
    series = load("crlf.mbox")
    assert [p.subject for p in series.patches] == SUBJECTS[:2]
    assert not any(b"\r" in p.data for p in series.patches)
    checkout(base_tree, series)
    assert applied_subjects(base_tree) == SUBJECTS[:2]


def test_crs_that_are_patch_content_are_kept(tmp_path: Path) -> None:
    """An LF mail changing a file with CRLF ends: the CRs are the patch's."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "win.ini").write_bytes(b"[iommu]\r\nmode=strict\r\n")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "base")
    (tree / "win.ini").write_bytes(b"[iommu]\r\nmode=lazy\r\n")
    git(tree, "commit", "-qam", "lazy mode")
    patch = Path(git(tree, "format-patch", "-1", "-o", str(tmp_path / "out")).stdout.strip())
    git(tree, "reset", "-q", "--hard", "HEAD~1")
    series = load_series(SeriesSpec("mbox", str(patch)))
    assert b"+mode=lazy\r\n" in series.patches[0].data
    checkout(tree, series)
    assert (tree / "win.ini").read_bytes() == b"[iommu]\r\nmode=lazy\r\n"


def test_quoted_printable_mail_applies(base_tree: Path) -> None:
    assert b"=\n" in (DATA / "quoted-printable.eml").read_bytes()  # a soft line break
    series = load("quoted-printable.eml")
    assert [p.subject for p in series.patches] == SUBJECTS[:1]
    checkout(base_tree, series)
    assert "__pkvm_host_iommu_map, iova, paddr, size);" in (base_tree / PKVM_IOMMU).read_text()


def test_base64_mail_is_decoded_to_find_its_diff(base_tree: Path) -> None:
    assert b"diff --git" not in (DATA / "base64.mbox").read_bytes()
    series = load("base64.mbox")
    assert [(p.number, p.subject) for p in series.patches] == [(2, SUBJECTS[1])]
    checkout(base_tree, series)
    assert "__pkvm_host_iommu_unmap, iova, size);" in (base_tree / PKVM_IOMMU).read_text()


# -- single patch files and directories --------------------------------------


def test_mail_saved_without_mbox_from_line_is_a_series_of_one(base_tree: Path) -> None:
    # Patch 3/3 on its own: a single file is a series of one, whatever its number.
    assert (DATA / "saved-mail.eml").read_text().startswith("Date: ")
    series = load("saved-mail.eml")
    [patch] = series.patches
    assert (patch.subject, patch.number, patch.origin, patch.is_mail) == (
        SUBJECTS[2],
        3,
        "saved-mail.eml",
        True,
    )
    assert patch.message_id == "20261108-3-ada@example.org"
    checkout(base_tree, series)
    assert applied_subjects(base_tree) == SUBJECTS[2:]


def test_bare_git_diff_is_a_series_of_one(base_tree: Path) -> None:
    series = load("bare.diff")
    [patch] = series.patches
    assert (patch.subject, patch.origin, patch.is_mail, patch.author) == ("bare", "bare.diff", False, None)
    checkout(base_tree, series)
    assert applied_subjects(base_tree) == ["bare"]


def test_b4_am_mbox_loads_with_its_base_commit(base_tree: Path) -> None:
    # b4 am: "From git@z" separators, no cover letter (b4 writes it beside),
    # base-commit left in the first patch by format-patch --base.
    series = load("b4-am.mbx")
    assert [p.subject for p in series.patches] == SUBJECTS[:2]
    assert (series.version, series.cover_subject, series.base_commit) == (2, None, BASE_COMMIT)
    checkout(base_tree, series)
    assert applied_subjects(base_tree) == SUBJECTS[:2]


def test_format_patch_directory_keeps_its_cover_letter_as_description() -> None:
    series = load("format-patch-dir")
    assert [p.subject for p in series.patches] == SUBJECTS
    assert series.patches[0].origin == "v2-0001-iommu-pkvm-map-pages-through-the-hypervisor.patch"
    assert series.cover_subject == "iommu/pkvm: route DMA mappings through the hypervisor"
    assert series.base_commit == BASE_COMMIT


def test_existing_series_mbox_still_loads_in_file_order() -> None:
    series = load_series(SeriesSpec("mbox", str(DATA.parent / "series" / "no-fault-reports.mbox")))
    assert [(p.subject, p.origin) for p in series.patches] == [
        ("iommu/arm-smmu-v3: NEGATIVE TEST: do not report events", "no-fault-reports.mbox message 2"),
        ("iommu/virtio: NEGATIVE TEST: do not report page faults", "no-fault-reports.mbox message 3"),
    ]


# -- a thread made by git itself, shuffled, through checkout() ---------------


def test_format_patch_thread_shuffled_with_a_reply_applies_in_number_order(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "drivers").mkdir(parents=True)
    (tree / "drivers" / "smmu.c").write_text("int ste;\nint cd;\nint tlb;\n")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "base")
    git(tree, "tag", BASE_TAG)
    subjects = ["smmu: ste", "smmu: cd", "smmu: tlb"]
    for word, subject in zip(["ste", "cd", "tlb"], subjects, strict=True):
        source = tree / "drivers" / "smmu.c"
        source.write_text(source.read_text().replace(f"int {word};", f"long {word};"))
        git(tree, "commit", "-qam", subject)
    tip_tree = git(tree, "rev-parse", "HEAD^{tree}").stdout
    out = tmp_path / "out"
    git(tree, "format-patch", "-q", "--cover-letter", "--thread", "-3", "-o", str(out))
    cover, first, second, third = (p.read_text() for p in sorted(out.iterdir()))
    first_id = next(ln for ln in first.splitlines() if ln.lower().startswith("message-id:")).split()[1]
    reply = (
        "From mboxrd@z Thu Jan  1 00:00:00 1970\n"
        "From: Reviewer <rev@example.org>\n"
        "Subject: Re: [PATCH 1/3] smmu: ste\n"
        f"In-Reply-To: {first_id}\n\n"
        "> -int ste;\n> +long ste;\n\nWhy long?\n\n"
    )
    mbox = tmp_path / "thread.mbox"
    mbox.write_text(second + cover + first + reply + third)
    git(tree, "checkout", "-q", "--detach", BASE_TAG)

    series = load_series(SeriesSpec("mbox", str(mbox)))
    assert [p.number for p in series.patches] == [1, 2, 3]
    assert series.patches[0].message_id == first_id.strip("<>")
    checkout(tree, series)
    assert applied_subjects(tree) == subjects
    assert git(tree, "rev-parse", "HEAD^{tree}").stdout == tip_tree


# -- b4 and --series ---------------------------------------------------------


B4_OFFLINE = (
    "Could not retrieve thread: All hosts failed for https://lore.kernel.org/all/x/t.mbox.gz:"
    " HTTPSConnectionPool(host='lore.kernel.org', port=443): Max retries exceeded with url:"
    " /all/x/t.mbox.gz (Caused by NameResolutionError(\"HTTPSConnection(host='lore.kernel.org',"
    " port=443): Failed to resolve 'lore.kernel.org' ([Errno -2] Name or service not known)\"))\n"
)


def test_b4_offline_is_one_line_naming_the_message_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in b4 that fails as b4 0.16 does with no network.
    (tmp_path / "b4-stderr").write_text(B4_OFFLINE)
    fake = tmp_path / "bin" / "b4"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'b4-stderr'} >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PKVM_HARNESS_CACHE", str(tmp_path / "cache"))
    msgid = "20261120101500.4242-1-ada@example.org"
    with pytest.raises(PatchError) as err:
        load_series(SeriesSpec("b4", msgid))
    assert str(err.value) == (
        f"series b4:{msgid}: cannot reach the mail archive lore.kernel.org (name resolution failed);"
        " without network, give the thread's mbox as --series FILE"
    )


def test_series_option_is_classified_by_what_is_there() -> None:
    assert series_spec(str(DATA / "bare.diff")) == SeriesSpec("mbox", str(DATA / "bare.diff"))
    assert series_spec(str(DATA / "format-patch-dir")) == SeriesSpec("dir", str(DATA / "format-patch-dir"))
    msgid = "20261120101500.4242-1-ada@example.org"
    assert series_spec(f"<{msgid}>") == SeriesSpec("b4", msgid)
    assert series_spec(f"https://lore.kernel.org/all/{msgid}/T/#u") == SeriesSpec("b4", msgid)
    assert series_spec(f"https://lore.kernel.org/r/{msgid.replace('@', '%40')}") == SeriesSpec("b4", msgid)
    with pytest.raises(ConfigError):
        series_spec(str(DATA / "no-such.mbox"))
