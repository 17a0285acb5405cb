"""The DMA fuzzer's model (harness/scenario/dma_model.py) against outcomes
recorded from `edu-dma fuzz` on mainline 7.3 (tests/data/dma-fuzz/: the
helper's output and the console of the same boot), as recorded and with one
outcome changed to what a broken kernel would have shown."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from harness.logwatch import Event
from harness.logwatch.watcher import parse_log
from harness.scenario import dma_model as M

DATA = Path(__file__).parent.parent / "data" / "dma-fuzz"
# Stage-1 LPAE (the SMMU's VFIO domains) cannot express write-only.
WO_READS = {"smmuv3-nested": True, "virtio-iommu": False}


def recorded(profile: str) -> tuple[str, list[Event]]:
    output = (DATA / f"7.3-{profile}-type1-seed1.ktap").read_text()
    run = M.parse(output)
    assert run.uptime is not None and run.end_uptime is not None
    events = [
        e
        for e in parse_log((DATA / f"7.3-{profile}-console.log").read_text())
        if e.timestamp is not None and run.uptime <= e.timestamp <= run.end_uptime + 1
    ]
    return output, events


def judge(output: str, events: list[Event], profile: str) -> M.Verdict:
    return M.judge(M.parse(output), events, [], WO_READS[profile])


def edit_op(output: str, k: int, key: str, value: str) -> str:
    """The output with operation k's `key=` replaced."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"# op {k} "):
            new, n = re.subn(rf"\b{key}=\S+", f"{key}={value}", line)
            assert n == 1, line
            lines[i] = new
            return "\n".join(lines) + "\n"
    raise AssertionError(f"no op {k}")


@pytest.mark.parametrize("profile", sorted(WO_READS))
def test_recorded_run_matches_the_model(profile: str) -> None:
    output, events = recorded(profile)
    run = M.parse(output)
    v = judge(output, events, profile)
    assert v.mismatch is None, v.mismatch
    # the run did exercise what the model predicts: data, refusals, faults
    kinds = {o.op.kind for o in run.ops}
    assert kinds == {"map", "unmap", "dw", "dr"}
    assert any(o.ret == -M.EEXIST for o in run.ops)
    assert any(o.landed for o in run.ops) and any(o.op.kind == "dw" and not o.landed for o in run.ops)
    assert {f.kind for f in v.faults} == {"unmapped", "permission"}
    assert len(events) >= M.RATELIMIT_BURST


@pytest.mark.parametrize("profile", sorted(WO_READS))
def test_a_missed_fault_fails(profile: str) -> None:
    output, events = recorded(profile)
    first = judge(output, events, profile).faults[0]
    kept = [e for e in events if not first.matches(e)]
    assert len(kept) < len(events)
    v = judge(output, kept, profile)
    assert v.mismatch is not None
    assert v.mismatch.kind == "missed-fault"
    assert v.mismatch.index == first.index
    assert "blocked but not reported" in v.mismatch.detail


def test_missed_faults_are_not_judged_after_a_recent_report() -> None:
    """The rate limit may still be spent: no missed-fault verdict then."""
    output, events = recorded("smmuv3-nested")
    run = M.parse(output)
    assert run.uptime is not None
    first = judge(output, events, "smmuv3-nested").faults[0]
    recent = replace(events[0], timestamp=run.uptime - 1)
    v = M.judge(run, [e for e in events if not first.matches(e)], [recent], True)
    assert v.mismatch is None


def test_an_unexpected_fault_fails() -> None:
    output, events = recorded("smmuv3-nested")
    mapped = 0x20016B41  # op 10 read it through a live mapping
    fake = replace(events[0], fields={**events[0].fields, "address": hex(mapped)})
    v = judge(output, [*events, fake], "smmuv3-nested")
    assert v.mismatch is not None and v.mismatch.kind == "unexpected-fault"
    assert v.mismatch.index == 10


def test_a_stale_translation_on_read_fails() -> None:
    """Op 35 reads 0x20004fdb+44: the first page is mapped (op 33), the
    second (0x20005000) was unmapped at op 13 after op 5 mapped it to pool
    0x19000. Had the IOTLB kept that translation, the device would have got
    pool 0x19000's bytes."""
    output, events = recorded("smmuv3-nested")
    run = M.parse(output)
    before = M.replay(replace(run, ops=run.ops[:35]), True)
    assert before.mismatch is None and before.model is not None
    stale = M.fnv1a(bytes(before.model.pool[0x19000 : 0x19000 + 7]))
    got = run.ops[35].got
    edited = edit_op(output, 35, "got", f"{got[0]:08x},{stale:08x}")
    v = judge(edited, events, "smmuv3-nested")
    assert v.mismatch is not None and v.mismatch.kind == "stale-translation"
    assert v.mismatch.index == 35
    assert "unmapped at op 13" in v.mismatch.detail
    assert "0x20004000+0x4000" not in v.mismatch.state  # op 13 removed it


