"""Configuration: a TOML file, validated into immutable settings.

Without a file every setting has its default, which is the embedded
single-machine setup. ``README.md`` ("Configuration") lists every key.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from operators.decisions import DecisionSettings, SilenceOverride
from operators.events import CHANNELS, Channel
from operators.health import HealthSettings, HealthTemplate
from operators.rules import load_rules
from state.routing import DEFAULT_KEY_GROUPS
from stream.errors import ConfigError, UsageError

Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Rate = Annotated[float, msgspec.Meta(gt=0)]

T = TypeVar("T")
Component = Literal[
    "p_alive", "recency", "engagement_trend", "service", "nps", "value_trend"
]

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}


class TenantConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A tenant's currency, time zone, exchange rates and health template."""

    currency: Currency = "USD"
    time_zone: str = "UTC"
    rates: dict[Currency, Rate] = {}
    health_template: str | None = None


class HealthConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Which health template applies, the trend windows and the bands."""

    template: str = "default"
    short_window: str = "14d"
    long_window: str = "90d"
    red_below: Annotated[float, msgspec.Meta(ge=0, le=100)] = 40.0
    green_from: Annotated[float, msgspec.Meta(ge=0, le=100)] = 70.0


Weight = Annotated[float, msgspec.Meta(ge=0)]


class TemplateParams(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    recency_half_life: str = "30d"
    open_ticket_penalty: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.20
    complaint_penalty: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25


class TemplateFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A health template file (``stream/templates/NAME.toml``)."""

    weights: dict[Component, Weight]
    channels: dict[Channel, Weight] = {}
    params: TemplateParams = TemplateParams()


class ValueConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How customer value is evaluated (see operators/clv.py for the formula)."""

    horizon: str = "52w"
    margin: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    annual_discount: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.10


class SilenceOverrideConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A silence window for the customers matching every field given."""

    window: str
    tenant: Name | None = None
    segment: Name | None = None
    channel: Channel | None = None


class SilenceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How long without an inbound touch is silence (README, "Decisions")."""

    window: str = "48h"
    override: list[SilenceOverrideConfig] = []


class DeclineConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Value windows and how a decline of CLV over them is detected."""

    window: Literal["week", "month", "quarter"] = "quarter"
    method: Literal["consecutive", "cusum"] = "consecutive"
    windows: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    min_drop: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.05
    cusum_slack: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.02
    cusum_threshold: Annotated[float, msgspec.Meta(gt=0, le=100)] = 0.15


class RiskConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """When a customer is at risk."""

    p_alive_below: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5


class ClockConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The live clock (``replay --follow``); replay runs on event time."""

    allowed_lateness: str = "5s"
    idle_timeout: str = "5s"
    allowed_skew: str = "5m"


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Redis mode (README, "Redis mode"): set `url` to use it."""

    url: str | None = None
    prefix: Name = "touchstream"
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4


class CheckpointConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How often the engine of ``touchstream serve`` checkpoints its state
    (bytewax recovery: the source offsets and every key group's table)."""

    interval: str = "10s"
    enabled: bool = True


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The gRPC server of ``touchstream serve`` (README, "Serving").

    Paths are relative to the configuration file.
    """

    listen: str = "127.0.0.1:50051"
    data: str | None = None
    tokens: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_message_bytes: Annotated[int, msgspec.Meta(ge=65_536, le=1 << 30)] = 16 << 20
    max_batch_events: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    retention: str = "7d"
    heartbeat: str = "10s"
    poll_interval: str = "50ms"
    customers_interval: str = "1s"
    keepalive: str = "30s"
    shutdown_grace: str = "5s"
    movers_history: str = "35d"
    max_streams_per_tenant: Annotated[int, msgspec.Meta(ge=1)] = 64
    max_unacked: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    page_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Every setting of a Touchstream run.

    ``rules`` is the path of a rules file, relative to the configuration
    file; without it the shipped default rules apply.
    """

    key_groups: Annotated[int, msgspec.Meta(ge=1, le=4096)] = DEFAULT_KEY_GROUPS
    default_tenant: Name = "default"
    dedupe_span: str = "7d"
    max_record_bytes: Annotated[int, msgspec.Meta(ge=256, le=16_777_216)] = 65_536
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 2_048
    tenant_defaults: TenantConfig = TenantConfig()
    tenants: dict[Name, TenantConfig] = {}
    value: ValueConfig = ValueConfig()
    health: HealthConfig = HealthConfig()
    rules: str | None = None
    silence: SilenceConfig = SilenceConfig()
    decline: DeclineConfig = DeclineConfig()
    risk: RiskConfig = RiskConfig()
    clock: ClockConfig = ClockConfig()
    server: ServerConfig = ServerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    redis: RedisConfig = RedisConfig()

    def tenant(self, name: str) -> TenantConfig:
        return self.tenants.get(name, self.tenant_defaults)

    @property
    def dedupe_span_ms(self) -> int:
        return parse_duration(self.dedupe_span)


class CsvMap(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How the columns of a CSV file become event fields (``--csv-map``)."""

    columns: dict[str, str] = {}
    constants: dict[str, str] = {}
    attributes: dict[str, str] = {}


def load_config(path: Path | None) -> Config:
    """Read and validate a configuration file; None gives the defaults."""
    if path is None:
        return Config()
    config = _load_toml(path, Config)
    base = path.resolve().parent
    if config.rules is not None:
        config = msgspec.structs.replace(config, rules=str(base / config.rules))
    server = config.server
    config = msgspec.structs.replace(
        config,
        server=msgspec.structs.replace(
            server,
            **{
                key: str(base / value)
                for key in ("data", "tokens", "tls_cert", "tls_key", "tls_client_ca")
                if (value := getattr(server, key)) is not None
            },
        ),
    )
    durations = [
        ("dedupe_span", config.dedupe_span),
        ("value.horizon", config.value.horizon),
        ("health.short_window", config.health.short_window),
        ("health.long_window", config.health.long_window),
        ("silence.window", config.silence.window),
        ("clock.allowed_lateness", config.clock.allowed_lateness),
        ("clock.idle_timeout", config.clock.idle_timeout),
        ("clock.allowed_skew", config.clock.allowed_skew),
        ("server.retention", config.server.retention),
        ("server.heartbeat", config.server.heartbeat),
        ("server.poll_interval", config.server.poll_interval),
        ("server.customers_interval", config.server.customers_interval),
        ("server.keepalive", config.server.keepalive),
        ("server.shutdown_grace", config.server.shutdown_grace),
        ("server.movers_history", config.server.movers_history),
        ("checkpoint.interval", config.checkpoint.interval),
    ] + [
        (f"silence.override[{index}].window", override.window)
        for index, override in enumerate(config.silence.override)
    ]
    for key, text in durations:
        try:
            parse_duration(text)
        except UsageError as ex:
            msg = f"{path}: {ex} at `{key}`"
            raise ConfigError(msg) from None
    for where, tenant in [("tenant_defaults", config.tenant_defaults)] + [
        (f"tenants.{name}", tenant) for name, tenant in config.tenants.items()
    ]:
        try:
            zone(tenant.time_zone)
        except UsageError as ex:
            msg = f"{path}: {ex} at `{where}.time_zone`"
            raise ConfigError(msg) from None
    try:
        health_settings(config)
    except UsageError as ex:
        msg = f"{path}: {ex}"
        raise ConfigError(msg) from None
    if config.rules is not None:
        load_rules(Path(config.rules))  # refused here, before a run starts
    return config


def decision_settings(config: Config) -> DecisionSettings:
    """How silence, decline and risk are decided, from a configuration."""
    silence = config.silence
    decline = config.decline
    return DecisionSettings(
        silence_window_ms=parse_duration(silence.window),
        silence_overrides=tuple(
            SilenceOverride(
                parse_duration(override.window),
                override.tenant,
                override.segment,
                None if override.channel is None else CHANNELS.index(override.channel),
            )
            for override in silence.override
        ),
        value_window=decline.window,
        decline_method=decline.method,
        decline_windows=decline.windows,
        decline_min_drop=decline.min_drop,
        cusum_slack=decline.cusum_slack,
        cusum_threshold=decline.cusum_threshold,
        p_alive_below=config.risk.p_alive_below,
    )


def rules_path(config: Config) -> Path | None:
    """The rules file of a configuration, or None for the shipped default."""
    return None if config.rules is None else Path(config.rules)


def health_settings(config: Config) -> HealthSettings:
    """The health settings of a configuration, with its templates loaded.

    A template is a name shipped in ``stream/templates/`` (default, retail,
    saas, manufacturing, education) or the path of a TOML file of the same
    form.
    """
    loaded: dict[str, HealthTemplate] = {}

    def template(name: str, where: str) -> HealthTemplate:
        if name not in loaded:
            loaded[name] = _load_template(name, where)
        return loaded[name]

    health = config.health
    return HealthSettings(
        default=template(health.template, "health.template"),
        tenants={
            tenant: template(settings.health_template, f"tenants.{tenant}")
            for tenant, settings in config.tenants.items()
            if settings.health_template is not None
        },
        short_window_ms=float(parse_duration(health.short_window)),
        long_window_ms=float(parse_duration(health.long_window)),
        red_below=health.red_below,
        green_from=health.green_from,
    )


def _load_template(name: str, where: str) -> HealthTemplate:
    shipped = resources.files("stream.templates").joinpath(f"{name}.toml")
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            msg = f"health template file {name} does not exist (at `{where}`)"
            raise UsageError(msg)
        data = path.read_bytes()
    elif shipped.is_file():
        data = shipped.read_bytes()
    else:
        names = sorted(
            entry.name.removesuffix(".toml")
            for entry in resources.files("stream.templates").iterdir()
            if entry.name.endswith(".toml")
        )
        msg = (
            f"expected a health template ({', '.join(names)}) or a .toml path "
            f"at `{where}` - got {name!r}"
        )
        raise UsageError(msg)
    try:
        parsed = msgspec.toml.decode(data, type=TemplateFile)
        half_life = parse_duration(parsed.params.recency_half_life)
    except (msgspec.ValidationError, msgspec.DecodeError, UsageError) as ex:
        msg = f"health template {name}: {_config_message(str(ex))}"
        raise UsageError(msg) from None
    return HealthTemplate(
        name=Path(name).stem,
        weights={str(name): weight for name, weight in parsed.weights.items()},
        channel_weights=tuple(
            {str(c): w for c, w in parsed.channels.items()}.get(channel, 1.0)
            for channel in CHANNELS
        ),
        recency_half_life_ms=float(half_life),
        open_ticket_penalty=parsed.params.open_ticket_penalty,
        complaint_penalty=parsed.params.complaint_penalty,
    )


def load_csv_map(path: Path) -> CsvMap:
    """Read a CSV column mapping file."""
    return _load_toml(path, CsvMap)


def _load_toml(path: Path, kind: type[T]) -> T:
    try:
        data = path.read_bytes()
    except OSError as ex:
        msg = f"cannot read {path}: {ex.strerror}"
        raise ConfigError(msg) from None
    try:
        return msgspec.toml.decode(data, type=kind)
    except msgspec.ValidationError as ex:
        msg = f"{path}: {_config_message(str(ex))}"
        raise ConfigError(msg) from None
    except msgspec.DecodeError as ex:
        msg = f"{path}: not valid TOML: {ex}"
        raise ConfigError(msg) from None


def _config_message(message: str) -> str:
    """msgspec's message in the style of the others: `key.path`, lowercase."""
    text, _, path = message.partition(" - at `$")
    text = text[:1].lower() + text[1:]
    if not path:
        return text
    return f"{text} at `{path.rstrip('`').lstrip('.')}`"


_ADDRESS = re.compile(r"^(\[[^\]]+\]|[^:\[\]]*):([0-9]{1,5})$")
MAX_PORT = 65_535


def parse_address(text: str, option: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port), or UsageError."""
    found = _ADDRESS.match(text)
    if found is None or int(found.group(2)) > MAX_PORT:
        msg = f"expected {option} HOST:PORT with a port from 0 to 65535 - got {text!r}"
        raise UsageError(msg)
    return found.group(1).strip("[]"), int(found.group(2))


def parse_duration(text: str) -> int:
    """Parse ``500ms``, ``30s``, ``15m``, ``48h``, ``7d`` or ``39w`` to ms."""
    match = _DURATION.match(text)
    if match is None:
        msg = f"expected a duration such as 30s, 48h, 7d or 39w - got {text!r}"
        raise UsageError(msg)
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


def zone(name: str) -> ZoneInfo:
    """Return the time zone `name`, or say clearly that it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        msg = f"expected an IANA time zone such as UTC or Asia/Shanghai - got {name!r}"
        raise UsageError(msg) from None


def parse_time(text: str, time_zone: str) -> int:
    """Parse an as-of time to epoch milliseconds.

    A date means 00:00 of that day in `time_zone`; a date and time needs an
    offset (``1997-09-30T12:00:00+08:00`` or ``...Z``); digits alone are
    epoch milliseconds, as in events.
    """
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(0), tzinfo=zone(time_zone))
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        msg = (
            "expected a date (1997-09-30) or an RFC 3339 time with an offset "
            f"(1997-09-30T00:00:00Z) or epoch milliseconds - got {text!r}"
        )
        raise UsageError(msg)
    return round(moment.timestamp() * 1000)
