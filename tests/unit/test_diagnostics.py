"""Compiler errors and warnings from kernel build logs, per compilation unit."""

from __future__ import annotations

from pathlib import Path

from harness.kernel import diagnostics as D

TREE = Path("/cache/sources/abc/tree")

BASE_LOG = f"""\
  CC      kernel/a.o
  CC      kernel/b.o
{TREE}/kernel/b.c: In function 'b_fn':
{TREE}/kernel/b.c:10:6: warning: unused variable 'x' [-Wunused-variable]
   10 |  int x;
      |      ^
In file included from {TREE}/kernel/c.c:3:
{TREE}/include/linux/h.h:7:1: warning: 'h_fn' defined but not used [-Wunused-function]
  CC      kernel/c.o
"""


def test_units_and_warnings_with_header_attribution() -> None:
    built, diags = D.parse(BASE_LOG, TREE)
    assert built == {"kernel/a", "kernel/b", "kernel/c"}
    assert [(d.file, d.line, d.unit) for d in diags] == [
        ("kernel/b.c", 10, "kernel/b"),
        ("include/linux/h.h", 7, "kernel/c"),
    ]


def test_incremental_builds_keep_old_warnings_and_report_only_new_ones() -> None:
    base = D.update({}, BASE_LOG, TREE)
    # Patch 1 edits a.c (clean) and moves b.c's warning down 3 lines: nothing new.
    p1 = D.update(
        base,
        f"  CC      kernel/a.o\n  CC      kernel/b.o\n"
        f"{TREE}/kernel/b.c:13:6: warning: unused variable 'x' [-Wunused-variable]\n",
        TREE,
    )
    assert D.added(base, p1) == []
    assert p1["kernel/c"] == [("include/linux/h.h", "'h_fn' defined but not used [-Wunused-function]")]
    # Patch 2 recompiles only a.c, which now warns: exactly that is new.
    p2 = D.update(
        p1,
        f"  CC      kernel/a.o\n"
        f"{TREE}/kernel/a.c:5:2: warning: 'y' is used uninitialized [-Wuninitialized]\n",
        TREE,
    )
    assert D.added(p1, p2) == [("kernel/a.c", "'y' is used uninitialized [-Wuninitialized]")]
    # Patch 3 fixes it: recompiled clean, so the warning is gone.
    p3 = D.update(p2, "  CC      kernel/a.o\n", TREE)
    assert "kernel/a" not in p3 and D.added(p2, p3) == []


def test_first_error_names_file_line_and_message() -> None:
    log = (
        f"  CC      drivers/iommu/x.o\n{TREE}/drivers/iommu/x.c: In function 'f':\n"
        f"{TREE}/drivers/iommu/x.c:42:9: error: 'nope' undeclared (first use in this function)\n"
        f"{TREE}/drivers/iommu/x.c:43:1: error: expected ';' before '}}' token\n"
    )
    err = D.first_error(log, TREE)
    assert err is not None
    assert err.describe() == "drivers/iommu/x.c:42: error: 'nope' undeclared (first use in this function)"


def test_map_round_trips_through_json(tmp_path: Path) -> None:
    m = D.update({}, BASE_LOG, TREE)
    D.save_map(tmp_path / "w.json", m)
    assert D.load_map(tmp_path / "w.json") == m
    assert D.load_map(tmp_path / "missing.json") is None
