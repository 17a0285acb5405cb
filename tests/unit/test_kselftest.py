"""Kernel selftests in the guest: the nested-KTAP parser and the per-case
verdicts on real captured guest output (tests/data/kselftest/), and the
known-failure mapping (xfail, XPASS, unlisted FAIL)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Registry
from harness.config.models import KnownFailure, KselftestRun
from harness.config.registry import load_known_failures, load_scenario
from harness.errors import ConfigError
from harness.kernel.selftests import GUEST_DIR
from harness.report import Verdict
from harness.report.results import CaseResult, case_result
from harness.scenario import ScenarioContext, kselftest, ktap, run_scenario
from tests.unit.test_runner import ScriptedGuest, boot_log

DATA = Path(__file__).resolve().parent.parent / "data" / "kselftest"


def kvm_run() -> KselftestRun:
    step = Registry().scenario("kselftest-kvm").steps[0]
    assert step.kselftest is not None
    return step.kselftest


def verdicts(cases: list[kselftest.Case]) -> dict[str, Verdict]:
    return {c.result.name: c.result.verdict for c in cases}


def known(
    case: str,
    targets: tuple[str, ...] = ("mainline-7.3*",),
    profiles: tuple[str, ...] = ("*",),
    failure: str = "why",
) -> KnownFailure:
    return KnownFailure(
        "kvm", case, re.compile(failure), targets, profiles, "a reason long enough", "list.yaml:3"
    )


# ---- the parser on real guest output ---------------------------------------


def test_nested_ktap_kselftest_runner_prefix_and_kunit_indent() -> None:
    text = (
        "TAP version 13\n1..2\n# selftests: s: a\n# TAP version 13\n# 1..2\n# ok 1 x\n"
        "# not ok 2 y # boom\nnot ok 1 selftests: s: a # exit=1\n"
        "  KTAP version 1\n  1..1\n  ok 1 z # SKIP no device\nok 2 b\n"
    )
    tree = ktap.parse_tree(text)
    assert tree.planned == 2 and not tree.trailing
    a, b = tree.nodes
    assert [(n.result.name, n.result.ok, n.result.reason) for n in a.children] == [
        ("x", True, ""),
        ("y", False, "boom"),
    ]
    assert a.result.reason == "exit=1"
    (z,) = b.children
    assert z.result.skipped and z.result.reason == "no device"


def test_real_kvm_run_gives_one_case_per_binary_and_per_subtest() -> None:
    run = kvm_run()
    found = kselftest.cases((DATA / "kvm-7.3-smmuv3-nested.log").read_text(), run)
    v = verdicts(found)
    # every binary asked for has its case, in order, before its subtests
    assert [c.result.name for c in found if c.parent is None] == list(run.tests)
    assert v["arm64/hypercalls"] == Verdict.PASS
    assert v["arm64/hello_el2"] == Verdict.SKIP  # exit 4: SKIP stays skip
    assert v["arm64/vgic_init"] == Verdict.FAIL
    reason = next(c.result.reason for c in found if c.result.name == "arm64/vgic_init")
    assert reason.startswith("exit 254: arm64/vgic_init.c:179: ret && errno == E2BIG")
    assert "dist address beyond IPA limit" in reason and "pid=" not in reason
    # set_id_regs prints KTAP itself: its subtests are cases of their own
    subs = [c for c in found if c.parent == "arm64/set_id_regs"]
    assert len(subs) > 50 and all(c.result.name.startswith("arm64/set_id_regs/") for c in subs)
    assert {c.result.verdict for c in subs} <= {Verdict.PASS, Verdict.SKIP}
    skipped = next(c for c in found if c.result.name == "arm64/hello_el2")
    assert skipped.result.reason  # the test's own SKIP reason, not just "skipped"


def test_real_kselftest_harness_output_gives_every_fixture_test_its_case() -> None:
    # The iommufd binary on a 7.3 kernel WITHOUT CONFIG_IOMMUFD_TEST (its
    # mock IOMMU): every test fails at its first IOMMU_TEST_CMD.
    run = KselftestRun("iommu", ("iommufd",), 300)
    found = kselftest.cases((DATA / "iommufd-7.3-without-iommufd-test.log").read_text(), run)
    binary, *subs = found
    assert binary.result.name == "iommufd" and binary.result.verdict == Verdict.FAIL
    first = "exit 1: iommufd_utils.h:811:simple_close:Expected 0 (0) == ioctl("
    assert binary.result.reason.startswith(first)
    assert len(subs) == 246 and all(c.parent == "iommufd" for c in subs)
    assert subs[0].result.name == "iommufd/iommufd.simple_close"
    assert subs[-1].result.name == "iommufd/iommufd_device_pasid.has_pasid.pasid_attach"
    assert all(c.result.verdict == Verdict.FAIL for c in subs)
    # each subtest's reason is its own diagnostic, not its neighbour's
    assert subs[-1].result.reason.startswith("not ok: iommufd.c:3332:pasid_attach:Expected 0 (0) ==")
    assert all(c.result.name.rsplit(".", 1)[1] + ":" in c.result.reason for c in subs[:20])


def test_iommufd_on_the_selftests_target_real_output() -> None:
    # The iommufd binary on mainline-7.3-selftests (CONFIG_IOMMUFD_TEST),
    # measured once: 203 of 247 cases pass; the hugepage variants fail
    # because mmap(MAP_HUGETLB) fails (no HUGETLBFS in the minimal config).
    run = KselftestRun("iommu", ("iommufd",), 600)
    found = kselftest.cases((DATA / "iommufd-7.3-selftests-target.log").read_text(), run)
    binary, *subs = found
    assert binary.result.verdict == Verdict.FAIL
    assert len(subs) == 246
    failed = {c.result.name for c in subs if c.result.verdict == Verdict.FAIL}
    assert len(failed) == 43
    assert "iommufd/vfio_compat_mock_domain.Ver1v2.huge_map" in failed
    assert "iommufd/iommufd.simple_close" not in failed
    huge = next(c for c in subs if c.result.name == "iommufd/vfio_compat_mock_domain.Ver1v2.huge_map")
    assert huge.result.reason.startswith("not ok: iommufd.c:2791:huge_map:Expected MAP_FAILED")


def test_timeout_is_that_cases_fail_and_the_run_goes_on() -> None:
    # Real guest output: both binaries killed at a 10 s timeout on a loaded host.
    run = KselftestRun("kvm", ("arm64/page_fault_test", "arm64/psci_test"), 10)
    found = kselftest.cases((DATA / "kvm-timeout-7.3-smmuv3-nested.log").read_text(), run)
    assert verdicts(found) == {"arm64/page_fault_test": Verdict.FAIL, "arm64/psci_test": Verdict.FAIL}
    assert all(c.timed_out for c in found)
    # the random seed (and the shell's "Terminated") are not in the reason:
    # the same kernel gives the same words on every run
    assert [c.result.reason for c in found] == ["timed out after 10s (killed)"] * 2


def test_output_cut_short_fails_the_running_case_and_the_rest_are_not_run() -> None:
    run = KselftestRun("kvm", ("a", "b", "c"), 60)
    text = "TAP version 13\n1..3\n# selftests: kvm: a\nok 1 selftests: kvm: a\n# selftests: kvm: b\n# half\n"
    found = kselftest.cases(text, run, "kernel panic: Oops")
    assert verdicts(found) == {"a": Verdict.PASS, "b": Verdict.FAIL, "c": Verdict.NOT_RUN}
    assert found[1].result.reason == "kernel panic: Oops; last output: half"
    assert found[2].result.reason == "not run: kernel panic: Oops"


def test_a_binary_started_beside_the_one_printed_fails_too_when_output_is_cut() -> None:
    run = KselftestRun("kvm", ("a", "b", "c", "d"), 60)
    # a is printed; b started beside it (its own header line), c and d wait.
    text = "TAP version 13\n1..4\n# selftests: kvm: a\n# selftests: kvm: b\n# half of a\n"
    found = kselftest.cases(text, run, "kernel panic: Oops")
    assert verdicts(found) == {
        "a": Verdict.FAIL,
        "b": Verdict.FAIL,
        "c": Verdict.NOT_RUN,
        "d": Verdict.NOT_RUN,
    }
    assert found[0].result.reason == "kernel panic: Oops; last output: half of a"
    assert found[1].result.reason == (
        "kernel panic: Oops (it had started beside a; its output was not printed yet)"
    )


# ---- the guest runner, run by this machine's sh on stand-in binaries --------

# Each stand-in notes that it runs (a file per binary while it runs) and
# what ran beside it; "wait_for X" returns as soon as X has started, or
# fails after 5 s: so "a saw b" holds only if b started while a ran.
STAND_IN = """#!/bin/sh
S={state}; me=$(basename "$0"); touch "$S/running.$me" "$S/started.$me"
wait_for() {{ for i in $(seq 50); do [ -e "$S/started.$1" ] && return 0; sleep 0.1; done; return 1; }}
beside() {{ ls "$S" | sed -n 's/^running\\.//p' | grep -v "^$me$" | tr '\\n' ' '; }}
{body}
rm -f "$S/running.$me"
"""


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    suite, state = tmp_path / "kvm", tmp_path / "state"
    (suite / "arm64").mkdir(parents=True)
    state.mkdir()
    bodies = {
        # a waits for b: it passes only if b ran beside it
        "a": 'echo "a starts"; wait_for b && echo "a saw b" && st=0 || st=1; echo "a ends"',
        "b": 'echo "b out"; echo "b err" >&2; st=1',
        # RUN_ALONE: nothing runs beside it, before or after a pause
        "arm64/arch_timer": 'echo "beside: [$(beside)]"; sleep 0.5; echo "beside: [$(beside)]"; st=4',
        "c": 'echo "c sleeps"; sleep 30; st=0',
        "e": 'printf "no newline at the end"; st=0',
    }
    for name, body in bodies.items():
        path = suite / name
        path.write_text(STAND_IN.format(state=state, body=body + '; rm -f "$S/running.$me"; exit $st'))
        path.chmod(0o755)
    return tmp_path


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="no /bin/sh")
def test_the_runner_runs_two_at_a_time_and_prints_each_binary_in_order(stand_ins: Path) -> None:
    run = KselftestRun("kvm", ("a", "b", "arm64/arch_timer", "c", "d", "e"), 1)
    script = kselftest.command(run).replace(f"/{GUEST_DIR}/kvm", str(stand_ins / "kvm"))
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    found = kselftest.cases(done.stdout, run)
    assert verdicts(found) == {
        "a": Verdict.PASS,  # so b ran beside it
        "b": Verdict.FAIL,
        "arm64/arch_timer": Verdict.SKIP,
        "c": Verdict.FAIL,
        "d": Verdict.FAIL,
        "e": Verdict.PASS,
    }, done.stdout
    tree = ktap.parse_tree(done.stdout)
    out = {n.result.name.removeprefix("selftests: kvm: "): list(n.output) for n in tree.nodes}
    # each binary's output under its own result, whole and in its order
    assert [ln for ln in out["a"] if ln.startswith("a ")] == ["a starts", "a saw b", "a ends"]
    # (a binary that starts while another is printed is announced there)
    assert [ln for ln in out["b"] if not ln.startswith("selftests: kvm: ")] == ["b out", "b err"]
    assert [ln for ln in out["arm64/arch_timer"] if ln.startswith("beside")] == ["beside: []"] * 2
    assert out["e"][-1] == "no newline at the end"
    reasons = {c.result.name: c.result.reason for c in found}
    assert reasons["c"].startswith("timed out after 1s (killed)")
    assert reasons["d"] == "missing from the image"
    assert [n.result.number for n in tree.nodes] == [1, 2, 3, 4, 5, 6]


def test_bail_out_is_raised() -> None:
    with pytest.raises(ValueError, match="not in the image"):
        kselftest.cases("Bail out! kselftest suite kvm is not in the image\n", kvm_run())


# ---- the known-failure mapping ---------------------------------------------


def case(name: str, verdict: Verdict, parent: str | None = None) -> kselftest.Case:
    return kselftest.Case(kselftest.Observed(name, verdict, "why" if verdict == Verdict.FAIL else ""), parent)


def test_listed_failure_is_xfail_listed_pass_is_xpass_unlisted_failure_is_fail() -> None:
    found = [
        case("listed-fails", Verdict.FAIL),
        case("listed-passes", Verdict.PASS),
        case("other", Verdict.FAIL),
    ]
    results, applied = kselftest.classify(
        found, [known("listed-fails"), known("listed-passes")], "kvm", "mainline-7.3", "smmuv3-nested"
    )
    by = {r.name: r for r in results}
    assert by["listed-fails"].verdict == Verdict.XFAIL
    assert by["listed-fails"].reason == "known failure: a reason long enough (got: why)"
    assert by["listed-passes"].verdict == Verdict.XPASS and "list.yaml:3" in by["listed-passes"].reason
    assert by["other"].verdict == Verdict.FAIL
    assert [a["matched"] for a in applied] == [["listed-fails: fail"], ["listed-passes: pass"]]


def test_a_known_failure_covers_only_its_own_assertion() -> None:
    """A listed case that fails another way (another assertion, a crash, a
    timeout) stays a FAIL and says which known failure it is not."""
    assertion = "arm64/vgic_init.c:179: ret && errno == E2BIG"
    other = "arm64/vgic_init.c:201: ret == 0 failed"
    timed_out = kselftest.Case(kselftest.Observed("t3", Verdict.FAIL, assertion), None, timed_out=True)
    found = [
        kselftest.Case(kselftest.Observed("t1", Verdict.FAIL, assertion), None),
        kselftest.Case(kselftest.Observed("t2", Verdict.FAIL, other), None),
        timed_out,
    ]
    entries = [known(t, failure=r"vgic_init\.c:\d+: ret && errno == E2BIG") for t in ("t1", "t2", "t3")]
    results, _ = kselftest.classify(found, entries, "kvm", "mainline-7.3", "smmuv3-nested")
    by = {r.name: r for r in results}
    assert by["t1"].verdict == Verdict.XFAIL
    assert by["t2"].verdict == Verdict.FAIL
    assert by["t2"].reason == (
        f"{other} (not its known failure /vgic_init\\.c:\\d+: ret && errno == E2BIG/, list.yaml:3)"
    )
    assert by["t3"].verdict == Verdict.FAIL and "not its known failure" in by["t3"].reason


def test_scope_target_profile_and_suite() -> None:
    found = [case("t", Verdict.FAIL)]
    for entry, target, profile in [
        (known("t", targets=("stable-6.12",)), "mainline-7.3", "smmuv3-nested"),
        (known("t", profiles=("virtio-iommu",)), "mainline-7.3", "smmuv3-nested"),
        (replace(known("t"), suite="iommu"), "mainline-7.3", "smmuv3-nested"),
    ]:
        results, applied = kselftest.classify(found, [entry], "kvm", target, profile)
        assert results[0].verdict == Verdict.FAIL and applied == []
    entry = known("t", profiles=("smmuv3-*",))
    results, _ = kselftest.classify(found, [entry], "kvm", "mainline-7.3", "smmuv3-s2")
    assert results[0].verdict == Verdict.XFAIL


def test_binary_failing_only_through_listed_subtests_is_xfail_not_otherwise() -> None:
    found = [
        case("bin", Verdict.FAIL),
        case("bin/a", Verdict.FAIL, "bin"),
        case("bin/b", Verdict.PASS, "bin"),
    ]
    results, _ = kselftest.classify(found, [known("bin/a")], "kvm", "mainline-7.3", "p")
    assert [r.verdict for r in results] == [Verdict.XFAIL, Verdict.XFAIL, Verdict.PASS]
    found.append(case("bin/c", Verdict.FAIL, "bin"))
    results, _ = kselftest.classify(found, [known("bin/a")], "kvm", "mainline-7.3", "p")
    assert [r.verdict for r in results] == [Verdict.FAIL, Verdict.XFAIL, Verdict.PASS, Verdict.FAIL]


def test_the_subtest_rule_is_the_verdict_policys_and_timeouts_stay_fails() -> None:
    """`case_result` applies the subtest rule itself (kselftest only reports
    what the output said); a binary killed at its timeout stays a FAIL."""
    subs = [CaseResult("bin/a", Verdict.XFAIL, "known"), CaseResult("bin/b", Verdict.PASS)]
    assert case_result("bin", Verdict.FAIL, "exit 1", subtests=subs) == CaseResult(
        "bin", Verdict.XFAIL, "only known failures among its subtests: bin/a"
    )
    assert (
        case_result("bin", Verdict.FAIL, "timed out", timed_out=True, subtests=subs).verdict == Verdict.FAIL
    )
    assert case_result("bin", Verdict.PASS, subtests=subs) == CaseResult("bin", Verdict.PASS)


@pytest.mark.parametrize("constructor", ["CaseResult", "ScenarioResult"])
def test_only_the_verdict_policy_constructs_a_result(constructor: str) -> None:
    """No module but harness/report/results.py (`case_result`,
    `scenario_result` and its placeholders) calls CaseResult(...) or
    ScenarioResult(...): kselftest.py builds `Observed`, the recorder plans
    `planned_cell`s, the policy makes every result."""
    import ast

    import harness

    callers = []
    for path in sorted(Path(harness.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == constructor
            ):
                callers.append(path.name)
    assert set(callers) == {"results.py"}


def test_shipped_list_loads_and_a_bad_entry_names_file_and_line(tmp_path: Path) -> None:
    entries = load_known_failures()
    assert any(e.case == "arm64/vgic_init" and "kvm_init_ipa_range" in e.reason for e in entries)
    bad = tmp_path / "kf.yaml"
    bad.write_text("known_failures:\n  - suite: kvm\n    case: x\n    targets: [a]\n    reasn: typo\n")
    with pytest.raises(ConfigError, match=r"kf\.yaml:\d+"):
        load_known_failures(bad)


# ---- the scenario, end to end on a scripted guest --------------------------


def scenario_ctx(known_failures: tuple[KnownFailure, ...]) -> ScenarioContext:
    reg = Registry()
    p = reg.profile("smmuv3-nested")
    return ScenarioContext(
        target=reg.target("mainline-7.3"),
        profile=p,
        capabilities=p.features | {"kvm", "kselftest:kvm"},
        known_failures=known_failures,
    )


def run_kvm(known_failures: tuple[KnownFailure, ...], data_dir: Path, output: str | None = None) -> object:
    text = output if output is not None else (DATA / "kvm-7.3-smmuv3-nested.log").read_text()
    guest = ScriptedGuest(boot_log(data_dir), lambda cmd: (text, 0, ""))
    return run_scenario(Registry().scenario("kselftest-kvm"), guest, scenario_ctx(known_failures))


def test_scenario_with_the_shipped_list_is_xfail_with_every_non_pass_explained(data_dir: Path) -> None:
    from harness.report.results import ScenarioResult

    result = run_kvm(load_known_failures(), data_dir)
    assert isinstance(result, ScenarioResult)
    assert result.verdict == Verdict.XFAIL, result.reason
    assert "arm64/vgic_init" in result.reason
    assert all(c.reason for c in result.cases if c.verdict != Verdict.PASS)
    assert any(e["case"] == "arm64/vgic_init" for e in result.evidence["known_failures"])


def test_scenario_goes_red_without_the_list_and_xpass_when_a_listed_case_passes(data_dir: Path) -> None:
    from harness.report.results import ScenarioResult

    red = run_kvm((), data_dir)
    assert isinstance(red, ScenarioResult) and red.verdict == Verdict.FAIL
    assert "arm64/vgic_init (exit 254" in red.reason
    stale = run_kvm((*load_known_failures(), known("arm64/psci_test")), data_dir)
    assert isinstance(stale, ScenarioResult) and stale.verdict == Verdict.XPASS
    assert "arm64/psci_test" in stale.reason


def test_kselftest_step_schema(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nsteps:\n  - name: k\n    kselftest: {suite: kvm, tests: [a], timeout_s: 10}\n")
    step = load_scenario(f).steps[0]
    assert step.kselftest == KselftestRun("kvm", ("a",), 10.0)
    assert step.timeout_s == 75.0 and step.events_since == "step"
    f.write_text("name: s\nsteps:\n  - name: k\n    kselftest: {suite: nope, tests: [a]}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:4"):
        load_scenario(f)


def test_report_shows_every_case_and_the_known_failure_list(data_dir: Path, tmp_path: Path) -> None:
    from harness.report import RunResult
    from harness.report.html import render
    from harness.report.results import ScenarioResult

    result = run_kvm(load_known_failures(), data_dir)
    assert isinstance(result, ScenarioResult)
    page = render(RunResult("0.2.0", "qemu", "pkvm-harness run", (), (result,)), tmp_path)
    cases = page.split('<table class="cases">', 1)[1].split("</table>", 1)[0]
    assert cases.count("<tr class=") == len(result.cases)
    first = cases.split('<tr class="', 2)[1]
    assert first.startswith("xfail") and "arm64/vgic_init" in first  # not-passed first
    known_table = page.split('<table class="known">', 1)[1].split("</table>", 1)[0]
    assert "kvm: arm64/vgic_init" in known_table and "arm64/vgic_init: fail" in known_table
    assert "kvm_init_ipa_range" in known_table and "known-failures.yaml:" in known_table


def test_every_data_directory_is_installed_by_pip() -> None:
    """kselftests/ joins the data search path; `pip install .` must ship it
    like the other data directories ([tool.setuptools.data-files])."""
    import tomllib

    from harness import paths

    pyproject = tomllib.loads((paths.REPO_ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["data-files"]
    for name in paths.DATA_DIRS:
        assert f"share/pkvm-harness/{name}" in shipped, name
    assert shipped["share/pkvm-harness/kselftests"] == ["kselftests/*.yaml"]


def test_a_suite_is_built_only_for_scenarios_the_kernel_can_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kselftest-iommufd needs CONFIG_IOMMUFD_TEST: on mainline-7.3 it skips,
    # so `make run` must not spend minutes building the iommu suite for it.
    from types import SimpleNamespace
    from typing import Any

    from harness import pipeline

    reg = Registry()
    needs = pipeline.selftest_suites([reg.scenario("kselftest-kvm"), reg.scenario("kselftest-iommufd")])
    assert {n.suite for n in needs} == {"kvm", "iommu"}
    built: list[str] = []

    def build_selftests(target: object, suite: str, upto: int | None = None, jobs: int | None = None) -> Any:
        built.append(suite)
        return SimpleNamespace(suite=suite, tests=(), cached=True, metadata={})

    monkeypatch.setattr(pipeline, "build_selftests", build_selftests)
    config = tmp_path / ".config"
    image: Any = SimpleNamespace(metadata={})
    image.with_selftests = lambda builds: image
    kernel: Any = SimpleNamespace(config=config, version="7.3.4", system_map=tmp_path / "System.map")
    artifacts = pipeline.Artifacts(kernel=kernel, image=image, seconds=0.0)
    target = reg.target("mainline-7.3")
    config.write_text("CONFIG_VFIO=y\nCONFIG_IOMMUFD=y\n")
    pipeline.with_selftests(artifacts, target, None, needs)
    assert built == ["kvm"]
    built.clear()
    config.write_text("CONFIG_VFIO=y\nCONFIG_IOMMUFD=y\nCONFIG_IOMMUFD_TEST=y\n")
    pipeline.with_selftests(artifacts, target, None, needs)
    assert built == ["iommu", "kvm"]


def test_a_kernel_only_series_reuses_the_bases_selftests(tmp_path: Path) -> None:
    """A negative test in kernel code (kvm-memslots-cap-short) builds the
    same selftest binaries as its base: no second ~200 s suite build; a
    series that touches tools/ or the uapi headers gets its own."""
    from harness.config.models import SeriesSpec
    from harness.kernel.selftests import touches_selftest_inputs
    from harness.kernel.series import load_series

    series_dir = Path(__file__).resolve().parent.parent / "data" / "series"
    for kernel_only in ("kvm-memslots-cap-short.patch", "test-enable-cacheable-pfnmap.patch"):
        assert not touches_selftest_inputs(load_series(SeriesSpec("mbox", str(series_dir / kernel_only))))
    for path in ("tools/testing/selftests/kvm/lib/kvm_util.c", "include/uapi/linux/kvm.h", "Makefile"):
        patch = tmp_path / f"{path.replace('/', '-')}.diff"
        patch.write_text(f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n")
        assert touches_selftest_inputs(load_series(SeriesSpec("mbox", str(patch)))), path
