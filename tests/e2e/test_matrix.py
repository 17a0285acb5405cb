"""The matrix on real boots: -j 2 gives the verdicts of -j 1, shards merge
into the same cells, and an interrupted matrix keeps what finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report import Verdict, load_results
from tests.e2e.conftest import harness, interrupt_after_first_cell, qemu_pids

MATRIX = """\
name: e2e-small
targets: [mainline-7.3]
profiles: [smmuv3-nested, virtio-iommu]
scenarios: [boot-health, dma-roundtrip]
"""


def verdicts(path: Path) -> dict[tuple[str, str], str]:
    return {(r.profile, r.scenario): str(r.verdict) for r in load_results(path).results}


@pytest.mark.usefixtures("no_leaked_qemu")
def test_two_workers_give_the_verdicts_of_one_and_shards_merge_to_the_same_cells(tmp_path: Path) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    one = harness("run", "--matrix", str(matrix), "-j", "1", output=tmp_path / "j1")
    two = harness("run", "--matrix", str(matrix), "-j", "2", output=tmp_path / "j2")
    assert one.rc == 0 and two.rc == 0, (one.stderr[-1500:], two.stderr[-1500:])
    assert verdicts(tmp_path / "j1") == verdicts(tmp_path / "j2")
    assert len(verdicts(tmp_path / "j1")) == 4
    # Concurrent boots log with a prefix each.
    assert "[machine] [mainline-7.3/virtio-iommu] booting" in two.stderr
    assert "[progress] 4/4 cells done" in two.stderr
    # CI's shards: each a single command, then merged.
    for i in (1, 2):
        shard = harness("run", "--matrix", str(matrix), "--shard", f"{i}/2", output=tmp_path / f"s{i}")
        assert shard.rc == 0, shard.stderr[-1500:]
        assert len(verdicts(tmp_path / f"s{i}")) == 2
    merged = harness("merge", str(tmp_path / "s1"), str(tmp_path / "s2"), output=tmp_path / "merged")
    assert merged.rc == 0
    assert verdicts(tmp_path / "merged") == verdicts(tmp_path / "j1")


@pytest.mark.usefixtures("no_leaked_qemu")
def test_sigint_in_the_middle_of_a_parallel_matrix_keeps_the_finished_cells(tmp_path: Path) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        MATRIX.replace("[boot-health, dma-roundtrip]", "[boot-health, vm-lifecycle, dma-roundtrip]")
    )
    rc = interrupt_after_first_cell(["run", "--matrix", str(matrix), "-j", "2"], tmp_path / "out")
    results = tmp_path / "out" / "results.json"
    assert rc == 130
    run = load_results(results)  # valid against the schema
    assert not run.complete and run.interrupted == "interrupted by SIGINT"
    finished = [r for r in run.results if r.verdict != Verdict.NOT_RUN]
    unfinished = [r for r in run.results if r.verdict == Verdict.NOT_RUN]
    assert finished and all(r.verdict == Verdict.PASS for r in finished)
    assert unfinished and all(r.reason == "interrupted by SIGINT" for r in unfinished)
    assert not qemu_pids(str(tmp_path))
