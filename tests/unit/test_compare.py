"""The comparison shared by --against-base and `report DIR DIR2`."""

from __future__ import annotations

from harness.report import ScenarioResult, Verdict
from harness.report.compare import compare, render_text


def r(
    scenario: str, verdict: Verdict, reason: str = "", metrics: dict[str, float] | None = None
) -> ScenarioResult:
    return ScenarioResult(scenario, "smmuv3-nested", "t", verdict, reason, 1.0, metrics=metrics or {})


def test_regressions_fixes_and_unchanged_failures_are_told_apart() -> None:
    base = [
        r("a", Verdict.PASS),
        r("b", Verdict.FAIL, "old bug"),
        r("c", Verdict.XFAIL, "known gap"),
        r("d", Verdict.PASS),
        r("e", Verdict.ERROR, "qemu"),
        r("f", Verdict.SKIP, "n/a"),
    ]
    tip = [
        r("a", Verdict.FAIL, "step x: DMA reached memory"),
        r("b", Verdict.PASS),
        r("c", Verdict.XFAIL, "known gap"),
        r("d", Verdict.PASS),
        r("e", Verdict.PASS),
        r("f", Verdict.PASS),
        r("g", Verdict.PASS),
    ]
    c = compare(base, tip)
    assert [(x.scenario, x.reason) for x in c.regressions] == [("a", "step x: DMA reached memory")]
    assert [(x.scenario, x.reason) for x in c.fixes] == [("b", "old bug")]
    assert [x.scenario for x in c.still_failing] == ["c"]
    assert [x.scenario for x in c.inconclusive] == ["e"]
    assert c.only_after == (("smmuv3-nested", "g"),)
    text = render_text(c)
    assert text[0] == "regressions (base -> tip): 1"
    assert text[1] == "  a [smmuv3-nested]: pass -> fail  step x: DMA reached memory"


def test_a_metric_change_counts_beyond_its_threshold_and_the_spread() -> None:
    base = [r("m", Verdict.PASS, metrics={"map_us": 2.0, "rate": 100.0})]
    tip = [r("m", Verdict.PASS, metrics={"map_us": 2.1, "rate": 150.0})]
    (change,) = compare(base, tip).metrics
    assert (change.metric, change.before, change.after) == ("rate", 100.0, 150.0)
    # A declared threshold for map_us makes its 5% count.
    assert {m.metric for m in compare(base, tip, {"map_us": 0.01}).metrics} == {"map_us", "rate"}
    # Several runs whose spread covers the difference: no change.
    noisy = [r("m", Verdict.PASS, metrics={"rate": v}) for v in (60.0, 100.0, 160.0)]
    assert compare(noisy, tip).metrics == ()
