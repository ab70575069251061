"""Intervention rules: signals and a customer's state in, CRM commands out.

The key-group actor decides *signals* (a customer fell silent, CLV declined,
...); a rule file, TOML the business edits without code
(``stream/rules/default.toml`` unless a run names another), says which
signals, for which customers, become which *interventions*. :func:`load_rules`
validates a file once; :meth:`RuleSet.decide` then runs for every signal, with
the cooldowns the caller keeps (and snapshots) beside the key group.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from operators.events import CHANNELS
from state.record import format_time
from stream.errors import ConfigError

SIGNALS = ("silence", "silence_ended", "decline", "at_risk", "health_drop")
ACTIONS = (
    "care_task",
    "content_push",
    "escalate_customer_success",
    "notify_rep",
    "review_pricing",
    "win_back_offer",
)
HEALTH_BANDS = ("red", "yellow", "green")
PLACEHOLDERS = (
    "tenant",
    "customer_id",
    "rule",
    "signal",
    "action",
    "channel",
    "segment",
)
DEFAULT_DEDUPE_KEY = "{tenant}:{customer_id}:{rule}"

T = TypeVar("T")
_NAME = re.compile(r"[a-z0-9_]{1,64}")
_PARAM = re.compile(r"[a-z_]{1,32}")
_MAX_PARAM_CHARS = 256
# The grammar of stream.config.parse_duration, repeated so that operators do
# not import the configuration module (which will load rule files).
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*")
_UNIT_MS = dict(ms=1, s=1_000, m=60_000, h=3_600_000, d=86_400_000, w=604_800_000)


class Signal(msgspec.Struct, frozen=True):
    """A condition the key-group actor found true for a customer, in event time.

    ``channel`` is the channel of the last inbound touch (for silence_ended,
    of the touch that ended it); ``trigger_*`` are None when the passing of
    time made the condition true. ``details`` holds the numbers behind it:

    - silence: ``silent_ms``, ``window_ms``, ``last_inbound_ms``;
    - silence_ended: ``silent_ms`` (since the inbound touch before);
    - decline: ``previous_clv``, ``clv``, ``drop`` (0.12 is 12 %), ``windows``;
    - at_risk: ``p_alive``, ``threshold``;
    - health_drop: ``previous_band``, ``band`` (0 red, 1 yellow, 2 green),
      ``health``.
    """

    kind: str
    tenant: str
    customer_id: str
    event_time_ms: int
    channel: str | None
    trigger_event_id: str | None = None
    trigger_ts_ms: int | None = None
    details: dict[str, float] = {}


class CustomerView(msgspec.Struct, frozen=True):
    """The customer's state when the signal was raised, as rules see it."""

    segment: str | None
    repeat_purchases: int
    clv: float | None
    value_band: int | None
    p_alive: float | None
    health: float | None
    health_band: str | None
    currency: str = "USD"


class Intervention(msgspec.Struct, frozen=True):
    """A command for the CRMs: one action of one rule for one signal."""

    intervention_id: str
    tenant: str
    customer_id: str
    rule: str
    action: str
    params: dict[str, str]
    signal: str
    priority: int
    reason: str
    reason_redacted: str
    event_time: str
    emitted_at: str
    trigger_event_id: str | None
    trigger_ts: str | None
    channel: str | None
    segment: str | None
    clv: float | None
    value_band: int | None
    health: float | None
    health_band: str | None


