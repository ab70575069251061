"""The native extension is really built where it must be, and chosen."""

from __future__ import annotations

import importlib
import os

import pytest

import native


@pytest.mark.skipif(
    os.environ.get("TOUCHSTREAM_REQUIRE_NATIVE") != "1"
    and os.environ.get("CI") is None,
    reason="only where the build must have produced the extension (CI, ./dev test)",
)
def test_the_native_table_extension_was_built_and_is_used() -> None:
    module = importlib.import_module("native.table")

    assert module.__file__ is not None
    assert module.__file__.endswith(".so"), module.__file__
    assert native.implementation() == "native"


def test_touchstream_pure_forces_the_python_twin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOUCHSTREAM_PURE", "1")

    assert native.load("table").__name__ == "native.table_py"
    assert native.implementation() == "pure"
