from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    WECHAT: _ClassVar[Channel]
    EMAIL: _ClassVar[Channel]
    MEETING: _ClassVar[Channel]
    PHONE: _ClassVar[Channel]
    APP: _ClassVar[Channel]
    WEB: _ClassVar[Channel]
    LIVESTREAM: _ClassVar[Channel]
    STORE: _ClassVar[Channel]

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    MESSAGE: _ClassVar[Kind]
    CALL: _ClassVar[Kind]
    MEETING_HELD: _ClassVar[Kind]
    VISIT: _ClassVar[Kind]
    CONTENT_VIEW: _ClassVar[Kind]
    INQUIRY: _ClassVar[Kind]
    ORDER: _ClassVar[Kind]
    REFUND: _ClassVar[Kind]
    TICKET_OPENED: _ClassVar[Kind]
    TICKET_RESOLVED: _ClassVar[Kind]
    COMPLAINT: _ClassVar[Kind]
    NPS: _ClassVar[Kind]
    QUOTE_SENT: _ClassVar[Kind]
    QUOTE_TIMEOUT: _ClassVar[Kind]
    STAGE_CHANGE: _ClassVar[Kind]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    INBOUND: _ClassVar[Direction]
    OUTBOUND: _ClassVar[Direction]
CHANNEL_UNSPECIFIED: Channel
WECHAT: Channel
EMAIL: Channel
MEETING: Channel
PHONE: Channel
APP: Channel
WEB: Channel
LIVESTREAM: Channel
STORE: Channel
KIND_UNSPECIFIED: Kind
MESSAGE: Kind
CALL: Kind
MEETING_HELD: Kind
VISIT: Kind
CONTENT_VIEW: Kind
INQUIRY: Kind
ORDER: Kind
REFUND: Kind
TICKET_OPENED: Kind
TICKET_RESOLVED: Kind
COMPLAINT: Kind
NPS: Kind
QUOTE_SENT: Kind
QUOTE_TIMEOUT: Kind
STAGE_CHANGE: Kind
DIRECTION_UNSPECIFIED: Direction
INBOUND: Direction
OUTBOUND: Direction

class Event(_message.Message):
    __slots__ = ("event_id", "tenant", "customer_id", "source", "channel", "kind", "direction", "ts_rfc3339", "ts_ms", "amount", "currency", "rep_id", "segment", "ticket_id", "score", "stage", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TS_RFC3339_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REP_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant: str
    customer_id: str
    source: str
    channel: Channel
    kind: Kind
    direction: Direction
    ts_rfc3339: str
    ts_ms: int
    amount: float
    currency: str
    rep_id: str
    segment: str
    ticket_id: str
    score: int
    stage: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., tenant: _Optional[str] = ..., customer_id: _Optional[str] = ..., source: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., kind: _Optional[_Union[Kind, str]] = ..., direction: _Optional[_Union[Direction, str]] = ..., ts_rfc3339: _Optional[str] = ..., ts_ms: _Optional[int] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., rep_id: _Optional[str] = ..., segment: _Optional[str] = ..., ticket_id: _Optional[str] = ..., score: _Optional[int] = ..., stage: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...
