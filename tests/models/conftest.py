"""Shared fixtures of the model tests."""

from __future__ import annotations

import pytest

from compiler.core.errors import DataError
from models.datasets import load_dataset


@pytest.fixture(scope="module")
def test_split():
    """The 10,000-image Fashion-MNIST test split (Debian dataset-fashion-mnist); else skip."""
    try:
        return load_dataset("fmnist-test")
    except DataError as exc:
        pytest.skip(str(exc))
