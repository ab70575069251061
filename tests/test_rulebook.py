"""The rules in force for a run, and their reload when the file changes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import stream.watch
from stream.rulebook import RuleBook

RULE = """
[[rule]]
name = "{name}"
[rule.when]
signal = "silence"
[[rule.then]]
action = "care_task"
"""


def write(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))  # a new mtime, however fast the test


def test_without_a_file_the_shipped_default_rules_apply() -> None:
    names = [rule.name for rule in RuleBook(None)().rules]
    assert "silent_care" in names


def test_a_changed_file_is_reloaded_and_a_broken_one_refused_keeping_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stream.watch, "CHECK_EVERY_S", 0.0)
    path = tmp_path / "rules.toml"
    write(path, RULE.format(name="first"), 1_000_000_000)
    book = RuleBook(path, watch=True)
    assert [rule.name for rule in book().rules] == ["first"]

    caplog.set_level(logging.INFO, logger="stream.rulebook")
    write(path, RULE.format(name="second"), 2_000_000_000)
    assert [rule.name for rule in book().rules] == ["second"]
    assert "Rules: reloaded" in caplog.text

    write(path, RULE.format(name="Not A Name"), 3_000_000_000)
    assert [rule.name for rule in book().rules] == ["second"]
    assert "Rules: refused" in caplog.text
    assert "rules.toml" in caplog.text and "name" in caplog.text


def test_a_rule_book_that_does_not_watch_keeps_what_it_read(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    write(path, RULE.format(name="first"), 1_000_000_000)
    book = RuleBook(path)
    write(path, RULE.format(name="second"), 2_000_000_000)

    assert [rule.name for rule in book().rules] == ["first"]
