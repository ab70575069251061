"""The native extension is really built where it must be, and chosen."""

from __future__ import annotations

import gc
import importlib
import os
import tracemalloc
from pathlib import Path

import pytest

import native
from tests.helpers_unit import generated_touches


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


def test_the_native_table_keeps_no_python_object_per_customer() -> None:
    compiled = pytest.importorskip("native.table")

    table = compiled.CustomerTable(silence_window_ms=3_600_000)
    first = generated_touches(2_000, 1_000)
    rest = generated_touches(40_000, 20_000, seed=2)
    table.apply(first)
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    python_before = tracemalloc.get_traced_memory()[0]

    table.apply(rest)
    gc.collect()
    python_bytes = tracemalloc.get_traced_memory()[0] - python_before
    tracemalloc.stop()

    grown = len(table) - 1_000
    assert grown > 10_000
    # Interned names and a side dict for customers with many sources only.
    assert len(gc.get_objects()) - objects < grown / 20
    assert python_bytes / grown < 40
    assert table.memory_bytes() / len(table) < 600
