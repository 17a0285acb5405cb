"""`pkvm-harness kcidb`: KCIDB I/O data validated with kcidb-io's own
validator (its latest schema version), every verdict mapped as the README
says. The runs are real: a whole-suite LAVA job imported through the
harness (pass, skip, xfail, kselftest cases, metrics), and two captured
`pkvm-harness run`s of pvm-share-dma-* on mainline-7.3 (FAIL) and with the
TEST-ENABLEMENT series (XPASS, XFAIL); an ERROR (QEMU would not start) and
a cell the run never reached are added through the verdict policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kcidb_io
import pytest

from harness.cli import main
from harness.config import Registry
from harness.errors import MachineError
from harness.export import kcidb, lava_import
from harness.report import RunRecorder, ScenarioResult, TargetRecord, Verdict, load_results, verdicts
from tests.unit.series_fixture import FIRST_ERROR, build_break_check

DATA = Path(__file__).resolve().parent.parent / "data"
WHOLE_SUITE = DATA / "lava" / "mainline-7.3-smmuv3-nested-whole-suite"
MAINLINE = DATA / "kcidb" / "share-dma-mainline"  # 4 x FAIL
TEST_ENABLE = DATA / "kcidb" / "share-dma-test-enable"  # XPASS (type1), XFAIL (iommufd)

# The mapping the README documents (section "KCIDB").
README_STATUS = {
    "pass": "PASS",
    "fail": "FAIL",
    "error": "ERROR",
    "skip": "SKIP",
    "xfail": "FAIL",
    "xpass": "PASS",
    "not-run": "MISS",
}


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    (dst / "results.json").write_text((src / "results.json").read_text())
    return dst


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results directory with PASS, FAIL, ERROR, SKIP, XFAIL, XPASS and
    NOT_RUN cells, written by the recorder (so it is a results.json every
    reader accepts)."""
    tmp = tmp_path_factory.mktemp("mixed")
    lava_import.import_results(WHOLE_SUITE, tmp / "lava", Registry())
    suite = load_results(tmp / "lava")
    failing = [r for r in load_results(MAINLINE).results if r.profile == "smmuv3-nested"]
    enabled = [r for r in load_results(TEST_ENABLE).results if r.profile == "virtio-iommu"]
    verdict, reason = verdicts.launch_failure(MachineError("qemu-system-aarch64 exited 1 at launch"))
    broken = ScenarioResult("boot-health", "smmuv3-s2", "mainline-7.3", verdict, reason, 0.4)
    never = ScenarioResult(
        "dma-roundtrip", "smmuv3-s2", "mainline-7.3", Verdict.NOT_RUN, "interrupted by SIGINT", 0.0
    )
    rec = RunRecorder(tmp / "run", "0.3.0", suite.qemu_version, "pkvm-harness run (composed)")
    for t in suite.targets:
        rec.add_target(t)
    for b in suite.boots:
        rec.add_boot(b)
    for r in (*suite.results, *failing, *enabled, broken, never):
        rec.record(r)
    rec.finish({})
    return tmp / "run"


def _kcidb(directory: Path, *extra: str) -> dict[str, Any]:
    out = directory.parent / f"{directory.name}-kcidb.json"
    assert main(["kcidb", str(directory), "--output", str(out), *extra]) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    kcidb_io.schema.LATEST.validate(data)  # kcidb-io's own validator, again, on what was written
    assert data["version"] == {"major": kcidb_io.schema.LATEST.major, "minor": kcidb_io.schema.LATEST.minor}
    return data


def _by_path(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["path"]: t for t in data["tests"]}


def test_the_verdict_tables_cover_every_verdict() -> None:
    assert set(verdicts.KCIDB) == set(Verdict) == set(verdicts.KCIDB_KNOWN_ISSUE_PRESENT)
    statuses = set(kcidb_io.schema.LATEST.json["$defs"]["status"]["enum"])
    assert set(verdicts.KCIDB.values()) <= statuses


