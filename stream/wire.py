"""Between the gRPC messages of ``touchstream.v1`` and Touchstream's own
JSON shapes: events in, interventions and customers out.

An event message becomes the JSON object of the event contract, so that the
ingest validates it with the same decoder as a file; a record or an
intervention goes out as a message with the fields the caller's role may
see (``stream/auth.py``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2, unknown_fields
from google.protobuf.message import Message
from touchstream.v1 import customers_pb2, events_pb2, interventions_pb2

# Enum names in the contract are the JSON names in capitals, but for one:
# the kind `meeting` is MEETING_HELD, as MEETING is taken by the channel.
_KIND_NAMES = {"MEETING_HELD": "meeting"}
_OPTIONAL_FIELDS = (
    "amount",
    "currency",
    "rep_id",
    "segment",
    "ticket_id",
    "score",
    "stage",
)


def event_json(event: events_pb2.Event) -> dict[str, Any]:
    """The event contract's JSON object for an event message; fields left
    unset are left out, for the decoder to name what is missing."""
    data: dict[str, Any] = {}
    for name in ("event_id", "tenant", "customer_id", "source"):
        if value := getattr(event, name):
            data[name] = value
    if event.channel:
        data["channel"] = events_pb2.Channel.Name(event.channel).lower()
    if event.kind:
        name = events_pb2.Kind.Name(event.kind)
        data["kind"] = _KIND_NAMES.get(name, name.lower())
    if event.direction:
        data["direction"] = events_pb2.Direction.Name(event.direction).lower()
    which = event.WhichOneof("ts")
    if which == "ts_rfc3339":
        data["ts"] = event.ts_rfc3339
    elif which == "ts_ms":
        data["ts"] = event.ts_ms
    for name in _OPTIONAL_FIELDS:
        if event.HasField(name):
            data[name] = getattr(event, name)
    if event.attributes:
        data["attributes"] = dict(event.attributes)
    return data


def unknown_field_numbers(message: Message) -> list[int]:
    """Field numbers this contract does not know, in the message itself and
    in the events it carries (a client built from a newer ``.proto``)."""
    numbers = [field.field_number for field in unknown_fields.UnknownFieldSet(message)]
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if (
            descriptor.is_repeated
            and not descriptor.message_type.GetOptions().map_entry
        ):
            for item in value:
                numbers.extend(unknown_field_numbers(item))
        elif not descriptor.is_repeated:
            numbers.extend(unknown_field_numbers(value))
    return numbers


def intervention_message(
    cursor: int, item: dict[str, Any], appended_at: str
) -> interventions_pb2.InterventionMessage:
    """A log entry as a stream message; None fields (and those masked for
    the role) are left unset."""
    fields = {
        key: value
        for key, value in item.items()
        if value is not None and key in _INTERVENTION_FIELDS
    }
    return interventions_pb2.InterventionMessage(
        cursor=str(cursor),
        intervention=interventions_pb2.Intervention(appended_at=appended_at, **fields),
    )


_INTERVENTION_FIELDS = frozenset(
    interventions_pb2.Intervention.DESCRIPTOR.fields_by_name
) - {"appended_at"}


def customer_message(record: dict[str, Any]) -> customers_pb2.Customer:
    """A customer record (as ``customers.jsonl`` holds it) as a message."""
    channels = record.get("channels") or {}
    last_inbound = record.get("last_inbound_at")
    inbound_channel = ""
    if last_inbound is not None:
        inbound_channel = next(
            (
                name
                for name, channel in channels.items()
                if channel.get("last_touch_at") == last_inbound
                and channel.get("inbound", 0) > 0
            ),
            "",
        )
    message = customers_pb2.Customer(
        tenant=record["tenant"],
        customer_id=record["customer_id"],
        as_of=record.get("evaluated_at") or "",
        health_band=record.get("health_band") or "",
        segment=record.get("segment") or "",
        repeat_purchases=record.get("repeat_purchases") or 0,
        last_inbound_at=last_inbound or "",
        last_inbound_channel=inbound_channel,
        record=json_struct(record),
    )
    for name in ("clv", "value_band", "p_alive", "health", "total_spend"):
        value = record.get(name)
        if value is not None:
            setattr(message, name, value)
    return message


def json_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(value, struct)
    return struct
