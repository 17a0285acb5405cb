"""Data files: every shipped file loads; bad files fail with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.config import Registry
from harness.config.registry import load_profile, load_scenario, load_target
from harness.errors import ConfigError
from harness.logwatch.signatures import known_names


def test_every_shipped_data_file_loads() -> None:
    reg = Registry()
    assert {"mainline-7.3", "stable-6.12"} <= set(reg.target_names())
    assert {"smmuv3-nested", "smmuv3-s1", "smmuv3-s2", "virtio-iommu", "no-iommu"} <= set(reg.profile_names())
    for name in reg.target_names():
        assert reg.target(name).fragments
    for name in reg.profile_names():
        reg.profile(name)
    for name in reg.scenario_names():
        scenario = reg.scenario(name)
        # Every event a scenario names must exist in the signature table.
        for step in scenario.steps:
            names = [e.signature for e in step.expect_events] + list(step.forbid_events)
            assert set(names) <= known_names(), (name, step.name)
        assert set(scenario.forbid_events) <= known_names()


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - name: a\n    run: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_scenario(bad)


def test_schema_error_names_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nsteps:\n  - name: a\n    run: true\n    timout_s: 3\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(bad)
    assert str(err.value).startswith(f"{bad}:3: steps.0: Additional properties")
    assert "timout_s" in str(err.value)


def test_wrong_type_points_at_the_value_line(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nsteps:\n  - name: a\n    run: ls\n    timeout_s: soon\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:5: steps\.0\.timeout_s: 'soon' is not"):
        load_scenario(bad)


def test_target_with_unknown_fragment(tmp_path: Path) -> None:
    t = tmp_path / "t.yaml"
    t.write_text("name: t\nsource: {debian: linux-source-7.3}\nfragments:\n  - base\n  - nope\n")
    with pytest.raises(ConfigError, match=r"t\.yaml:5: fragment 'nope' not found"):
        load_target(t)


def test_cli_malformed_scenario_is_one_line_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nsteps: {}\n")
    rc = main(["run", "--output", str(tmp_path / "out"), str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("pkvm-harness: error: ") and "broken.yaml:2" in err[0]


def test_cli_unknown_profile_is_one_line_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["run", "--profile", "smmuv4", "--output", str(tmp_path), "boot-health"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "pkvm-harness: error: unknown profile 'smmuv4' (known: " + ", ".join(Registry().profile_names()) + ")"
    ]


def test_cli_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "boot-health" in [s["name"] for s in listing["scenarios"]]


@pytest.mark.parametrize(
    ("yaml_text", "line", "message"),
    [
        (
            "name: s\nforbid_events: [any-eror]\nsteps:\n  - {name: a, run: x}\n",
            2,
            "forbid_events.0: unknown event 'any-eror' (did you mean 'any-error'?)",
        ),
        (
            "name: s\nsteps:\n  - name: a\n    expect_events:\n      - signature: smmuv3-evnt\n",
            5,
            "steps.0.expect_events.0.signature: unknown event 'smmuv3-evnt' (did you mean 'smmuv3-event'?)",
        ),
        (
            "name: s\nsteps:\n  - name: a\n    run: x\n    forbid_events: [oopz]\n",
            5,
            "steps.0.forbid_events.0: unknown event 'oopz' (did you mean 'oops'?)",
        ),
    ],
)
def test_a_typo_in_an_event_name_is_a_load_error_with_file_and_line(
    tmp_path: Path, yaml_text: str, line: int, message: str
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(err.value) == f"{path}:{line}: {message}"


def test_iommu_options_on_an_smmu_profile_is_a_load_error_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\nmachine: virt\niommu: smmuv3\nfeatures: [iommu]\niommu_options: [granule=64k]\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:5: iommu_options: only for iommu: virtio-iommu"):
        load_profile(bad)


def test_an_iommu_option_must_be_a_property_assignment(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text(
        "name: p\nmachine: virt\niommu: virtio-iommu\nfeatures: [iommu]\niommu_options: [granule]\n"
    )
    with pytest.raises(ConfigError, match=r"p\.yaml:5: iommu_options\.0: 'granule' does not match"):
        load_profile(bad)


GAP_TARGET = """name: t
source: {debian: linux-source-7.3}
fragments: [base]
known_gaps:
  pvm-dma-isolation:
    step: %s
    reason: "%s"
    why: not enforced
"""


def test_a_known_gap_without_its_step_and_reason_is_a_load_error(tmp_path: Path) -> None:
    t = tmp_path / "t.yaml"
    t.write_text("name: t\nsource: {debian: linux-source-7.3}\nfragments: [base]\n"
                 "known_gaps:\n  pvm-dma-isolation: mainline does not police host DMA\n")  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"t\.yaml:5: known_gaps\.pvm-dma-isolation: .* is not of type 'object'"
    ):
        load_target(t)


def test_a_known_gap_names_a_step_of_its_scenario(tmp_path: Path) -> None:
    t = tmp_path / "t.yaml"
    t.write_text(GAP_TARGET % ("host-dma", "reached"))
    with pytest.raises(ConfigError) as err:
        Registry().target(str(t))
    assert str(err.value) == (
        f"{t}: known_gaps.pvm-dma-isolation.step:"
        " 'host-dma' is not a step of it (host-dma-into-protected-page)"
    )


def test_a_known_gap_reason_is_a_regular_expression(tmp_path: Path) -> None:
    t = tmp_path / "t.yaml"
    t.write_text(GAP_TARGET % ("host-dma-into-protected-page", "reached ("))
    with pytest.raises(ConfigError, match=r"t\.yaml:7: known_gaps\.pvm-dma-isolation\.reason: not a regular"):
        load_target(t)


def test_a_profile_variable_no_profile_defines_is_a_load_error_with_file_and_line(tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "s.yaml").write_text("name: s\nsteps:\n  - name: a\n    run: echo ${profile.no_such_key}\n")
    reg = Registry(scenarios_dir=scenarios)
    with pytest.raises(ConfigError) as err:
        reg.scenario("s")
    where = f"{scenarios / 's.yaml'}:4"
    assert str(err.value).startswith(f"{where}: ${{profile.no_such_key}}: no profile defines it")
    # One that only some profiles define is fine (virtio-iommu-granule's page_mask).
    assert Registry().scenario("virtio-iommu-granule").name == "virtio-iommu-granule"
