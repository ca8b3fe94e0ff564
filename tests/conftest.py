"""Shared pytest fixtures: paths of the small real-data fixtures in tests/data (see ATTRIBUTION.md)."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def ptbxl_root() -> Path:
    return DATA / "ptb-xl"


@pytest.fixture(scope="session")
def ludb_root() -> Path:
    return DATA / "ludb"


@pytest.fixture(scope="session")
def mimic_root() -> Path:
    return DATA / "mimic_fixture"
