from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    ACCEPTED: _ClassVar[Outcome]
    DISMISSED: _ClassVar[Outcome]
    DONE: _ClassVar[Outcome]
    CONVERTED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
ACCEPTED: Outcome
DISMISSED: Outcome
DONE: Outcome
CONVERTED: Outcome

class SubscribeRequest(_message.Message):
    __slots__ = ("subscriber_id", "actions", "min_priority", "segments", "resume_after", "from_latest")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    FROM_LATEST_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: str
    actions: _containers.RepeatedScalarFieldContainer[str]
    min_priority: int
    segments: _containers.RepeatedScalarFieldContainer[str]
    resume_after: str
    from_latest: bool
    def __init__(self, subscriber_id: _Optional[str] = ..., actions: _Optional[_Iterable[str]] = ..., min_priority: _Optional[int] = ..., segments: _Optional[_Iterable[str]] = ..., resume_after: _Optional[str] = ..., from_latest: _Optional[bool] = ...) -> None: ...

class InterventionMessage(_message.Message):
    __slots__ = ("cursor", "heartbeat", "intervention")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    INTERVENTION_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    heartbeat: bool
    intervention: Intervention
    def __init__(self, cursor: _Optional[str] = ..., heartbeat: _Optional[bool] = ..., intervention: _Optional[_Union[Intervention, _Mapping]] = ...) -> None: ...

class Intervention(_message.Message):
    __slots__ = ("intervention_id", "tenant", "customer_id", "rule", "action", "params", "signal", "priority", "reason", "reason_redacted", "event_time", "emitted_at", "trigger_event_id", "trigger_ts", "channel", "segment", "clv", "value_band", "health", "health_band", "appended_at")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INTERVENTION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_REDACTED_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    EMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_TS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    CLV_FIELD_NUMBER: _ClassVar[int]
    VALUE_BAND_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_BAND_FIELD_NUMBER: _ClassVar[int]
    APPENDED_AT_FIELD_NUMBER: _ClassVar[int]
    intervention_id: str
    tenant: str
    customer_id: str
    rule: str
    action: str
    params: _containers.ScalarMap[str, str]
    signal: str
    priority: int
    reason: str
    reason_redacted: str
    event_time: str
    emitted_at: str
    trigger_event_id: str
    trigger_ts: str
    channel: str
    segment: str
    clv: float
    value_band: int
    health: float
    health_band: str
    appended_at: str
    def __init__(self, intervention_id: _Optional[str] = ..., tenant: _Optional[str] = ..., customer_id: _Optional[str] = ..., rule: _Optional[str] = ..., action: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., signal: _Optional[str] = ..., priority: _Optional[int] = ..., reason: _Optional[str] = ..., reason_redacted: _Optional[str] = ..., event_time: _Optional[str] = ..., emitted_at: _Optional[str] = ..., trigger_event_id: _Optional[str] = ..., trigger_ts: _Optional[str] = ..., channel: _Optional[str] = ..., segment: _Optional[str] = ..., clv: _Optional[float] = ..., value_band: _Optional[int] = ..., health: _Optional[float] = ..., health_band: _Optional[str] = ..., appended_at: _Optional[str] = ...) -> None: ...

class InterventionOutcome(_message.Message):
    __slots__ = ("intervention_id", "outcome")
    INTERVENTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    intervention_id: str
    outcome: Outcome
    def __init__(self, intervention_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("subscriber_id", "cursor", "outcomes")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: str
    cursor: str
    outcomes: _containers.RepeatedCompositeFieldContainer[InterventionOutcome]
    def __init__(self, subscriber_id: _Optional[str] = ..., cursor: _Optional[str] = ..., outcomes: _Optional[_Iterable[_Union[InterventionOutcome, _Mapping]]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("committed_cursor",)
    COMMITTED_CURSOR_FIELD_NUMBER: _ClassVar[int]
    committed_cursor: str
    def __init__(self, committed_cursor: _Optional[str] = ...) -> None: ...

class ResetCursorRequest(_message.Message):
    __slots__ = ("subscriber_id", "cursor")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: str
    cursor: str
    def __init__(self, subscriber_id: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class ResetCursorResponse(_message.Message):
    __slots__ = ("committed_cursor",)
    COMMITTED_CURSOR_FIELD_NUMBER: _ClassVar[int]
    committed_cursor: str
    def __init__(self, committed_cursor: _Optional[str] = ...) -> None: ...

class OutcomeCountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RuleOutcomes(_message.Message):
    __slots__ = ("rule", "accepted", "dismissed", "done", "converted")
    RULE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DISMISSED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_FIELD_NUMBER: _ClassVar[int]
    rule: str
    accepted: int
    dismissed: int
    done: int
    converted: int
    def __init__(self, rule: _Optional[str] = ..., accepted: _Optional[int] = ..., dismissed: _Optional[int] = ..., done: _Optional[int] = ..., converted: _Optional[int] = ...) -> None: ...

class OutcomeCountsResponse(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[RuleOutcomes]
    def __init__(self, rules: _Optional[_Iterable[_Union[RuleOutcomes, _Mapping]]] = ...) -> None: ...

class LagRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscriberLag(_message.Message):
    __slots__ = ("subscriber_id", "committed_cursor", "latest_cursor", "entries_behind", "at_least", "seconds_behind")
    SUBSCRIBER_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LATEST_CURSOR_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_BEHIND_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    SECONDS_BEHIND_FIELD_NUMBER: _ClassVar[int]
    subscriber_id: str
    committed_cursor: str
    latest_cursor: str
    entries_behind: int
    at_least: bool
    seconds_behind: float
    def __init__(self, subscriber_id: _Optional[str] = ..., committed_cursor: _Optional[str] = ..., latest_cursor: _Optional[str] = ..., entries_behind: _Optional[int] = ..., at_least: _Optional[bool] = ..., seconds_behind: _Optional[float] = ...) -> None: ...

class LagResponse(_message.Message):
    __slots__ = ("subscribers",)
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    subscribers: _containers.RepeatedCompositeFieldContainer[SubscriberLag]
    def __init__(self, subscribers: _Optional[_Iterable[_Union[SubscriberLag, _Mapping]]] = ...) -> None: ...
