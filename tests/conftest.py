"""Shared fixtures. Tests that read ../shared/data skip cleanly where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from edbc.api import load_data, load_spec
from edbc.settings import MODELS_DIR, SHARED_DATA

TREELSTM = MODELS_DIR / "treelstm.yaml"


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(scope="session")
def treelstm():
    return load_spec(TREELSTM)[0]


@pytest.fixture(scope="session")
def synthetic_trees(treelstm):
    return load_data(treelstm, None, limit=24, seed=3).instances