class When(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The conditions of a rule, as written; a missing one always holds."""

    signal: str | tuple[str, ...]
    clv_above: float | None = None
    clv_below: float | None = None
    min_value_band: int | None = None
    health_band: tuple[str, ...] | None = None
    segment: tuple[str, ...] | None = None
    channel: tuple[str, ...] | None = None
    tenant: tuple[str, ...] | None = None
    min_repeat_purchases: int | None = None


class Action(msgspec.Struct, frozen=True):
    name: str
    params: dict[str, str]


class Rule(msgspec.Struct, frozen=True):
    """A validated rule: which signals and customers, and what to do."""

    name: str
    description: str
    priority: int
    cooldown_ms: int
    dedupe_key: str
    signals: tuple[str, ...]
    when: When
    then: tuple[Action, ...]

    def may_match(
        self, signal: Signal, segment: str | None, repeat_purchases: int
    ) -> bool:
        """Whether the rule can match, judged on what costs nothing to know:
        the caller evaluates the customer's value only when one can."""
        when = self.when
        return (
            signal.kind in self.signals
            and (when.min_repeat_purchases or 0) <= repeat_purchases
            and _among(segment, when.segment)
            and _among(signal.channel, when.channel)
            and _among(signal.tenant, when.tenant)
        )

    def matches(self, signal: Signal, customer: CustomerView) -> bool:
        when, clv = self.when, customer.clv
        return (
            signal.kind in self.signals
            and (when.clv_above is None or (clv is not None and clv > when.clv_above))
            and (when.clv_below is None or (clv is not None and clv < when.clv_below))
            and (when.min_value_band or 0) <= (customer.value_band or 0)
            and (when.min_repeat_purchases or 0) <= customer.repeat_purchases
            and _among(customer.health_band, when.health_band)
            and _among(customer.segment, when.segment)
            and _among(signal.channel, when.channel)
            and _among(signal.tenant, when.tenant)
        )


class RuleSet(msgspec.Struct, frozen=True):
    """The rules of one file, in file order."""

    source: str
    digest: str
    rules: tuple[Rule, ...]

    def may_match(
        self, signal: Signal, segment: str | None, repeat_purchases: int
    ) -> bool:
        """Whether any rule can match (see :meth:`Rule.may_match`)."""
        return any(
            rule.may_match(signal, segment, repeat_purchases) for rule in self.rules
        )

    @property
    def max_cooldown_ms(self) -> int:
        return max((rule.cooldown_ms for rule in self.rules), default=0)

    def decide(
        self,
        signal: Signal,
        customer: CustomerView,
        cooldowns: dict[str, int],
        emitted_at_ms: int,
    ) -> list[Intervention]:
        """The interventions `signal` calls for; records them in `cooldowns`.

        A rule's action is held back while its dedupe key was last used less
        than the rule's cooldown before the signal, in event time. `cooldowns`
        maps dedupe keys to that time; the caller keeps it in its state.
        """
        decided: list[Intervention] = []
        reasons: tuple[str, str] | None = None
        now = signal.event_time_ms

        for rule in self.rules:
            if not rule.matches(signal, customer):
                continue
            used: list[str] = []
            for action in rule.then:
                key = _dedupe_key(rule, action.name, signal, customer)
                last = cooldowns.get(key)
                # Without a cooldown a rule always fires, for a late signal too.
                if (
                    rule.cooldown_ms
                    and last is not None
                    and now - last < rule.cooldown_ms
                ):
                    continue
                reasons = reasons or (
                    _reason(signal, customer, redact=False),
                    _reason(signal, customer, redact=True),
                )
                used.append(key)
                decided.append(
                    _intervention(
                        rule, action, signal, customer, reasons, emitted_at_ms
                    )
                )
            for key in used:
                cooldowns[key] = now
        return decided


def intervention_id(signal: Signal, rule: str, action: str) -> str:
    """The stable id of an intervention: the same decision gives the same id."""
    parts = (signal.tenant, signal.customer_id, rule, action, signal.kind)
    text = "\x1f".join((*parts, str(signal.event_time_ms)))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def forget_cooldowns(
    cooldowns: dict[str, int], before_ms: int, max_cooldown_ms: int
) -> int:
    """Drop the cooldowns no rule can still be inside; return how many."""
    horizon = before_ms - max_cooldown_ms
    stale = [key for key, used_ms in cooldowns.items() if used_ms < horizon]
    for key in stale:
        del cooldowns[key]
    return len(stale)


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rule file."""
    try:
        data = path.read_bytes()
    except OSError as ex:
        msg = f"cannot read {path}: {ex.strerror}"
        raise ConfigError(msg) from None
    return parse_rules(data, str(path))


def default_rules() -> RuleSet:
    """The rules shipped in ``stream/rules/default.toml``."""
    data = resources.files("stream.rules").joinpath("default.toml").read_bytes()
    return parse_rules(data, "default.toml")


class _RuleSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    when: When
    then: list[dict[str, Any]]
    description: str = ""
    priority: int = 5
    cooldown: str = "0s"
    dedupe_key: str = DEFAULT_DEDUPE_KEY


class _FileSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    actions: list[str] = []
    rule: list[dict[str, Any]] = []


def parse_rules(data: bytes, source: str) -> RuleSet:
    """Validate the bytes of a rule file; `source` names it in errors."""
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as ex:
        msg = f"{source}: not valid TOML: {ex}"
        raise ConfigError(msg) from None
    spec = _convert(raw, _FileSpec, source)

    for index, action in enumerate(spec.actions):
        if not _NAME.fullmatch(action):
            expected = "1 to 64 of a-z, 0-9 and _"
            raise _expected(source, f"actions[{index}]", expected, action)
    actions = list(ACTIONS) + [a for a in spec.actions if a not in ACTIONS]
    rules: list[Rule] = []
    first_index: dict[str, int] = {}
    for index, raw_rule in enumerate(spec.rule):
        name = raw_rule.get("name")
        label = f"rule {_show(name)}" if isinstance(name, str) else f"rule[{index}]"
        where = f"{source}: {label}"
        rule = _build(_convert(raw_rule, _RuleSpec, where), actions, where)
        if rule.name in first_index:
            msg = (
                f"{where}: expected `name` to be unique - got {_show(rule.name)} "
                f"for rule[{first_index[rule.name]}] and rule[{index}]"
            )
            raise ConfigError(msg)
        first_index[rule.name] = index
        rules.append(rule)
    digest = hashlib.sha256(data).hexdigest()
    return RuleSet(source=source, digest=digest, rules=tuple(rules))


def _build(spec: _RuleSpec, actions: list[str], where: str) -> Rule:
    when = spec.when
    signals = (when.signal,) if isinstance(when.signal, str) else when.signal
    if not _NAME.fullmatch(spec.name):
        raise _expected(where, "name", "1 to 64 of a-z, 0-9 and _", spec.name)
    if not signals:
        raise _expected(where, "when.signal", "a signal or a list of them", [])
    _check_among(where, "when.signal", when.signal, SIGNALS)
    if not 1 <= spec.priority <= 10:
        raise _expected(where, "priority", "from 1 to 10", spec.priority)
    cooldown_ms = _duration_ms(spec.cooldown)
    if cooldown_ms is None:
        expected = "a duration such as 30m, 36h or 7d"
        raise _expected(where, "cooldown", expected, spec.cooldown)
    expected = f"made of {_one_of('{' + p + '}' for p in PLACEHOLDERS)} and text"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(spec.dedupe_key)]
    except ValueError:
        raise _expected(where, "dedupe_key", expected, spec.dedupe_key) from None
    if any(field is not None and field not in PLACEHOLDERS for field in fields):
        raise _expected(where, "dedupe_key", expected, spec.dedupe_key)

    if when.clv_above is not None and when.clv_below is not None:
        if when.clv_above >= when.clv_below:
            expected = f"below `when.clv_below` ({when.clv_below})"
            raise _expected(where, "when.clv_above", expected, when.clv_above)
    if when.min_value_band is not None and not 1 <= when.min_value_band <= 5:
        raise _expected(where, "when.min_value_band", "1 to 5", when.min_value_band)
    if (when.min_repeat_purchases or 0) < 0:
        key, found = "when.min_repeat_purchases", when.min_repeat_purchases
        raise _expected(where, key, "0 or more", found)
    _check_among(where, "when.health_band", when.health_band, HEALTH_BANDS)
    _check_among(where, "when.channel", when.channel, CHANNELS)
    for key in ("health_band", "segment", "channel", "tenant"):
        if getattr(when, key) == ():
            raise _expected(where, f"when.{key}", "a non-empty array", [])

    if not spec.then:
        raise _expected(where, "then", "at least one [[rule.then]] action", [])
    then = tuple(
        _action(entry, f"then[{index}]", actions, where)
        for index, entry in enumerate(spec.then)
    )
    return Rule(
        name=spec.name,
        description=spec.description,
        priority=spec.priority,
        cooldown_ms=cooldown_ms,
        dedupe_key=spec.dedupe_key,
        signals=signals,
        when=when,
        then=then,
    )


def _action(entry: dict[str, Any], key: str, actions: list[str], where: str) -> Action:
    name = entry.get("action")
    if name is None:
        msg = f"{where}: missing key `{key}.action`"
        raise ConfigError(msg)
    _check_among(where, f"{key}.action", name, actions)
    params: dict[str, str] = {}
    for param, value in entry.items():
        if param == "action":
            continue
        if not _PARAM.fullmatch(param):
            msg = (
                f"{where}: expected the keys of `{key}` to be 1 to 32 of a-z and _"
                f" - got {_show(param)}"
            )
            raise ConfigError(msg)
        if not isinstance(value, str) or len(value) > _MAX_PARAM_CHARS:
            expected = f"a string of at most {_MAX_PARAM_CHARS} characters"
            raise _expected(where, f"{key}.{param}", expected, value)
        params[param] = value
    if name == "content_push" and "pack" not in params:
        msg = f"{where}: missing key `{key}.pack`: content_push needs a content pack"
        raise ConfigError(msg)
    return Action(name=name, params=params)


def _convert(raw: Any, kind: type[T], where: str) -> T:
    """msgspec.convert, its error turned into the key a user wrote."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as ex:
        text, _, at = str(ex).partition(" - at `$")
        path = at.rstrip("`").lstrip(".")
        prefix = f"{path}." if path else ""
        found = re.fullmatch(
            r"Object (contains unknown|missing required) field `(.+)`", text
        )
        typed = re.fullmatch(r"Expected `(.+)`, got `(.+)`", text)
        if found and found[1] == "contains unknown":
            known = _one_of(_fields(kind, path))
            msg = f"{where}: unknown key `{prefix}{found[2]}`; expected one of {known}"
        elif found:
            msg = f"{where}: missing key `{prefix}{found[2]}`"
        elif typed:
            # In the words of TOML, where there is no null.
            expected = typed[1].replace(" | null", "").replace("object", "table")
            got = typed[2].replace("object", "table")
            msg = f"{where}: expected `{path}` to be {expected} - got {got}"
        else:
            msg = f"{where}: {text[:1].lower()}{text[1:]} at `{path}`"
        raise ConfigError(msg) from None


def _fields(kind: type[Any], path: str) -> list[str]:
    for part in filter(None, path.split(".")):
        kind = next(f.type for f in msgspec.structs.fields(kind) if f.name == part)
    return [field.name for field in msgspec.structs.fields(kind)]


def _expected(where: str, key: str, expected: str, got: object) -> ConfigError:
    return ConfigError(f"{where}: expected `{key}` to be {expected} - got {_show(got)}")


def _show(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _one_of(names: Iterable[str]) -> str:
    return ", ".join(names)


def _check_among(where: str, key: str, value: Any, allowed: Sequence[str]) -> None:
    """Fail unless `value` (a name, a tuple of them or None) is in `allowed`."""
    values = (value,) if isinstance(value, str) else value or ()
    for index, name in enumerate(values):
        if name not in allowed:
            at = key if isinstance(value, str) else f"{key}[{index}]"
            raise _expected(where, at, f"one of {_one_of(allowed)}", name)


def _duration_ms(text: str) -> int | None:
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    return round(float(match[1]) * _UNIT_MS[match[2]])


def _among(value: str | None, allowed: tuple[str, ...] | None) -> bool:
    return allowed is None or value in allowed


def _dedupe_key(rule: Rule, action: str, signal: Signal, customer: CustomerView) -> str:
    return rule.dedupe_key.format_map(
        {
            "tenant": signal.tenant,
            "customer_id": signal.customer_id,
            "rule": rule.name,
            "signal": signal.kind,
            "action": action,
            "channel": signal.channel or "",
            "segment": customer.segment or "",
        }
    )


def _intervention(
    rule: Rule,
    action: Action,
    signal: Signal,
    customer: CustomerView,
    reasons: tuple[str, str],
    emitted_at_ms: int,
) -> Intervention:
    trigger_ts_ms = signal.trigger_ts_ms
    return Intervention(
        intervention_id=intervention_id(signal, rule.name, action.name),
        tenant=signal.tenant,
        customer_id=signal.customer_id,
        rule=rule.name,
        action=action.name,
        params=dict(action.params),
        signal=signal.kind,
        priority=rule.priority,
        reason=reasons[0],
        reason_redacted=reasons[1],
        event_time=_utc(signal.event_time_ms),
        emitted_at=_utc(emitted_at_ms),
        trigger_event_id=signal.trigger_event_id,
        trigger_ts=None if trigger_ts_ms is None else _utc(trigger_ts_ms),
        channel=signal.channel,
        segment=customer.segment,
        clv=customer.clv,
        value_band=customer.value_band,
        health=customer.health,
        health_band=customer.health_band,
    )


def _reason(signal: Signal, customer: CustomerView, *, redact: bool) -> str:
    """A sentence with the numbers behind `signal`; money hidden if `redact`."""
    detail, channel = defaultdict(float, signal.details), signal.channel
    if signal.kind == "silence":
        since = _utc(int(detail["last_inbound_ms"]))
        last_on = f" (last on {channel})" if channel else ""
        what = (
            f"No inbound touch for {_span(detail['silent_ms'])} since "
            f"{since}{last_on}, past the {_span(detail['window_ms'])} "
            "silence window"
        )
    elif signal.kind == "silence_ended":
        on = f" on {channel}" if channel else ""
        what = f"Inbound touch{on} after {_span(detail['silent_ms'])} of silence"
    elif signal.kind == "decline":
        windows = int(detail["windows"])
        run = f" {windows} windows in a row, last" if windows > 1 else ""
        before, after = detail["previous_clv"], detail["clv"]
        amounts = f"{before:,.2f} to {after:,.2f} {customer.currency}"
        amounts = "[redacted] to [redacted]" if redact else amounts
        drop = f"{-100 * detail['drop']:.1f} %"
        what = f"CLV fell{run} from {amounts} ({drop})"
    elif signal.kind == "at_risk":
        what = (
            f"P(alive) fell to {detail['p_alive']:.2f}, below {detail['threshold']:.2f}"
        )
    elif signal.kind == "health_drop":
        what = (
            f"Health band fell from {_band(detail['previous_band'])} "
            f"to {_band(detail['band'])} (health {detail['health']:.1f})"
        )
    else:
        what = f"Signal {signal.kind}"

    facts = []
    if customer.clv is not None:
        money = f"{customer.clv:,.2f} {customer.currency}"
        facts.append(f"CLV {'[redacted]' if redact else money}")
    if customer.value_band is not None:
        facts.append(f"value band {customer.value_band}")
    if customer.health is not None:
        band = f" ({customer.health_band})" if customer.health_band else ""
        facts.append(f"health {customer.health:.1f}{band}")
    return f"{what}; {', '.join(facts)}." if facts else f"{what}."


def _span(ms: float) -> str:
    hours = ms / 3_600_000
    if hours < 1:
        return f"{ms / 60_000:.1f} min" if ms >= 60_000 else f"{ms / 1000:.1f} s"
    return f"{hours:.1f} h" if hours < 72 else f"{hours / 24:.1f} days"


def _band(code: float) -> str:
    index = int(code)
    return HEALTH_BANDS[index] if 0 <= index < len(HEALTH_BANDS) else str(code)


def _utc(ts_ms: int) -> str:
    # format_time gives None only for NO_TIME (-1), never a signal's time.
    return format_time(ts_ms) or ""