def test_a_write_through_a_read_only_mapping_fails() -> None:
    """Op 14 writes 0x2002aa10+24 into op 2's read-only mapping (pool
    0x1b000): nothing may land."""
    output, events = recorded("virtio-iommu")
    run = M.parse(output)
    before = M.replay(replace(run, ops=run.ops[:14]), False)
    assert before.model is not None
    pool = bytes(before.model.pool)
    new = bytearray(pool)
    new[0x1BA10 : 0x1BA10 + 24] = M.pattern(run.ops[14].op.key, 24)
    landed = ",".join(f"{o:#x}+{n}:{h:08x}" for o, n, h in M._runs(pool, bytes(new)))
    v = judge(edit_op(output, 14, "landed", landed), events, "virtio-iommu")
    assert v.mismatch is not None and v.mismatch.index == 14
    assert v.mismatch.kind == "permission-ignored"
    assert v.mismatch.detail.startswith(
        "a write to 0x2002aa10+24 (permission) landed in the r mapping of op 2"
    )


def test_an_unmap_that_keeps_a_page_fails() -> None:
    output, events = recorded("smmuv3-nested")
    v = judge(edit_op(output, 4, "unmapped", "0x4000"), events, "smmuv3-nested")
    assert v.mismatch is not None and (v.mismatch.index, v.mismatch.kind) == (4, "uapi")
    assert "the model expects 0 (unmapped 0x5000)" in v.mismatch.detail


def test_uapi_rules() -> None:
    pg = 4096
    for backend in ("type1", "iommufd"):
        m = M.Model(backend, pg, bytes(16 * pg), False)
        assert m.map(M.Op("map", 0x10000, 2 * pg, 0, "rw"), 0) == 0
        assert m.map(M.Op("map", 0x11000, pg, 0, "r"), 1) == -M.EEXIST
        assert m.map(M.Op("map", 0x20000, pg, 0, "w"), 2) == 0
        # a span bisecting the first mapping
        got = m.unmap(M.Op("unmap", 0x11000, 0x10000), 3)
        if backend == "type1":
            assert got == (-M.EINVAL, 0)
            assert len(m.maps) == 2
        else:  # stops at the first (partial) area: nothing removed here
            assert got == (-M.ENOENT, 0)
        # a span with holes around the second one
        assert m.unmap(M.Op("unmap", 0x1F000, 3 * pg), 4) == (0, pg)
        nothing = (0, 0) if backend == "type1" else (-M.ENOENT, 0)
        assert m.unmap(M.Op("unmap", 0x1F000, 3 * pg), 5) == nothing
    # iommufd removes whole areas in order until a partial one
    m = M.Model("iommufd", pg, bytes(16 * pg), False)
    m.map(M.Op("map", 0x10000, pg, 0, "rw"), 0)
    m.map(M.Op("map", 0x12000, 2 * pg, 0, "rw"), 1)
    assert m.unmap(M.Op("unmap", 0x10000, 3 * pg), 2) == (-M.ENOENT, 0)
    assert [x.iova for x in m.maps] == [0x12000]


def test_ddmin_finds_the_two_operations_that_matter() -> None:
    ops = [M.Op("dr", 0x1000 * i, 4) for i in range(20)]
    calls = []

    def fails(cand: Sequence[M.Op]) -> Sequence[M.Op] | None:
        calls.append(len(cand))
        return cand if ops[3] in cand and ops[17] in cand else None

    assert M.ddmin(ops, fails, budget=200) == [ops[3], ops[17]]
    assert len(calls) < 60
    # a test may hand back a smaller failing sequence than it was given
    assert M.ddmin(ops, lambda c: [ops[17]] if ops[17] in c else None) == [ops[17]]


def test_prune_drops_dmas_that_lost_their_mapping() -> None:
    pg = 4096
    ops = [
        M.Op("map", 0x10000, 2 * pg, 0, "rw"),
        M.Op("dr", 0x10010, 2000),
        M.Op("dw", 0x11FF0, 40, key=1),  # 24 bytes past the end: blocked
    ]
    assert M.prune(ops, "type1", pg, 4 * pg, False, 64) == ops
    assert M.prune(ops[1:], "type1", pg, 4 * pg, False, 64) == [ops[2]]


