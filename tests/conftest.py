"""Fixtures shared by the unit tests."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


@pytest.fixture(
    params=["native.table_py", "native.table"], ids=["pure", "native"], scope="session"
)
def table_module(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation of the key-group table, the compiled one included.

    The compiled module is imported by name, never through ``native.load``, so
    a missing build fails here instead of silently testing the twin twice.
    """
    return importlib.import_module(request.param)
