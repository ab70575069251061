"""The rules in force for a run: the shipped default or a file, reloaded
when the file changes.

One :class:`RuleBook` serves every key group of a worker process (the
settings object is shared), so a change is read, checked and logged once
per process. A changed file that does not validate is refused: the rules
in force stay, and the log says why.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from operators.rules import RuleSet, default_rules, load_rules
from stream.errors import ConfigError

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0


class RuleBook:
    """Returns the rule set in force; with `watch`, rereads a changed file
    (looked at no more than once a second)."""

    def __init__(self, path: Path | None, *, watch: bool = False) -> None:
        self.path = path
        self.watch = watch and path is not None
        self.rules = default_rules() if path is None else load_rules(path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def __call__(self) -> RuleSet:
        if self.watch and time.monotonic() - self._checked >= CHECK_EVERY_S:
            self._checked = time.monotonic()
            self._reload_if_changed()
        return self.rules

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _reload_if_changed(self) -> None:
        assert self.path is not None
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            rules = load_rules(self.path)
        except ConfigError as ex:
            log.warning(
                "Rules: refused path=%s keeping=%s reason=%s",
                self.path,
                self.rules.digest[:12],
                ex,
            )
            return
        if rules.digest == self.rules.digest:
            return
        log.info(
            "Rules: reloaded path=%s rules=%d digest=%s previous=%s",
            self.path,
            len(rules.rules),
            rules.digest[:12],
            self.rules.digest[:12],
        )
        self.rules = rules
