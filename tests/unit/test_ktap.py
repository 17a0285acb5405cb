from __future__ import annotations

from harness.scenario import ktap

# Real output of images/guest/edu-dma on a 7.3 guest (with a kernel message
# interleaved, as the serial console gives it).
EDU = """KTAP version 1
1..3
[    1.656295] vfio-pci 0000:00:02.0: enabling device (0000 -> 0002)
# bdf=0000:00:02.0
ok 1 fault-unmapped control: mapped DMA works
not ok 2 fault-unmapped write: memory unchanged # 16 bytes of sentinel changed
ok 3 fault-unmapped read: no foreign data # SKIP control failed
# metric: dma_rate=11550 B/s
"""


def test_results_directives_and_noise() -> None:
    report = ktap.parse(EDU)
    assert report.planned == 3 and report.bail_out is None
    assert [r.number for r in report.results] == [1, 2, 3]
    (failure,) = report.failures
    assert failure.name == "fault-unmapped write: memory unchanged"
    assert failure.reason == "16 bytes of sentinel changed"
    assert report.results[2].skipped and report.results[2].reason == "control failed"
    assert report.summary() == "1 passed, 1 failed, 1 skipped of 3 planned"


def test_bail_out() -> None:
    report = ktap.parse("KTAP version 1\n1..4\nBail out! no edu device (1234:11e8) found\n")
    assert report.bail_out == "no edu device (1234:11e8) found" and not report.results


def test_kselftest_style_nested_plan_counts_top_level_only() -> None:
    text = "TAP version 13\n1..1\n  1..2\n  ok 1 a\n  ok 2 b\nok 1 - group\n"
    report = ktap.parse(text)
    assert report.planned == 1
    assert [r.name for r in report.results] == ["a", "b", "group"]
