"""Decode and validate a batch of raw records into touches or rejections.

The first step after the sources: each raw record (a JSON line, a MessagePack
map, a CSV row or a CDNOW row, with its position in the input) becomes a
:class:`~operators.events.Touch` for the key-group actor, or a
:class:`Rejection` with a reason a person can act on. Records after the
as-of time are counted here and go no further. Nothing raises: a bad record
never stops the dataflow.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec
import xxhash

from operators.events import (
    CHANNEL_CODES,
    CHANNELS,
    DIRECTIONS,
    KIND_CODES,
    KINDS,
    MAX_AMOUNT,
    MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_TS_MS,
    MIN_TS_MS,
    Event,
    Id,
    Touch,
)

Format = Literal["jsonl", "msgpack", "csv", "cdnow"]
FORMATS: tuple[Format, ...] = ("jsonl", "msgpack", "csv", "cdnow")

DAY_MS = 86_400_000
EXCERPT_CHARS = 80
VALUE_CHARS = 40
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_ENUMS = {"channel": CHANNELS, "kind": KINDS, "direction": DIRECTIONS}
_PATH = re.compile(r" - at `(\$[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(.*)`$", re.DOTALL)
_DECIMAL = re.compile(rb"^-?[0-9]+(?:\.[0-9]+)?$")
_KEY = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class Rejection(msgspec.Struct, gc=False):
    """A record that cannot be applied, with where it was and why."""

    position: int
    code: str
    reason: str
    event_id: str | None = None
    excerpt: str | None = None


class TenantRule(msgspec.Struct, frozen=True):
    """What decoding needs to know of a tenant."""

    currency: str = "USD"
    time_zone: str = "UTC"
    rates: dict[str, float] = {}
    as_of_ms: int | None = None


class CsvLayout(msgspec.Struct, frozen=True):
    """How CSV columns become event fields.

    ``header`` is the file's header row; ``columns`` maps an event field to a
    column name, ``constants`` gives fixed values for fields the file lacks,
    ``attributes`` maps an attribute key to a column name.
    """

    header: tuple[str, ...]
    columns: dict[str, str] = {}
    constants: dict[str, str] = {}
    attributes: dict[str, str] = {}


class DecodeSettings(msgspec.Struct, frozen=True):
    """Settings of the decode step; :meth:`build` makes the running logic."""

    format: Format
    input_name: str
    default_tenant: str = "default"
    tenant_defaults: TenantRule = TenantRule()
    tenants: dict[str, TenantRule] = {}
    max_record_bytes: int = 65_536
    csv: CsvLayout | None = None
    # On the live clock: how far ahead of the wall clock an event may be.
    allowed_skew_ms: int | None = None

    def build(self) -> Decoder:
        return Decoder(self)


class DecodedBatch(msgspec.Struct, gc=False):
    """What one raw batch became."""

    touches: list[Touch]
    rejections: list[Rejection]
    after_as_of: int
    max_ts_ms: int


class Decoder:
    """Turns raw records of one input format into touches and rejections."""

    def __init__(self, settings: DecodeSettings) -> None:
        self.settings = settings
        self._json = msgspec.json.Decoder(Event)
        self._msgpack = msgspec.msgpack.Decoder(Event)
        self._canonical = msgspec.msgpack.Encoder(order="deterministic")
        self._zones: dict[str, ZoneInfo | None] = {}
        self._cdnow_days: dict[bytes, int] = {}
        self._csv_fields_seen: dict[str, Any] = {}
        self.wall_ms = 0
        # Looked up once per event: kept at hand.
        self._skew_ms = settings.allowed_skew_ms
        self._tenants = settings.tenants
        self._tenant_defaults = settings.tenant_defaults
        self._parse = {
            "jsonl": self._parse_json,
            "msgpack": self._parse_msgpack,
            "csv": self._parse_csv,
            "cdnow": self._parse_cdnow,
        }[settings.format]
        if settings.format == "csv":
            if settings.csv is None:
                msg = "the csv format needs a CsvLayout"
                raise ValueError(msg)
            self._csv_fields = _csv_fields(settings.csv)

    def decode_batch(self, records: Sequence[tuple[int, bytes]]) -> DecodedBatch:
        """Decode records given as (position, raw bytes), in order."""
        touches: list[Touch] = []
        rejections: list[Rejection] = []
        after_as_of = 0
        max_ts_ms = -1
        limit = self.settings.max_record_bytes
        if self.settings.allowed_skew_ms is not None:
            self.wall_ms = time.time_ns() // 1_000_000

        for position, raw in records:
            if len(raw) > limit:
                reason = (
                    f"record is {len(raw)} bytes, over the limit of {limit} "
                    "bytes (max_record_bytes)"
                )
                rejections.append(
                    Rejection(position, "too_large", reason, None, self._excerpt(raw))
                )
                continue
            result = self._decode_one(position, raw)
            if isinstance(result, Rejection):
                rejections.append(result)
                continue
            touch, as_of_ms = result
            if as_of_ms is not None and touch.ts_ms > as_of_ms:
                after_as_of += 1
                continue
            # Only applied events move the clock: time stops at the as-of.
            if touch.ts_ms > max_ts_ms:
                max_ts_ms = touch.ts_ms
            touches.append(touch)
        return DecodedBatch(touches, rejections, after_as_of, max_ts_ms)

    def sort_key(self, position: int, raw: bytes) -> tuple[int, str, str] | None:
        """Return (event time in ms, tenant, customer) for ordering, if valid."""
        if len(raw) > self.settings.max_record_bytes:
            return None
        try:
            event = self._parse(position, raw)
        except (msgspec.ValidationError, msgspec.DecodeError, _RowError):
            return None
        ts = event.ts
        ts_ms = ts if isinstance(ts, int) else (ts - _EPOCH) // _MS
        return ts_ms, event.tenant, event.customer_id

    def _decode_one(
        self, position: int, raw: bytes
    ) -> Rejection | tuple[Touch, int | None]:
        try:
            event = self._parse(position, raw)
        except msgspec.ValidationError as ex:
            plain = self._plain(raw)
            if plain is _MISSING and self.settings.format in ("jsonl", "msgpack"):
                # Fields are checked while parsing, so a record cut off after
                # an unknown key fails on the key first: it is malformed.
                reason = f"malformed {self.settings.format} record: "
                reason += self._syntax_error(raw)
                return Rejection(
                    position, "malformed", reason, None, self._excerpt(raw)
                )
            code, reason = _explain_validation(str(ex), lambda: plain)
            return Rejection(
                position, code, reason, _readable_id(plain), self._excerpt(raw)
            )
        except msgspec.DecodeError as ex:
            reason = f"malformed {self.settings.format} record: {ex}"
            return Rejection(position, "malformed", reason, None, self._excerpt(raw))
        except _RowError as ex:
            return Rejection(position, ex.code, ex.reason, None, self._excerpt(raw))
        except RecursionError:
            reason = f"malformed {self.settings.format} record: nested too deeply"
            return Rejection(position, "malformed", reason, None, self._excerpt(raw))
        return self._normalise(position, raw, event)

    def _normalise(
        self, position: int, raw: bytes, event: Event
    ) -> Rejection | tuple[Touch, int | None]:
        ts = event.ts
        ts_ms = ts if isinstance(ts, int) else (ts - _EPOCH) // _MS
        if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
            return self._reject(
                position,
                raw,
                event,
                "ts_out_of_range",
                "expected `ts` from 1970-01-01 up to 2100-01-01 (RFC 3339 "
                f"with an offset, or epoch milliseconds) - got {_shown_time(ts)}",
            )
        skew_ms = self._skew_ms
        if skew_ms is not None and ts_ms > self.wall_ms + skew_ms:
            return self._reject(
                position,
                raw,
                event,
                "ts_out_of_range",
                f"expected `ts` at most {skew_ms / 1000:g} s ahead of the wall clock "
                f"(clock.allowed_skew) - got {_shown_time(ts)}, "
                f"{(ts_ms - self.wall_ms) / 1000:g} s ahead",
            )

        rule = self._tenants.get(event.tenant, self._tenant_defaults)
        amount = event.amount
        if amount is None:
            if event.kind in ("order", "refund"):
                return self._reject(
                    position,
                    raw,
                    event,
                    "missing_field",
                    f"expected `amount` on an event of kind `{event.kind}` - got none",
                )
            amount = 0.0
        elif event.currency is not None and event.currency != rule.currency:
            rate = rule.rates.get(event.currency)
            if rate is None:
                return self._reject(
                    position,
                    raw,
                    event,
                    "currency",
                    f"expected `currency` {rule.currency} for tenant "
                    f"`{event.tenant}`, or one with a rate in its configuration "
                    f"- got {event.currency}",
                )
            amount = amount * rate
            if amount > MAX_AMOUNT:
                return self._reject(
                    position,
                    raw,
                    event,
                    "invalid_field",
                    f"expected `amount` in {rule.currency} to be at most "
                    f"{MAX_AMOUNT:g} - got {amount:g} after conversion from "
                    f"{event.currency}",
                )
        score = -1 if event.score is None else event.score
        if event.kind == "nps" and score < 0:
            return self._reject(
                position,
                raw,
                event,
                "missing_field",
                "expected `score` (0 to 10) on an event of kind `nps` - got none",
            )

        # The payload's identity is its meaning: the same instant and amount
        # in another notation or currency is the same event. Most events are
        # already in that form, and skip the copy.
        if event.currency is None and isinstance(ts, int) and event.amount is not None:
            canonical = event
        else:
            canonical = msgspec.structs.replace(
                event, ts=ts_ms, amount=amount, currency=None
            )
        digest = xxhash.xxh3_64_intdigest(self._canonical.encode(canonical))
        touch = Touch(
            position,
            ts_ms,
            ts_ms // DAY_MS if rule.time_zone == "UTC" else self._day(ts_ms, rule),
            event.tenant,
            event.customer_id,
            event.source,
            event.event_id,
            digest,
            CHANNEL_CODES[event.channel],
            KIND_CODES[event.kind],
            event.direction == "inbound",
            amount,
            event.segment,
            score,
        )
        return touch, rule.as_of_ms

    def _reject(
        self, position: int, raw: bytes, event: Event, code: str, reason: str
    ) -> Rejection:
        return Rejection(position, code, reason, event.event_id, self._excerpt(raw))

    def _syntax_error(self, raw: bytes) -> str:
        """What is wrong with a record that is not JSON or MessagePack."""
        decode = (
            msgspec.json.decode
            if self.settings.format == "jsonl"
            else msgspec.msgpack.decode
        )
        try:
            decode(raw)
        except msgspec.DecodeError as ex:
            return str(ex)
        except (ValueError, RecursionError):
            return "nested too deeply"
        return "not readable"

    def _plain(self, raw: bytes) -> Any:
        """The record as plain data, to show a bad value in a reason."""
        try:
            if self.settings.format == "jsonl":
                return msgspec.json.decode(raw)
            if self.settings.format == "msgpack":
                return msgspec.msgpack.decode(raw)
        except (msgspec.DecodeError, ValueError, RecursionError):
            return _MISSING
        return self._csv_fields_seen

    def _day(self, ts_ms: int, rule: TenantRule) -> int:
        time_zone = rule.time_zone
        zone = self._zones.get(time_zone)
        if zone is None:
            zone = self._zones[time_zone] = ZoneInfo(time_zone)
        local = datetime.fromtimestamp(ts_ms / 1000, zone)
        return local.date().toordinal() - _EPOCH.date().toordinal()

    def _excerpt(self, raw: bytes) -> str | None:
        if self.settings.format == "msgpack":
            return None
        raw = raw.replace(b"\r\n", b" ").replace(b"\n", b" ")
        text = raw[: EXCERPT_CHARS * 4].decode("utf-8", "replace").strip()
        if len(text) > EXCERPT_CHARS:
            return text[:EXCERPT_CHARS] + "..."
        return text

    # Format parsers: raw bytes to Event, raising msgspec errors or _RowError.

    def _parse_json(self, position: int, raw: bytes) -> Event:
        return self._json.decode(raw)

    def _parse_msgpack(self, position: int, raw: bytes) -> Event:
        return self._msgpack.decode(raw)

    def _parse_csv(self, position: int, raw: bytes) -> Event:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as ex:
            msg = f"expected UTF-8 text - got byte {raw[ex.start]:#04x} at {ex.start}"
            raise _RowError(msg, code="malformed") from None
        try:
            row = next(csv.reader(io.StringIO(text, newline="")), [])
        except csv.Error as ex:
            msg = f"malformed csv record: {ex}"
            raise _RowError(msg, code="malformed") from None
        fields: dict[str, Any] = {}
        attributes: dict[str, str] = {}
        layout = self.settings.csv
        assert layout is not None
        if len(row) != len(layout.header):
            msg = (
                f"expected {len(layout.header)} columns as in the header - "
                f"got {len(row)}"
            )
            raise _RowError(msg, code="invalid_row")
        for index, target in self._csv_fields:
            value = row[index]
            if value == "":
                continue
            if isinstance(target, tuple):
                attributes[target[1]] = value
            else:
                fields[target] = value
        for name, value in layout.constants.items():
            fields.setdefault(name, value)
        if attributes:
            fields["attributes"] = attributes
        fields.setdefault("tenant", self.settings.default_tenant)
        fields.setdefault("event_id", f"{self.settings.input_name}:{position}")
        ts = fields.get("ts")
        if isinstance(ts, str) and ts.isascii() and ts.isdigit():
            fields["ts"] = int(fields["ts"])
        self._csv_fields_seen = fields
        return msgspec.convert(fields, Event, strict=False)

    def _parse_cdnow(self, position: int, raw: bytes) -> Event:
        parts = raw.split()
        if len(parts) not in (4, 5):
            msg = (
                "expected 4 columns (customer_id date number_of_cds "
                "dollar_value) or 5 (with id_in_sample) - "
                f"got {len(parts)}"
            )
            raise _RowError(msg, code="invalid_row")
        try:
            customer_id = parts[0].decode("utf-8")
        except UnicodeDecodeError:
            msg = "expected `customer_id` as UTF-8 text - got other bytes"
            raise _RowError(msg, code="invalid_field") from None
        if len(customer_id) > 128:
            msg = (
                "expected `customer_id` of at most 128 characters - got "
                f"{len(customer_id)}"
            )
            raise _RowError(msg, code="invalid_field")
        ts_ms = self._cdnow_day_ms(parts[-3])
        amount = float(parts[-1]) if _DECIMAL.match(parts[-1]) else math.nan
        if not 0 <= amount <= MAX_AMOUNT:
            shown = parts[-1].decode("utf-8", "replace")[:VALUE_CHARS]
            msg = f"expected `dollar_value` as a number from 0 to 1e12 - got {shown!r}"
            raise _RowError(msg, code="invalid_field")
        return Event(
            event_id=f"{self.settings.input_name}:{position}",
            tenant=self.settings.default_tenant,
            customer_id=customer_id,
            source="cdnow",
            channel="store",
            kind="order",
            direction="inbound",
            ts=ts_ms,
            amount=amount,
        )

    def _cdnow_day_ms(self, text: bytes) -> int:
        """00:00 UTC of a YYYYMMDD date, in epoch ms (a file has few dates)."""
        ts_ms = self._cdnow_days.get(text)
        if ts_ms is None:
            try:
                day = date(int(text[:4]), int(text[4:6]), int(text[6:]))
            except ValueError:
                day = None
            if day is None or len(text) != 8:
                shown = text.decode("utf-8", "replace")[:VALUE_CHARS]
                msg = f"expected `date` as YYYYMMDD - got {shown!r}"
                raise _RowError(msg, code="invalid_field")
            ts_ms = (day - _EPOCH.date()).days * DAY_MS
            self._cdnow_days[text] = ts_ms
        return ts_ms


class _RowError(Exception):
    def __init__(self, reason: str, *, code: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _csv_fields(layout: CsvLayout) -> list[tuple[int, str | tuple[str, str]]]:
    """Pair each used column index with its event field or attribute key."""
    index = {name: i for i, name in enumerate(layout.header)}
    pairs: list[tuple[int, str | tuple[str, str]]] = []
    mapped = set(layout.columns.values()) | set(layout.attributes.values())
    for field, column in layout.columns.items():
        pairs.append((index[column], field))
    for key, column in layout.attributes.items():
        pairs.append((index[column], ("attributes", key)))
    for name, i in index.items():
        if name not in mapped and name in Event.__struct_fields__:
            if name not in layout.columns and name != "attributes":
                pairs.append((i, name))
    return sorted(pairs, key=lambda pair: pair[0])


def _readable_id(plain: Any) -> str | None:
    """A bad record's `event_id` when that alone is valid, so that the
    upstream can find the event it sent."""
    event_id = plain.get("event_id") if isinstance(plain, dict) else None
    try:
        return msgspec.convert(event_id, Id)
    except msgspec.ValidationError:
        return None


def _shown_time(ts: datetime | int) -> str:
    """An event time as its sender wrote it, for a reason."""
    return ts.isoformat() if isinstance(ts, datetime) else _ms_text(ts)


def _explain_validation(message: str, record: Callable[[], Any]) -> tuple[str, str]:
    """Turn a msgspec validation message into a (code, reason) pair.

    `record` gives the record as plain data (to show the offending value);
    it is only called on this, the slow, path.
    """
    match = _PATH.search(message)
    path = match.group(1) if match else "$"
    text = message[: match.start()] if match else message
    field = path.rsplit(".", 1)[-1] if path != "$" else ""

    if text.startswith("Object missing required field"):
        return "missing_field", _lower_first(text)
    unknown = _UNKNOWN.match(text)
    if unknown:
        name = unknown.group(1)
        shown = (
            f"`{name}`" if len(name) <= VALUE_CHARS else f"of {len(name)} characters"
        )
        reason = f"unknown field {shown}; the README's event contract lists the fields"
        return "unknown_field", reason
    data = record()
    if path.startswith("$.attributes") or "`$.attributes`" in message:
        attributes = data.get("attributes") if isinstance(data, dict) else None
        return "invalid_field", _attributes_problem(attributes)
    value = _value_at(data, path)
    got = "" if value is _MISSING else f" - got {_describe(value)}"
    if text.startswith("Invalid enum value") and field in _ENUMS:
        options = ", ".join(_ENUMS[field])
        return "invalid_value", f"expected `{field}` to be one of {options}{got}"
    where = f" at `{path}`" if path != "$" else ""
    if ", got `" in text:
        return "invalid_field", f"{_lower_first(text)}{where}"
    return "invalid_field", f"{_lower_first(text)}{where}{got}"


def _attributes_problem(attributes: Any) -> str:
    """Say what is wrong with an `attributes` map, naming the entry."""
    expected = (
        f"expected `attributes` to map at most {MAX_ATTRIBUTES} keys of 1 to "
        f"{MAX_ATTRIBUTE_KEY} characters to strings of at most "
        f"{MAX_ATTRIBUTE_VALUE} characters"
    )
    if not isinstance(attributes, dict):
        return f"{expected} - got {_describe(attributes)}"
    if len(attributes) > MAX_ATTRIBUTES:
        return f"{expected} - got {len(attributes)} keys"
    for key, value in attributes.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_ATTRIBUTE_KEY:
            return f"{expected} - got the key {_describe(key)}"
        if not isinstance(value, str) or len(value) > MAX_ATTRIBUTE_VALUE:
            shown = key if len(key) <= VALUE_CHARS else key[:VALUE_CHARS] + "..."
            return f"{expected} - got {_describe(value)} at key `{shown}`"
    return expected


def _value_at(data: Any, path: str) -> Any:
    """Find the value at a msgspec error path in the plain record, if any."""
    value = data
    for key, index in _KEY.findall(path):
        try:
            value = value[key] if key else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


_MISSING = object()


def _ms_text(ts_ms: int) -> str:
    """Epoch milliseconds, with the date when it has one."""
    try:
        return f"{ts_ms} ({(_EPOCH + ts_ms * _MS).isoformat()})"
    except OverflowError:
        return str(ts_ms)


def _describe(value: Any) -> str:
    """Describe a value briefly, never echoing a long one."""
    if isinstance(value, str):
        if len(value) > VALUE_CHARS:
            return f"a string of {len(value)} characters"
        return f'"{value}"'
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if isinstance(value, dict):
        return f"an object of {len(value)} entries"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if value is None:
        return "null"
    return repr(value)[:VALUE_CHARS]


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
