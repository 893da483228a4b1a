"""Shared fixtures: the embedded datasets, generated once into the project's data cache."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hiresmed_nb import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def skin_dir() -> Path:
    return synthetic.ensure_dataset("synthetic-skin")


@pytest.fixture(scope="session")
def xray_dir() -> Path:
    return synthetic.ensure_dataset("synthetic-xray")
