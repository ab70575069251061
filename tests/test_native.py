"""The native extension is really built where it must be, and chosen."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

import native


@pytest.mark.skipif(
    os.environ.get("TOUCHSTREAM_REQUIRE_NATIVE") != "1"
    and os.environ.get("CI") is None,
    reason="only where the build must have produced the extension (CI, ./dev test)",
)
@pytest.mark.parametrize("name", ["table", "clv"])
def test_each_native_extension_was_built_and_is_used(name: str) -> None:
    module = importlib.import_module(f"native.{name}")

    assert module.__file__ is not None
    assert module.__file__.endswith(".so"), module.__file__
    assert native.load(name) is module
    assert native.implementation() == "native"


def test_every_native_module_has_its_pxd_pyi_and_twin() -> None:
    folder = Path(native.__file__).parent
    modules = sorted(path.stem for path in folder.glob("*.pyx"))

    assert modules == ["clv", "table"]
    for name in modules:
        for companion in (f"{name}.pxd", f"{name}.pyi", f"{name}_py.py"):
            assert (folder / companion).is_file(), companion


def test_touchstream_pure_forces_the_python_twin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOUCHSTREAM_PURE", "1")

    assert native.load("table").__name__ == "native.table_py"
    assert native.implementation() == "pure"
