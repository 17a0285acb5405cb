"""The bisection's search on scripted outcomes (no build, no boot): a patch
that does not build is skipped like `git bisect skip`, away from the bad one
(the answer stands) or just before it (the answer is the range). The e2e
test bisects a real series once (tests/e2e/test_series.py); these two cases
run end to end in `make test-full`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Registry
from harness.config.models import SeriesSpec
from harness.series.bisect import Bisector, StepOutcome, max_bisection_boots

REVIEW = Path(__file__).resolve().parent.parent / "data" / "series-review"


class ScriptedBisector(Bisector):
    """Each prefix k has a fixed state; a "skip" is a prefix that does not build."""

    def __init__(self, output: Path, states: dict[int, str]) -> None:
        reg = Registry()
        series = SeriesSpec("mbox", str(REVIEW / "bisect-dma.mbox"))
        target = replace(reg.target("mainline-7.3"), series=series)
        super().__init__(target, reg.profile("smmuv3-nested"), (reg.scenario("boot-health"),), output, 1)
        self.states = states

    def test(self, k: int, role: str) -> StepOutcome:
        state = self.states[k]
        booted = state != "skip"
        reason = "does not build/apply: scripted" if state == "skip" else f"scripted {state}"
        signature = ("boot-health/x",) if state == "bad" else ()
        return self._add(StepOutcome(k, state, reason, signature, role, None, booted))


def states(bad_from: int, skipped: set[int], n: int = 7) -> dict[int, str]:
    return {k: "skip" if k in skipped else ("bad" if k >= bad_from else "good") for k in range(n + 1)}


def test_a_patch_that_does_not_build_away_from_the_bad_one_is_skipped(tmp_path: Path) -> None:
    report = ScriptedBisector(tmp_path, states(4, {2})).run()
    assert (report.verdict, report.first_bad) == ("found", 4)
    assert all(s.state != "bad" for s in report.steps if s.patch == 2)
    bisection = [s for s in report.steps if s.role == "bisect" and s.booted]
    assert len(bisection) <= max_bisection_boots(7)
    assert [s.patch for s in report.steps if s.role == "confirm"] == [4, 3]
    assert (tmp_path / "reproduce.sh").read_text().count("--upto 4") == 1


@pytest.mark.parametrize(("skipped", "candidates"), [({3}, (3, 4)), ({2, 3}, (2, 3, 4))])
def test_unbuildable_patches_just_before_the_bad_one_give_the_range(
    tmp_path: Path, skipped: set[int], candidates: tuple[int, ...]
) -> None:
    report = ScriptedBisector(tmp_path, states(4, skipped)).run()
    assert report.verdict == "ambiguous"
    assert report.candidates == candidates
    assert report.reason == (
        f"the first bad patch is one of {', '.join(map(str, candidates))} (skipped: untestable)"
    )
    assert not (tmp_path / "reproduce.sh").exists()


def test_a_base_that_fails_is_nothing_to_bisect(tmp_path: Path) -> None:
    report = ScriptedBisector(tmp_path, states(0, set())).run()
    assert report.verdict == "error" and report.reason.startswith("nothing to bisect: the base is bad")
