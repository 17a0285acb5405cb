"""The CI pipelines in ci/ are what the generator writes (no drift), and
they validate against GitLab's and GitHub's schemas (check-jsonschema's
built-in copies: no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("flag", "name", "schema"),
    [
        ("--gitlab", "gitlab-ci.yml", "vendor.gitlab-ci"),
        ("--github", "github-workflow.yml", "vendor.github-workflows"),
    ],
)
def test_generated_pipeline_matches_the_committed_one_and_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str, name: str, schema: str
) -> None:
    monkeypatch.chdir(ROOT)  # the pipeline names the matrix file relative to the checkout
    out = tmp_path / name
    assert main(["ci", "generate", flag, "--shards", "4", "--output", str(out)]) == 0
    committed = ROOT / "ci" / name
    assert out.read_text() == committed.read_text(), (
        f"ci/{name} is stale: run `pkvm-harness ci generate {flag} --shards 4`"
    )
    checker = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run(
        [checker, "--builtin-schema", schema, str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert "--shard" in text and "pkvm-harness merge results/shard-*" in text
    assert "pkvm-harness build --target mainline-7.3" in text and "debian:12" in text