def test_replay_syntax_round_trips() -> None:
    output, _ = recorded("virtio-iommu")
    run = M.parse(output)
    args = run.replay_args(o.op for o in run.ops[:3])
    assert args.startswith("--bdf 0000:00:02.0 --backend type1 --seed 0x1 fuzz --ops '")
    assert "map:0x20004000:0x5000:0x12000:rw;dr:0x20003ff4:29;" in args


def judge_recorded(series: str, seed: int) -> tuple[M.Run, list[Event], M.Verdict]:
    """A type1 run recorded on smmuv3-nested with a NEGATIVE TEST series, the
    fault reports from its start on, and the model's verdict."""
    run = M.parse((DATA / f"7.3-{series}-smmuv3-nested-type1-seed{seed}.ktap").read_text())
    events = [
        e
        for e in parse_log((DATA / f"7.3-{series}-smmuv3-nested-console.log").read_text())
        if e.timestamp is not None and run.uptime is not None and e.timestamp >= run.uptime
    ]
    return run, events, M.judge(run, events, [], True)


def test_a_recorded_stale_translation_fails() -> None:
    """Recorded on mainline 7.3 + the NEGATIVE TEST series
    smmu-inv-range-short.patch (the SMMU's invalidation after a multi-page
    unmap stops one page short): seed 3's op 23 writes 4 bytes to
    0x2002bad4, unmapped at op 17, and they land in the pool page that
    mapping had. The kernel reported no fault for it (the SMMU translated
    it from its IOTLB)."""
    run, events, v = judge_recorded("smmu-inv-range-short", 3)
    assert v.mismatch is not None
    assert (v.mismatch.index, v.mismatch.kind) == (23, "stale-translation")
    assert v.mismatch.detail == (
        "a write to 0x2002bad4+4 (unmapped) landed in the mapping of op 10,"
        " unmapped at op 17 (stale translation)"
    )
    assert v.mismatch.reason(run).startswith("seed 0x3 (type1) op 23 (device write 0x2002bad4+4): ")
    # the same run up to op 22 is what the model predicts, faults included
    assert M.judge(replace(run, ops=run.ops[:23]), events, [], True).mismatch is None


def test_a_recorded_stale_permission_fails() -> None:
    """Recorded on mainline 7.3 + the NEGATIVE TEST series
    smmu-remap-keeps-old-perm.patch (the SMMU driver maps a remapped IOVA
    with the permission it had before): op 4 maps 0x20028000+0x3000 read-
    only, op 7 unmaps it, op 8 maps 0x20028000+0x5000 read-write, and op 9's
    write into its second page is blocked (an F_PERMISSION report) as the
    read-only mapping would have blocked it."""
    run, events, v = judge_recorded("smmu-remap-keeps-old-perm", 8)
    assert v.mismatch is not None
    assert (v.mismatch.index, v.mismatch.kind) == (9, "stale-permission")
    assert v.mismatch.detail == (
        "a write to 0x20029ae8+1304 was blocked in the rw mapping of op 8, as the r mapping of op 4"
        " (unmapped at op 7) would have: the remap of op 8 kept the old permission"
    )
    # the same run up to op 8 is what the model predicts, faults included
    assert M.judge(replace(run, ops=run.ops[:9]), events, [], True).mismatch is None


def _synthetic(ops: Sequence[M.Op], landed: dict[int, list[tuple[int, int, int]]]) -> str:
    """edu-dma fuzz output for `ops` (all accepted), with the given landed
    runs per device write."""
    lines = ["# backend=type1", "# bdf=0000:00:02.0", "# seed=0x9", "# page_size=4096"]
    lines += ["# fuzz_pool_key=0x1234", "# fuzz_pool_len=0x8000"]
    for k, o in enumerate(ops):
        if o.kind == "map":
            rest = f"iova={o.iova:#x} len={o.length:#x} pool={o.pool:#x} perm={o.perm} ret=0"
        elif o.kind == "unmap":
            rest = f"iova={o.iova:#x} len={o.length:#x} ret=0 unmapped={o.length:#x}"
        else:
            runs = ",".join(f"{a:#x}+{n}:{h:08x}" for a, n, h in landed.get(k, [])) or "none"
            rest = f"iova={o.iova:#x} len={o.length} data={o.key:#x} landed={runs}"
        lines.append(f"# op {k} {o.kind} {rest}")
    return "\n".join([*lines, "ok 1 fuzz sequence ran"]) + "\n"


