from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCustomerRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class Customer(_message.Message):
    __slots__ = ("tenant", "customer_id", "as_of", "clv", "value_band", "p_alive", "health", "health_band", "segment", "repeat_purchases", "total_spend", "last_inbound_at", "last_inbound_channel", "record")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    CLV_FIELD_NUMBER: _ClassVar[int]
    VALUE_BAND_FIELD_NUMBER: _ClassVar[int]
    P_ALIVE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_BAND_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    REPEAT_PURCHASES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SPEND_FIELD_NUMBER: _ClassVar[int]
    LAST_INBOUND_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_INBOUND_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    customer_id: str
    as_of: str
    clv: float
    value_band: int
    p_alive: float
    health: float
    health_band: str
    segment: str
    repeat_purchases: int
    total_spend: float
    last_inbound_at: str
    last_inbound_channel: str
    record: _struct_pb2.Struct
    def __init__(self, tenant: _Optional[str] = ..., customer_id: _Optional[str] = ..., as_of: _Optional[str] = ..., clv: _Optional[float] = ..., value_band: _Optional[int] = ..., p_alive: _Optional[float] = ..., health: _Optional[float] = ..., health_band: _Optional[str] = ..., segment: _Optional[str] = ..., repeat_purchases: _Optional[int] = ..., total_spend: _Optional[float] = ..., last_inbound_at: _Optional[str] = ..., last_inbound_channel: _Optional[str] = ..., record: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TopMoversRequest(_message.Message):
    __slots__ = ("window", "limit")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    window: str
    limit: int
    def __init__(self, window: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Mover(_message.Message):
    __slots__ = ("customer_id", "clv_before", "clv_now", "change", "value_band_before", "value_band_now", "direction")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CLV_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CLV_NOW_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_BAND_BEFORE_FIELD_NUMBER: _ClassVar[int]
    VALUE_BAND_NOW_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    clv_before: float
    clv_now: float
    change: float
    value_band_before: int
    value_band_now: int
    direction: str
    def __init__(self, customer_id: _Optional[str] = ..., clv_before: _Optional[float] = ..., clv_now: _Optional[float] = ..., change: _Optional[float] = ..., value_band_before: _Optional[int] = ..., value_band_now: _Optional[int] = ..., direction: _Optional[str] = ...) -> None: ...

class TopMoversResponse(_message.Message):
    __slots__ = ("window_start", "window_end", "movers")
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    MOVERS_FIELD_NUMBER: _ClassVar[int]
    window_start: str
    window_end: str
    movers: _containers.RepeatedCompositeFieldContainer[Mover]
    def __init__(self, window_start: _Optional[str] = ..., window_end: _Optional[str] = ..., movers: _Optional[_Iterable[_Union[Mover, _Mapping]]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("customer_id", "lineage", "text")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    lineage: _struct_pb2.Struct
    text: str
    def __init__(self, customer_id: _Optional[str] = ..., lineage: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...
