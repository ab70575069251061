"""Compiled hot paths of Touchstream, each with a pure-Python twin.

Every native module ``native/NAME.pyx`` has a twin ``native/NAME_py.py`` with
the same logic and interface. :func:`load` returns the compiled module when it
was built and the twin otherwise; ``TOUCHSTREAM_PURE=1`` forces the twin, and
``TOUCHSTREAM_REQUIRE_NATIVE=1`` turns a missing extension into an error
instead of a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["load", "implementation"]


def load(name: str) -> ModuleType:
    """Return the native module `name`, or its pure-Python twin."""
    if os.environ.get("TOUCHSTREAM_PURE") == "1":
        return importlib.import_module(f"native.{name}_py")
    try:
        return importlib.import_module(f"native.{name}")
    except ImportError as ex:
        if os.environ.get("TOUCHSTREAM_REQUIRE_NATIVE") == "1":
            msg = (
                f"native module `native.{name}` is not built; build it with "
                "`pip install .` on a machine with a C compiler"
            )
            raise ImportError(msg) from ex
        return importlib.import_module(f"native.{name}_py")


def implementation() -> str:
    """Say which implementation :func:`load` picks: ``native`` or ``pure``."""
    module = load("table")
    return "pure" if module.__name__.endswith("_py") else "native"
