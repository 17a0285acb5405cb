"""dma-fuzz (issue 20) finds what the fixed DMA scenarios miss. Three
NEGATIVE TEST series, each missed by every fixed DMA scenario (`full`):

- smmu-inv-range-short.patch: the SMMU range invalidation after a
  multi-page unmap stops one page short. The model names a stale
  translation and the minimized reproducer is short. Fuzzing finds it with
  seed 3, the third seed PKVM_HARNESS_FUZZ_SECONDS tries (`full`: ~110 s);
  replaying that seed (PKVM_HARNESS_FUZZ_SEED) is the fast check.
- smmu-unmap-keeps-last-page.patch: a multi-page unmap of an iommufd
  domain leaves its last page's PTE valid. iommufd seed 3 writes into it
  after the unmap: a stale translation that needs no DMA before the unmap
  to show (`full`).
- smmu-remap-keeps-old-perm.patch: a remapped IOVA keeps the permission of
  its previous mapping. Seed 8 remaps a read-only IOVA read-write and its
  write is blocked: the model names the stale permission (`full`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SERIES, run_broken, run_scenarios

SERIES_NAME = "smmu-inv-range-short.patch"
KEEPS_LAST_PAGE = "smmu-unmap-keeps-last-page.patch"
KEEPS_OLD_PERM = "smmu-remap-keeps-old-perm.patch"


def assert_stale_translation(result: dict[str, Any], seed: str) -> None:
    reason = str(result["reason"])
    assert re.match(
        rf"step fuzz-type1: the IOMMU did not do what the model predicts: seed {seed} \(type1\) op \d+ ",
        reason,
    ), reason
    assert ": stale-translation: " in reason, reason
    assert "model state: mapped:" in reason and "minimized to" in reason
    assert re.search(rf"\(replay: PKVM_HARNESS_FUZZ_SEED={seed}, or in the guest: edu-dma ", reason), reason
    failure = result["evidence"]["dma_fuzz_failure"]
    assert failure["backend"] == "type1"
    assert failure["kind"] == "stale-translation"
    ops = failure["minimized_ops"]
    assert 2 <= len(ops) <= 10, ops
    # the shrunk sequence still maps, unmaps and DMAs, and still fails so
    assert any(o.startswith("map:") for o in ops) and any(o.startswith("unmap:") for o in ops)
    assert any(o.startswith(("dw:", "dr:")) for o in ops)
    assert "(stale translation)" in failure["minimized_mismatch"]


@pytest.mark.usefixtures("no_leaked_qemu")
def test_replaying_the_failing_seed_names_the_stale_translation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PKVM_HARNESS_FUZZ_SEED", "0x3")
    result = run_broken(tmp_path, SERIES_NAME, "smmuv3-nested", "dma-fuzz")
    assert_stale_translation(result, "0x3")
    assert str(result["reason"]).startswith(
        "step fuzz-type1: the IOMMU did not do what the model predicts: seed 0x3 (type1)"
        " op 23 (device write 0x2002bad4+4): stale-translation: a write to 0x2002bad4+4 (unmapped)"
        " landed in the mapping of op 10, unmapped at op 17 (stale translation)"
    )


@pytest.mark.full
@pytest.mark.usefixtures("no_leaked_qemu")
def test_fuzzing_for_a_minute_finds_the_stale_translation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default seed (1) does not probe a stale last page within its 32
    # operations; fuzzing on for a minute does.
    monkeypatch.setenv("PKVM_HARNESS_FUZZ_SECONDS", "60")
    result = run_broken(tmp_path, SERIES_NAME, "smmuv3-nested", "dma-fuzz")
    assert_stale_translation(result, "0x[0-9a-f]+")
    seeds = [r["seed"] for r in result["evidence"]["dma_fuzz_runs"]]
    assert seeds[0] == 1 and len(seeds) > 1, seeds


def replay_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, series: str, seed: str, reason: str
) -> tuple[dict[str, Any], list[str]]:
    """Replays dma-fuzz's `seed` (PKVM_HARNESS_FUZZ_SEED) on smmuv3-nested
    with `series`: its FAIL reason starts with `reason` and names the replay,
    and it was shrunk to at most 10 operations. (The result, the shrunk
    sequence.)"""
    monkeypatch.setenv("PKVM_HARNESS_FUZZ_SEED", seed)
    result = run_broken(tmp_path, series, "smmuv3-nested", "dma-fuzz")
    got = str(result["reason"])
    assert got.startswith(reason), got
    assert f"(replay: PKVM_HARNESS_FUZZ_SEED={seed}, or in the guest: edu-dma " in got, got
    ops = [str(o) for o in result["evidence"]["dma_fuzz_failure"]["minimized_ops"]]
    assert 2 <= len(ops) <= 10, ops
    return result, ops


@pytest.mark.full
@pytest.mark.usefixtures("no_leaked_qemu")
def test_replaying_seed_3_names_the_page_an_unmap_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed 3's op 17 unmaps 0x20028000+0x4000 (op 10's mapping) and op 23
    # writes into its last page. The series breaks iommufd domains only: the
    # type1 step (seed 3 too) passes, the iommufd step fails.
    result, ops = replay_broken(
        tmp_path,
        monkeypatch,
        KEEPS_LAST_PAGE,
        "0x3",
        "step fuzz-iommufd: the IOMMU did not do what the model predicts (iommufd): seed 0x3 (iommufd)"
        " op 23 (device write 0x2002bad4+4): stale-translation: a write to 0x2002bad4+4 (unmapped)"
        " landed in the mapping of op 10, unmapped at op 17 (stale translation); model state: mapped: ",
    )
    assert "0x2002b000 (pool 0x12000, unmapped op 17)" in result["reason"]
    runs = [(r["seed"], r["backend"], r["verdict"]) for r in result["evidence"]["dma_fuzz_runs"]]
    assert runs == [(3, "type1", "pass"), (3, "iommufd", "fail")], runs
    failure = result["evidence"]["dma_fuzz_failure"]
    assert (failure["backend"], failure["kind"]) == ("iommufd", "stale-translation")
    assert "(stale translation)" in failure["minimized_mismatch"]
    # The page table kept the page, not the IOTLB: unlike the short
    # invalidation's, the shrunk sequence needs no DMA before the unmap.
    first_unmap = next(i for i, o in enumerate(ops) if o.startswith("unmap:"))
    assert any(o.startswith("map:") for o in ops[:first_unmap]), ops
    assert not any(o.startswith(("dw:", "dr:")) for o in ops[:first_unmap]), ops
    assert ops[-1].startswith(("dw:", "dr:")), ops


@pytest.mark.full
@pytest.mark.usefixtures("no_leaked_qemu")
def test_replaying_seed_8_names_the_permission_a_remap_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed 8: op 4 maps 0x20028000+0x3000 r, op 7 unmaps it, op 8 maps
    # 0x20028000+0x5000 rw, and op 9's write into its second page is blocked.
    result, ops = replay_broken(
        tmp_path,
        monkeypatch,
        KEEPS_OLD_PERM,
        "0x8",
        "step fuzz-type1: the IOMMU did not do what the model predicts: seed 0x8 (type1)"
        " op 9 (device write 0x20029ae8+1823): stale-permission: a write to 0x20029ae8+1304 was blocked"
        " in the rw mapping of op 8, as the r mapping of op 4 (unmapped at op 7) would have:"
        " the remap of op 8 kept the old permission; model state: mapped: ",
    )
    assert "0x20028000+0x5000->pool 0x2000 rw (op 8)" in result["reason"]
    failure = result["evidence"]["dma_fuzz_failure"]
    assert (failure["backend"], failure["kind"]) == ("type1", "stale-permission")
    assert "kept the old permission" in failure["minimized_mismatch"]
    # what is left is a remap: the IOVA mapped with one permission, unmapped,
    # mapped again with another, and a write through it
    maps = [o.split(":") for o in ops if o.startswith("map:")]
    assert any(a[1] == b[1] and a[4] != b[4] for i, a in enumerate(maps) for b in maps[i + 1 :]), ops
    assert any(o.startswith("unmap:") for o in ops) and ops[-1].startswith("dw:"), ops


@pytest.mark.full
@pytest.mark.usefixtures("no_leaked_qemu")
@pytest.mark.parametrize("series_name", [SERIES_NAME, KEEPS_LAST_PAGE, KEEPS_OLD_PERM])
def test_the_fixed_dma_scenarios_miss_it(tmp_path: Path, series_name: str) -> None:
    fixed = ["dma-roundtrip", "dma-fault-unmapped", "dma-after-unmap", "dma-map-stress", "dma-permissions"]
    series = str(SERIES / series_name)
    run = run_scenarios(tmp_path, "mainline-7.3", ["smmuv3-nested"], fixed, "--series", series)
    verdicts = {r["scenario"]: r["verdict"] for r in run.results["results"]}
    assert verdicts == dict.fromkeys(fixed, "pass"), run.results["results"]
    assert run.rc == 0
