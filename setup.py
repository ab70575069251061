"""Build the native hot paths in `native/` with Cython.

Compiler directives are set once here, for every module, so that no `.pyx`
file carries its own: bounds and wrap-around checks are compiled out, and the
language level is Python 3. Set ``TOUCHSTREAM_NO_NATIVE=1`` to install the
pure-Python twins only (for platforms without a C compiler).
"""

from __future__ import annotations

import os

from setuptools import setup

DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}


def native_extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("TOUCHSTREAM_NO_NATIVE") == "1":
        return []
    from Cython.Build import cythonize

    return cythonize(
        ["native/*.pyx"],
        compiler_directives=DIRECTIVES,
        annotate=False,
    )


setup(ext_modules=native_extensions())
