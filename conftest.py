"""Shared pytest configuration: the e2e marker and the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "tests" / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA
