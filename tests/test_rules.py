"""Intervention rules: loading and validating rule files, deciding."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from operators.rules import (
    CustomerView,
    Intervention,
    RuleSet,
    Signal,
    default_rules,
    forget_cooldowns,
    load_rules,
)
from stream.errors import ConfigError

DATA = Path(__file__).parent / "data"
HOUR_MS = 3_600_000
LAST_INBOUND_MS = 1_709_287_200_000  # 2024-03-01T10:00:00.000Z
SILENCE_MS = LAST_INBOUND_MS + 52 * HOUR_MS  # 2024-03-03T14:00:00.000Z
CUSTOMER = CustomerView(
    segment="vip",
    repeat_purchases=3,
    clv=1234.56,
    value_band=4,
    p_alive=0.8,
    health=52.3,
    health_band="yellow",
)
SILENCE = Signal(
    kind="silence",
    tenant="acme",
    customer_id="c1",
    event_time_ms=SILENCE_MS,
    channel="wechat",
    details={
        "silent_ms": 52 * HOUR_MS,
        "window_ms": 48 * HOUR_MS,
        "last_inbound_ms": LAST_INBOUND_MS,
    },
)
DECLINE = Signal(
    kind="decline",
    tenant="acme",
    customer_id="c1",
    event_time_ms=SILENCE_MS,
    channel="email",
    trigger_event_id="o9",
    trigger_ts_ms=SILENCE_MS - 1_000,
    details={"previous_clv": 120.0, "clv": 101.5, "drop": 18.5 / 120, "windows": 3},
)
SILENCE_REASON = (
    "No inbound touch for 52.0 h since 2024-03-01T10:00:00.000Z (last on wechat), "
    "past the 48.0 h silence window; CLV {clv}, value band 4, health 52.3 (yellow)."
)


def blake2b_id(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def rules_from(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path)


def one_rule(when: str, cooldown: str = "0s", dedupe_key: str = "") -> str:
    key = f'dedupe_key = "{dedupe_key}"\n' if dedupe_key else ""
    return (
        f'[[rule]]\nname = "r"\ncooldown = "{cooldown}"\n{key}'
        f'[rule.when]\nsignal = ["silence", "decline"]\n{when}\n'
        '[[rule.then]]\naction = "notify_rep"\n'
    )


def test_default_rules_answer_silence_with_a_care_task_and_the_policy_brief() -> None:
    rules = default_rules()
    cooldowns: dict[str, int] = {}

    decided = rules.decide(SILENCE, CUSTOMER, cooldowns, SILENCE_MS + 1_500)

    common: dict[str, Any] = {
        "tenant": "acme",
        "customer_id": "c1",
        "rule": "silent_care",
        "signal": "silence",
        "priority": 7,
        "reason": SILENCE_REASON.format(clv="1,234.56 USD"),
        "reason_redacted": SILENCE_REASON.format(clv="[redacted]"),
        "event_time": "2024-03-03T14:00:00.000Z",
        "emitted_at": "2024-03-03T14:00:01.500Z",
        "trigger_event_id": None,
        "trigger_ts": None,
        "channel": "wechat",
        "segment": "vip",
        "clv": 1234.56,
        "value_band": 4,
        "health": 52.3,
        "health_band": "yellow",
    }
    ids = [
        blake2b_id("acme", "c1", "silent_care", action, "silence", str(SILENCE_MS))
        for action in ("care_task", "content_push")
    ]
    assert decided == [
        Intervention(intervention_id=ids[0], action="care_task", params={}, **common),
        Intervention(
            intervention_id=ids[1],
            action="content_push",
            params={"pack": "industry_policy_brief"},
            **common,
        ),
    ]
    assert list(msgspec.structs.asdict(decided[0]))[:3] == [
        "intervention_id",
        "tenant",
        "customer_id",
    ]
    assert cooldowns == {"acme:c1:silent_care": SILENCE_MS}
    assert rules.source == "default.toml"
    assert rules.max_cooldown_ms == 30 * 24 * HOUR_MS


def test_the_same_decision_has_the_same_id_and_another_event_time_another() -> None:
    rules = default_rules()
    later = msgspec.structs.replace(SILENCE, event_time_ms=SILENCE_MS + 1)

    first = rules.decide(SILENCE, CUSTOMER, {}, SILENCE_MS)[0]
    again = rules.decide(SILENCE, CUSTOMER, {}, SILENCE_MS + 60_000)[0]
    other = rules.decide(later, CUSTOMER, {}, SILENCE_MS)[0]

    assert first.intervention_id == again.intervention_id
    assert other.intervention_id == blake2b_id(
        "acme", "c1", "silent_care", "care_task", "silence", str(SILENCE_MS + 1)
    )
    assert other.intervention_id != first.intervention_id


@pytest.mark.parametrize(
    ("when", "customer_change", "signal_change", "matches"),
    [
        ("clv_above = 1000.0", {}, {}, True),
        ("clv_above = 1234.56", {}, {}, False),
        ("clv_above = 0.0", {"clv": None}, {}, False),
        ("clv_below = 2000.0", {}, {}, True),
        ("clv_below = 1000.0", {}, {}, False),
        ("clv_below = 2000.0", {"clv": None}, {}, False),
        ("clv_above = 1000.0\nclv_below = 1300.0", {}, {}, True),
        ("min_value_band = 4", {}, {}, True),
        ("min_value_band = 5", {}, {}, False),
        ("min_value_band = 1", {"value_band": None}, {}, False),
        ('health_band = ["red", "yellow"]', {}, {}, True),
        ('health_band = ["red"]', {}, {}, False),
        ('health_band = ["red"]', {"health_band": None}, {}, False),
        ('segment = ["vip"]', {}, {}, True),
        ('segment = ["smb"]', {}, {}, False),
        ('channel = ["wechat", "phone"]', {}, {}, True),
        ('channel = ["phone"]', {}, {}, False),
        ('channel = ["phone"]', {}, {"channel": None}, False),
        ('tenant = ["acme"]', {}, {}, True),
        ('tenant = ["acme"]', {}, {"tenant": "globex"}, False),
        ("min_repeat_purchases = 3", {}, {}, True),
        ("min_repeat_purchases = 4", {}, {}, False),
        ("", {}, {"kind": "at_risk"}, False),
    ],
)
def test_each_condition_keeps_only_the_customers_it_names(
    tmp_path: Path,
    when: str,
    customer_change: dict[str, object],
    signal_change: dict[str, object],
    matches: bool,
) -> None:
    rules = rules_from(tmp_path, one_rule(when))
    customer = msgspec.structs.replace(CUSTOMER, **customer_change)
    signal = msgspec.structs.replace(SILENCE, **signal_change)

    decided = rules.decide(signal, customer, {}, SILENCE_MS)

    assert [i.action for i in decided] == (["notify_rep"] if matches else [])


def test_a_cooldown_holds_a_rule_back_until_it_has_passed_in_event_time(
    tmp_path: Path,
) -> None:
    rules = rules_from(tmp_path, one_rule("", cooldown="36h"))
    cooldowns: dict[str, int] = {}

    def fires(hours_later: int) -> bool:
        signal = msgspec.structs.replace(
            SILENCE, event_time_ms=SILENCE_MS + hours_later * HOUR_MS
        )
        # The emission time is far in the future: only event time counts.
        return bool(rules.decide(signal, CUSTOMER, cooldowns, 10**13))

    assert fires(0)
    assert not fires(35)
    assert cooldowns == {"acme:c1:r": SILENCE_MS}
    assert fires(36)
    assert cooldowns == {"acme:c1:r": SILENCE_MS + 36 * HOUR_MS}
    assert rules.max_cooldown_ms == 36 * HOUR_MS


def test_a_rule_without_a_cooldown_fires_every_time_even_for_a_late_signal(
    tmp_path: Path,
) -> None:
    rules = rules_from(tmp_path, one_rule(""))
    cooldowns = {"acme:c1:r": SILENCE_MS + HOUR_MS}

    decided = rules.decide(SILENCE, CUSTOMER, cooldowns, SILENCE_MS)

    assert [i.action for i in decided] == ["notify_rep"]
    assert cooldowns == {"acme:c1:r": SILENCE_MS}


def test_a_dedupe_key_shared_by_two_rules_lets_only_the_first_fire() -> None:
    rules = default_rules()
    low_value = msgspec.structs.replace(CUSTOMER, value_band=2)

    high = rules.decide(DECLINE, CUSTOMER, {}, SILENCE_MS)
    low_cooldowns: dict[str, int] = {}
    low = rules.decide(DECLINE, low_value, low_cooldowns, SILENCE_MS)

    assert [(i.rule, i.action) for i in high] == [
        ("decline_high_value", "escalate_customer_success")
    ]
    assert [(i.rule, i.action) for i in low] == [("decline", "notify_rep")]
    assert low_cooldowns == {"acme:c1:decline": SILENCE_MS}


def test_an_action_placeholder_gives_each_action_its_own_cooldown(
    tmp_path: Path,
) -> None:
    text = one_rule("", cooldown="1d", dedupe_key="{customer_id}/{action}")
    text += '[[rule.then]]\naction = "care_task"\n'
    rules = rules_from(tmp_path, text)
    cooldowns = {"c1/care_task": SILENCE_MS - HOUR_MS}

    decided = rules.decide(SILENCE, CUSTOMER, cooldowns, SILENCE_MS)

    assert [i.action for i in decided] == ["notify_rep"]
    assert cooldowns == {
        "c1/notify_rep": SILENCE_MS,
        "c1/care_task": SILENCE_MS - HOUR_MS,
    }


def test_forgetting_cooldowns_drops_only_those_past_the_longest_cooldown() -> None:
    cooldowns = {"old": 1_000, "edge": 5_000, "new": 9_000}

    dropped = forget_cooldowns(cooldowns, before_ms=8_000, max_cooldown_ms=3_000)

    assert dropped == 1
    assert cooldowns == {"edge": 5_000, "new": 9_000}


def test_the_redacted_reason_keeps_the_percentages_and_drops_every_amount() -> None:
    decided = default_rules().decide(DECLINE, CUSTOMER, {}, SILENCE_MS)[0]

    assert decided.reason == (
        "CLV fell 3 windows in a row, last from 120.00 to 101.50 USD (-15.4 %); "
        "CLV 1,234.56 USD, value band 4, health 52.3 (yellow)."
    )
    assert decided.reason_redacted == (
        "CLV fell 3 windows in a row, last from [redacted] to [redacted] (-15.4 %); "
        "CLV [redacted], value band 4, health 52.3 (yellow)."
    )
    for amount in ("120", "101", "1,234", "234", "56", "USD"):
        assert amount not in decided.reason_redacted
    assert decided.trigger_event_id == "o9"
    assert decided.trigger_ts == "2024-03-03T13:59:59.000Z"


@pytest.mark.parametrize(
    ("kind", "details", "channel", "reason"),
    [
        (
            "silence",
            {"silent_ms": 130.5 * 24 * HOUR_MS, "window_ms": 72 * HOUR_MS},
            None,
            "No inbound touch for 130.5 days since 1970-01-01T00:00:00.000Z, "
            "past the 3.0 days silence window",
        ),
        (
            "silence_ended",
            {"silent_ms": 60 * HOUR_MS},
            "email",
            "Inbound touch on email after 60.0 h of silence",
        ),
        (
            "decline",
            {"previous_clv": 2000.0, "clv": 1500.0, "drop": 0.25, "windows": 1},
            None,
            "CLV fell from 2,000.00 to 1,500.00 EUR (-25.0 %)",
        ),
        (
            "at_risk",
            {"p_alive": 0.42, "threshold": 0.5},
            None,
            "P(alive) fell to 0.42, below 0.50",
        ),
        (
            "health_drop",
            {"previous_band": 2, "band": 1, "health": 64.1},
            None,
            "Health band fell from green to yellow (health 64.1)",
        ),
    ],
)
def test_each_signal_has_a_reason_with_its_numbers(
    tmp_path: Path,
    kind: str,
    details: dict[str, float],
    channel: str | None,
    reason: str,
) -> None:
    text = one_rule("").replace('["silence", "decline"]', f'"{kind}"')
    rules = rules_from(tmp_path, text)
    signal = msgspec.structs.replace(
        SILENCE, kind=kind, details=details, channel=channel
    )
    customer = CustomerView(
        segment=None,
        repeat_purchases=0,
        clv=None,
        value_band=None,
        p_alive=None,
        health=None,
        health_band=None,
        currency="EUR",
    )

    decided = rules.decide(signal, customer, {}, SILENCE_MS)[0]

    assert decided.reason == reason + "."
    if kind != "decline":
        assert decided.reason_redacted == decided.reason


def test_declared_actions_carry_their_parameters_through(tmp_path: Path) -> None:
    text = 'actions = ["sms_nudge"]\n' + one_rule("").replace(
        'action = "notify_rep"', 'action = "sms_nudge"\ntemplate = "t_48h"'
    )
    path = tmp_path / "rules.toml"
    path.write_text(text)

    rules = load_rules(path)
    decided = rules.decide(SILENCE, CUSTOMER, {}, SILENCE_MS)

    assert [(i.action, i.params) for i in decided] == [
        ("sms_nudge", {"template": "t_48h"})
    ]
    assert rules.digest == hashlib.sha256(text.encode()).hexdigest()
    assert rules.source == str(path)


RULE = (
    '[[rule]]\nname = "care"\n{rule}\n[rule.when]\nsignal = "silence"\n{when}\n'
    '[[rule.then]]\naction = "care_task"\n{then}\n'
)


@pytest.mark.parametrize(
    ("rule", "when", "then", "message"),
    [
        (
            "",
            'signal = "silent"',
            "",
            'rule "care": expected `when.signal` to be one of silence, '
            'silence_ended, decline, at_risk, health_drop - got "silent"',
        ),
        (
            "",
            "",
            '[[rule.then]]\naction = "fax_blast"',
            'rule "care": expected `then[1].action` to be one of care_task, '
            "content_push, escalate_customer_success, notify_rep, review_pricing, "
            'win_back_offer - got "fax_blast"',
        ),
        (
            "",
            "",
            '[[rule.then]]\naction = "content_push"',
            'rule "care": missing key `then[1].pack`: content_push needs a content '
            "pack",
        ),
        (
            "",
            "clv_abve = 100.0",
            "",
            'rule "care": unknown key `when.clv_abve`; expected one of signal, '
            "clv_above, clv_below, min_value_band, health_band, segment, channel, "
            "tenant, min_repeat_purchases",
        ),
        (
            'cooldown = "7 days"',
            "",
            "",
            'rule "care": expected `cooldown` to be a duration such as 30m, 36h or '
            '7d - got "7 days"',
        ),
        (
            "priority = 11",
            "",
            "",
            'rule "care": expected `priority` to be from 1 to 10 - got 11',
        ),
        (
            "",
            "clv_above = 500.0\nclv_below = 100.0",
            "",
            'rule "care": expected `when.clv_above` to be below `when.clv_below` '
            "(100.0) - got 500.0",
        ),
        (
            'dedupe_key = "{tenant}:{customer}"',
            "",
            "",
            'rule "care": expected `dedupe_key` to be made of {tenant}, '
            "{customer_id}, {rule}, {signal}, {action}, {channel}, {segment} and "
            'text - got "{tenant}:{customer}"',
        ),
        (
            "",
            'health_band = ["red", "amber"]',
            "",
            'rule "care": expected `when.health_band[1]` to be one of red, yellow, '
            'green - got "amber"',
        ),
        (
            "priority = 7.5",
            "",
            "",
            'rule "care": expected `priority` to be int - got float',
        ),
    ],
)
def test_a_broken_rule_names_the_file_the_rule_and_the_key(
    tmp_path: Path, rule: str, when: str, then: str, message: str
) -> None:
    text = RULE.format(rule=rule, when=when, then=then)
    if when.startswith("signal"):
        text = text.replace('signal = "silence"\n', "")
    path = tmp_path / "rules.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as raised:
        load_rules(path)

    assert str(raised.value) == f"{path}: {message}"


def test_two_rules_with_one_name_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULE.format(rule="", when="", then="") * 2)

    with pytest.raises(ConfigError) as raised:
        load_rules(path)

    assert str(raised.value) == (
        f'{path}: rule "care": expected `name` to be unique - got "care" for '
        "rule[0] and rule[1]"
    )


def test_a_rule_without_a_name_is_named_by_its_position(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULE.format(rule="", when="", then="").replace('name = "care"', ""))

    with pytest.raises(ConfigError) as raised:
        load_rules(path)

    assert str(raised.value) == f"{path}: rule[0]: missing key `name`"


def test_a_file_that_is_not_toml_or_not_there_says_so(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "care\n')

    with pytest.raises(ConfigError, match=r"rules\.toml: not valid TOML: "):
        load_rules(path)
    with pytest.raises(ConfigError) as raised:
        load_rules(tmp_path / "missing.toml")
    assert str(raised.value) == (
        f"cannot read {tmp_path / 'missing.toml'}: No such file or directory"
    )


def test_the_shipped_broken_example_fails_with_its_exact_message() -> None:
    path = DATA / "rules_broken.toml"

    with pytest.raises(ConfigError) as raised:
        load_rules(path)

    assert str(raised.value) == (
        f'{path}: rule "silent_care": expected `when.signal` to be one of '
        'silence, silence_ended, decline, at_risk, health_drop - got "silent"'
    )
