"""The e2e tests run longest first (tests/e2e/conftest.py), by the seconds
bench/bench.py --make-test records from a cold run's junit.xml."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_under_test", ROOT / "bench" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_junit_times_become_nodeid_seconds_longest_first(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.e2e.test_series" name="test_bisect" time="196.94"/>'
        '<testcase classname="tests.e2e.test_boot" name="test_suite@default-suite" time="12.0"/>'
        '<testcase classname="tests.e2e.test_pkvm_negative" name="test_red[vm-lifecycle]" time="162.42"/>'
        "</testsuite></testsuites>"
    )
    out = tmp_path / "durations.json"
    _bench().record_e2e_durations(junit, out)
    recorded = json.loads(out.read_text())
    assert list(recorded.items()) == [
        ("tests/e2e/test_series.py::test_bisect", 196.9),
        ("tests/e2e/test_pkvm_negative.py::test_red[vm-lifecycle]", 162.4),
        ("tests/e2e/test_boot.py::test_suite", 12.0),
    ]


def test_the_committed_durations_name_tests_that_exist() -> None:
    """A renamed test would silently fall back to 'typical': the recorded
    names must still be collected ones (by file and function)."""
    recorded = json.loads((ROOT / "tests" / "e2e" / "durations.json").read_text())
    for nodeid in recorded:
        path, name = nodeid.split("::", 1)
        source = (ROOT / path).read_text()
        assert f"def {name.split('[', 1)[0]}(" in source, nodeid