def test_a_write_that_a_remap_left_writable_is_a_stale_permission() -> None:
    """A read-only remap of a read-write IOVA: a write that lands is the old
    permission kept, not a permission the IOMMU ignores."""
    pg = 4096
    write = M.Op("dw", 0x20001010, 16, key=0x77)
    pool = M.pattern(0x1234, 0x8000)
    new = bytearray(pool)
    new[0x3010 : 0x3010 + 16] = M.pattern(0x77, 16)  # the r mapping's pool page 0x3000
    runs = M._runs(pool, bytes(new))
    remap = [
        M.Op("map", 0x20000000, 2 * pg, 0x0, "rw"),
        M.Op("unmap", 0x20000000, 2 * pg),
        M.Op("map", 0x20000000, 2 * pg, 0x2000, "r"),
        write,
    ]
    v = M.replay(M.parse(_synthetic(remap, {3: runs})), False)
    assert v.mismatch is not None and (v.mismatch.index, v.mismatch.kind) == (3, "stale-permission")
    assert v.mismatch.detail == (
        "a write to 0x20001010+16 (permission) landed in the r mapping of op 2 (permission ignored),"
        " as the rw mapping of op 0 (unmapped at op 1) would have: the remap of op 2 kept the old permission"
    )
    # the same write into a fresh read-only mapping: the permission ignored
    fresh = [remap[2], write]
    v = M.replay(M.parse(_synthetic(fresh, {1: runs})), False)
    assert v.mismatch is not None and v.mismatch.kind == "permission-ignored"
    # and a remap with the same permission kept nothing to name
    same = [remap[0], remap[1], replace(remap[2], perm="rw"), write]
    assert M.replay(M.parse(_synthetic(same, {3: runs})), False).mismatch is None


def test_a_recorded_missed_fault_fails() -> None:
    """Recorded on mainline 7.3 + the NEGATIVE TEST series
    no-fault-reports.mbox (the SMMU driver drops its event reports): the
    first blocked DMA of seed 1 (op 1 reads 0x20003ff4+29, 12 bytes below
    the mapping of op 0) was blocked and nothing was reported."""
    output = (DATA / "7.3-no-fault-reports-smmuv3-nested-type1-seed1.ktap").read_text()
    run = M.parse(output)
    events = parse_log((DATA / "7.3-no-fault-reports-smmuv3-nested-console.log").read_text())
    assert not [e for e in events if e.kind == "iommu-fault"]
    v = M.judge(run, events, [], True)
    assert v.mismatch is not None
    assert (v.mismatch.index, v.mismatch.kind) == (1, "missed-fault")
    assert v.mismatch.detail == (
        "the read of 0x20003ff4+12 (unmapped) was blocked but not reported (first blocked DMA of the run)"
    )
    # the state before op 1: only op 0's mapping
    assert v.mismatch.state == "mapped: 0x20004000+0x5000->pool 0x12000 rw (op 0)"
    # data and ioctl results were right: only the reports were missing
    assert M.replay(run, True).mismatch is None


def test_seed_replay_and_fuzz_seconds_from_the_environment() -> None:
    from harness.config.models import DmaFuzzRun
    from harness.scenario import dma_fuzz

    run = DmaFuzzRun(seeds=(1, 2), length=32)
    assert dma_fuzz.seeds(run, {}) == ((1, 2), None)
    assert dma_fuzz.seeds(run, {dma_fuzz.SEED_ENV: "0x3"}) == ((3,), None)
    assert dma_fuzz.seeds(run, {dma_fuzz.SECONDS_ENV: "60"}) == ((1, 2), 60.0)
    assert dma_fuzz.command(run, 3) == "edu-dma --backend type1 --seed 0x3 fuzz --length 32"


def test_the_scenario_declares_its_fuzz_steps(tmp_path: Path) -> None:
    from harness.config.registry import load_scenario
    from harness.errors import ConfigError

    scenarios = Path(__file__).parent.parent.parent / "scenarios"
    s = load_scenario(scenarios / "dma-fuzz.yaml")
    fuzz = [(st.name, st.dma_fuzz) for st in s.steps if st.dma_fuzz is not None]
    assert [(n, f.backend, f.seeds) for n, f in fuzz] == [
        ("fuzz-type1", "type1", (1,)),
        ("fuzz-iommufd", "iommufd", (2,)),
    ]
    bad = tmp_path / "bad.yaml"
    text = (scenarios / "dma-fuzz.yaml").read_text().replace("backend: iommufd", "backend: noiommu")
    bad.write_text(text)
    with pytest.raises(ConfigError, match="noiommu"):
        load_scenario(bad)
