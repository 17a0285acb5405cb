"""The matrix file: expansion, rules, timeouts, shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import Registry
from harness.errors import ConfigError
from harness.matrix.model import default_jobs, load_matrix, parse_shard

MATRICES = Path(__file__).resolve().parents[2] / "matrices"


def test_the_regression_matrix_expands_with_its_rules() -> None:
    reg = Registry()
    m = load_matrix(MATRICES / "regression.yaml", reg)
    keys = {c.key for c in m.cells}
    n_scen = len(reg.scenario_names())
    pvm = [s for s in reg.scenario_names() if s.startswith("pvm-")]
    assert len(keys) == len(m.cells) == 4 * n_scen + 4 * (n_scen - len(pvm))
    assert ("stable-6.12", "virtio-iommu", "pvm-donate") not in keys
    assert ("mainline-7.3", "virtio-iommu", "pvm-donate") in keys
    stress = next(c for c in m.cells if c.key == ("stable-6.12", "smmuv3-s1", "dma-map-stress"))
    assert stress.scenario.timeout_s == 900
    # One unit per target x profile: one boot serves its scenarios.
    assert len(m.units()) == 8


def test_shards_partition_the_cells() -> None:
    m = load_matrix(MATRICES / "regression.yaml", Registry())
    shards = [m.shard(i, 3) for i in (1, 2, 3)]
    keys = [c.key for s in shards for c in s.cells]
    assert sorted(keys) == sorted(c.key for c in m.cells) and len(set(keys)) == len(keys)
    sizes = [len(s.cells) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(ConfigError, match=f"--shard {bad}"):
            parse_shard(bad)


def test_include_and_a_bad_name_with_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(
        "name: t\ntargets: [mainline-7.3]\nprofiles: [smmuv3-nested]\nscenarios: [boot-health]\n"
        "include:\n  - {target: stable-6.12, profile: virtio-iommu, scenarios: [dma-roundtrip]}\n"
    )
    m = load_matrix(f, Registry())
    assert [c.key for c in m.cells] == [
        ("mainline-7.3", "smmuv3-nested", "boot-health"),
        ("stable-6.12", "virtio-iommu", "dma-roundtrip"),
    ]
    f.write_text("name: t\ntargets: [mainline-7.3]\nprofiles:\n  - smmuv3-nestd\nscenarios: all\n")
    with pytest.raises(ConfigError, match=rf"{f}:4: profiles: unknown profile 'smmuv3-nestd'"):
        load_matrix(f, Registry())
    f.write_text("name: t\ntargets: [mainline-7.3]\nprofiles: [smmuv3-nested]\nscenarios: all\nextra: 1\n")
    with pytest.raises(ConfigError, match=rf"{f}:1: \(top level\): Additional properties"):
        load_matrix(f, Registry())


def test_default_jobs_fit_the_machine() -> None:
    import os

    assert 1 <= default_jobs() <= (os.cpu_count() or 1)
