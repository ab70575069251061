"""Noticing that a file a running engine reads (rules, model parameters)
has changed, cheaply enough to ask on every decision."""

from __future__ import annotations

import os
import time
from pathlib import Path

CHECK_EVERY_S = 1.0


class FileWatch:
    """Says whether a file changed (modification time or size) since the
    last time it said so; it looks at the file at most once a second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def changed(self) -> bool:
        if time.monotonic() - self._checked < CHECK_EVERY_S:
            return False
        self._checked = time.monotonic()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size