def test_a_run_with_every_verdict_validates_and_maps_as_the_readme_says(mixed_run: Path) -> None:
    run = load_results(mixed_run)
    assert {str(r.verdict) for r in run.results} == set(README_STATUS)  # every verdict is in it
    data = _kcidb(mixed_run, "--origin", "pkvm_ci")
    tests = _by_path(data)
    for r in run.results:
        t = tests[f"pkvm.{r.scenario}.{r.profile}"]
        assert (t["status"], t["misc"]["harness_verdict"]) == (README_STATUS[str(r.verdict)], str(r.verdict))
        assert t["id"].startswith("pkvm_ci:") and t["origin"] == "pkvm_ci"
    assert len(data["checkouts"]) == len(data["builds"]) == 1
    assert data["builds"][0]["architecture"] == "arm64"
    incidents: dict[str, list[dict[str, Any]]] = {}
    for inc in data["incidents"]:
        incidents.setdefault(inc.get("test_id", ""), []).append(inc)
    issues = {i["id"]: i for i in data["issues"]}

    def known(path: str) -> list[tuple[bool, dict[str, bool]]]:
        return [(i["present"], issues[i["issue_id"]]["culprit"]) for i in incidents[tests[path]["id"]]]

    # XFAIL: FAIL with its known issue present; XPASS: PASS with it absent.
    assert known("pkvm.pvm-dma-isolation.smmuv3-nested") == [(True, {"code": True})]
    assert known("pkvm.pvm-share-dma-iommufd.virtio-iommu") == [(True, {"code": True})]
    assert known("pkvm.pvm-share-dma-type1.virtio-iommu") == [(False, {"code": True})]
    # A FAIL's signature blames the code, an ERROR's the harness.
    assert known("pkvm.pvm-share-dma-type1.smmuv3-nested") == [(True, {"code": True})]
    assert known("pkvm.boot-health.smmuv3-s2") == [(True, {"harness": True})]
    fail = tests["pkvm.pvm-share-dma-type1.smmuv3-nested"]
    assert "host DMA mapping survived donation" in fail["log_excerpt"]
    assert issues[incidents[fail["id"]][0]["issue_id"]]["id"].endswith(
        "signature.pvm-share-dma-type1/share-dma-type1:"
    )
    # No issue for what passed, skipped or never ran.
    for path in (
        "pkvm.dma-roundtrip.smmuv3-nested",
        "pkvm.dma-hotplug.smmuv3-nested",
        "pkvm.dma-roundtrip.smmuv3-s2",
    ):
        assert tests[path]["id"] not in incidents


def test_steps_cases_and_metrics_are_subtests(mixed_run: Path) -> None:
    tests = _by_path(_kcidb(mixed_run))
    cell = tests["pkvm.dma-fault-unmapped.smmuv3-nested"]
    assert cell["environment"]["misc"]["profile"] == "smmuv3-nested"
    assert cell["environment"]["misc"]["smmu_stage"] == "nested"  # the QEMU profile, from profiles/
    assert cell["output_files"][0]["name"] == "console.log"
    assert cell["log_url"].startswith("file:///") and cell["log_url"].endswith("console.log")
    assert tests["pkvm.dma-fault-unmapped.smmuv3-nested.smmu-reported-the-fault"]["status"] == "PASS"
    assert tests["pkvm.dma-fault-unmapped.smmuv3-nested.virtio-iommu-reported-the-fault"]["status"] == "SKIP"
    cases = [t for p, t in tests.items() if p.startswith("pkvm.kselftest-kvm.smmuv3-nested.")]
    assert len(cases) > 100  # one subtest per kselftest case
    vgic = [t for t in cases if t["misc"].get("case") == "arm64/vgic_init"]
    assert vgic and vgic[0]["status"] == "FAIL" and vgic[0]["misc"]["harness_verdict"] == "xfail"
    bench = tests["pkvm.dma-map-benchmark.smmuv3-nested.map_us"]
    assert bench["status"] == "DONE" and bench["number"] == {"value": 6.1, "unit": "us", "prefix": "metric"}


def test_captured_runs_validate_with_the_series_as_the_checkout(tmp_path: Path) -> None:
    data = _kcidb(_copy(TEST_ENABLE, tmp_path / "enabled"))
    (checkout,) = data["checkouts"]
    assert checkout["misc"]["series"].endswith("tests/data/series/test-enable-share-dma-type1.patch")
    assert len(checkout["patchset_hash"]) == 64  # read from the series, where the run read it
    (build,) = data["builds"]
    assert build["compiler"].startswith("aarch64-linux-gnu-gcc") and build["duration"] == 60.1
    assert build["config_name"].startswith("base+pkvm+smmuv3")
    data = _kcidb(_copy(MAINLINE, tmp_path / "mainline"))
    assert {t["status"] for t in data["tests"] if t["path"].count(".") == 2} == {"FAIL"}
    assert data["checkouts"][0]["patchset_hash"] == ""  # no series


