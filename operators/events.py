"""The event contract: what upstream systems send, and what the engine keeps.

:class:`Event` is the wire form (JSON lines, MessagePack, CSV and CDNOW rows
are all decoded into it); :class:`Touch` is the validated, normalised form
the key-group actor applies. The README's "Event contract" documents both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

import msgspec

Channel = Literal[
    "wechat", "email", "meeting", "phone", "app", "web", "livestream", "store"
]
Kind = Literal[
    "message",
    "call",
    "meeting",
    "visit",
    "content_view",
    "inquiry",
    "order",
    "refund",
    "ticket_opened",
    "ticket_resolved",
    "complaint",
    "nps",
    "quote_sent",
    "quote_timeout",
    "stage_change",
]
Direction = Literal["inbound", "outbound"]

# The codes the kernel uses are positions in these tuples (codes are part of
# snapshots: append new values, never reorder).
CHANNELS: tuple[str, ...] = get_args(Channel)
KINDS: tuple[str, ...] = get_args(Kind)
DIRECTIONS: tuple[str, ...] = get_args(Direction)
CHANNEL_CODES = {name: code for code, name in enumerate(CHANNELS)}
KIND_CODES = {name: code for code, name in enumerate(KINDS)}

# Accepted event times: [1970-01-01, 2100-01-01) in epoch milliseconds.
MIN_TS_MS = 0
MAX_TS_MS = 4_102_444_800_000

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 256
AttributeKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ATTRIBUTE_KEY)]
AttributeValue = Annotated[str, msgspec.Meta(max_length=MAX_ATTRIBUTE_VALUE)]
Attributes = Annotated[
    dict[AttributeKey, AttributeValue], msgspec.Meta(max_length=MAX_ATTRIBUTES)
]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)] | int
MAX_AMOUNT = 1e12
Amount = Annotated[float, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
Score = Annotated[int, msgspec.Meta(ge=0, le=10)]


class Event(msgspec.Struct, forbid_unknown_fields=True, gc=False, omit_defaults=True):
    """One touchpoint, order or service event, as an upstream system sends it.

    ``ts`` is RFC 3339 with an offset, or epoch milliseconds.
    """

    event_id: Id
    tenant: Name
    customer_id: Id
    source: Name
    channel: Channel
    kind: Kind
    direction: Direction
    ts: Timestamp
    amount: Amount | None = None
    currency: Currency | None = None
    rep_id: Id | None = None
    segment: Name | None = None
    ticket_id: Id | None = None
    score: Score | None = None
    stage: Name | None = None
    attributes: Attributes | None = None


class Touch(msgspec.Struct, gc=False, array_like=True):
    """A validated event, normalised for the key-group kernel.

    ``ts_ms`` is epoch milliseconds, ``day`` the calendar day number in the
    tenant's time zone, ``amount`` in the tenant's currency, ``channel`` and
    ``kind`` codes into :data:`CHANNELS` and :data:`KINDS`, ``score`` -1 when
    absent. ``digest`` identifies the payload, so that a repeated
    ``event_id`` can be told apart as a duplicate or a conflict.
    """

    position: int
    ts_ms: int
    day: int
    tenant: str
    customer_id: str
    source: str
    event_id: str
    digest: int
    channel: int
    kind: int
    inbound: bool
    amount: float
    segment: str | None
    score: int
