"""The rules in force for a run: the shipped default or a file, reloaded
when the file changes.

One :class:`RuleBook` serves every key group of a worker process (the
settings object is shared), so a change is read, checked and logged once
per process. A changed file that does not validate is refused: the rules
in force stay, and the log says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from operators.rules import RuleSet, default_rules, load_rules
from stream.errors import ConfigError
from stream.watch import FileWatch

log = logging.getLogger(__name__)


class RuleBook:
    """Returns the rule set in force; with `watch`, rereads a changed file
    (looked at no more than once a second)."""

    def __init__(self, path: Path | None, *, watch: bool = False) -> None:
        self.path = path
        self.rules = default_rules() if path is None else load_rules(path)
        self._watch = FileWatch(path) if watch and path is not None else None

    def __call__(self) -> RuleSet:
        if self._watch is not None and self._watch.changed():
            self._reload()
        return self.rules

    def _reload(self) -> None:
        assert self.path is not None
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