def test_a_series_checks_file_validates_and_names_the_build_break(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _kcidb(build_break_check(tmp_path, monkeypatch))
    checkouts = data["checkouts"]
    assert [c["misc"]["patch"] for c in checkouts] == [1, 2, 3]
    assert all(c["valid"] for c in checkouts)
    assert checkouts[1]["message_id"] == "20261122000000.2-3-review@example.org"
    assert len({c["patchset_hash"] for c in checkouts}) == 3  # one per prefix
    assert [b["status"] for b in data["builds"]] == ["PASS", "FAIL", "PASS"]
    assert FIRST_ERROR in data["builds"][1]["comment"]
    (incident,) = [i for i in data["incidents"] if i.get("build_id") == data["builds"][1]["id"]]
    assert incident["present"]


def test_what_the_schema_rejects_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy(MAINLINE, tmp_path / "run")
    monkeypatch.setattr(kcidb, "path_part", lambda name: name + ".")  # a path ending in a dot
    with pytest.raises(kcidb.KcidbError, match=r"tests/0/path"):
        kcidb.write_kcidb(run, None)
    assert not (run / "kcidb.json").exists()


def test_a_directory_without_results_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kcidb", str(tmp_path)]) == 2
    assert "holds neither results.json nor series.json" in capsys.readouterr().err


def test_a_kernel_from_a_git_url_names_its_repository_and_commit(tmp_path: Path) -> None:
    run = _copy(MAINLINE, tmp_path / "git")
    data = json.loads((run / "results.json").read_text())
    url, commit = "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git", "ab" * 20
    harness = data["targets"][0]["kernel"]["reproducer"]["harness"]
    data["targets"][0]["kernel"]["reproducer"]["harness"] = harness.replace(
        " --toolchain", f" --source {url}@{commit} --toolchain"
    )
    (run / "results.json").write_text(json.dumps(data))
    (checkout,) = _kcidb(run)["checkouts"]
    assert (checkout["git_repository_url"], checkout["git_commit_hash"]) == (url, commit)
    (checkout,) = _kcidb(_copy(MAINLINE, tmp_path / "tarball"))["checkouts"]
    assert "git_commit_hash" not in checkout  # the harness's commit of a tarball is not upstream's
    assert checkout["misc"]["source"].startswith("tarball:linux-source-7.3.tar.xz@sha256:")


MAKE_RUN = DATA / "kcidb" / "make-run-interrupted"  # make run's command; SIGTERM after 26 of 52 cells


def test_make_runs_file_validates(tmp_path: Path) -> None:
    run = load_results(MAKE_RUN)
    assert run.command == "pkvm-harness run --target mainline-7.3 --output /tmp/dl/suite"
    data = _kcidb(_copy(MAKE_RUN, tmp_path / "main"))
    tests = _by_path(data)
    for r in run.results:
        assert tests[f"pkvm.{r.scenario}.{r.profile}"]["status"] == README_STATUS[str(r.verdict)]
    envs = {t["environment"]["misc"]["iommu"] for p, t in tests.items() if p.count(".") == 2}
    assert envs == {"smmuv3", "virtio-iommu"}
    assert tests["pkvm.dma-map-benchmark.virtio-iommu.map_us"]["status"] == "DONE"
    assert not data["incidents"]  # nothing failed: no issue is claimed


def test_files_under_the_directory_are_named_under_the_artifact_url(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    (run / "boots" / "p-1").mkdir(parents=True)
    (run / "boots" / "p-1" / "console.log").write_text("[    0.000000] Booting Linux\n")
    rec = RunRecorder(run, "0.3.0", "QEMU emulator version 10.0.2", "pkvm-harness run")
    rec.add_target(
        TargetRecord("mainline-7.3", {"kernel_version": "7.3.4", "image": "/nonexistent/Image"}, {})
    )
    console = str(run / "boots" / "p-1" / "console.log")
    rec.record(
        ScenarioResult(
            "boot-health", "smmuv3-nested", "mainline-7.3", Verdict.PASS, "", 1.0, console_log=console
        )
    )
    rec.finish({})
    data = _kcidb(run, "--artifact-url", "https://lab.example/pkvm/r1/")
    (test,) = data["tests"]
    assert test["log_url"] == "https://lab.example/pkvm/r1/boots/p-1/console.log"
    assert test["output_files"] == [{"name": "console.log", "url": test["log_url"]}]
