"""The gRPC API over real gRPC on loopback: ingest, subscriptions with
resume, customers, authentication, tenants and roles, bad requests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import msgpack
import orjson
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from touchstream.v1 import (
    customers_pb2,
    events_pb2,
    ingest_pb2,
    interventions_pb2,
)

from stream.auth import MONEY_KEYS
from stream.store import CUSTOMERS_FILE, CustomerStore
from tests.api_support import (
    Api,
    inbound,
    intervention,
    json_batch,
    read_messages,
    running_api,
    serve_process,
    status_of,
    subscribe,
    wait_for,
)

NOW_MS = int(time.time() * 1000)


@pytest.fixture(params=["native", "pure"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine process runs on the native kernel and on its twin."""
    monkeypatch.setenv("TOUCHSTREAM_PURE", "1" if request.param == "pure" else "0")
    return str(request.param)


def test_events_published_through_ingest_become_interventions_on_a_stream(
    tmp_path: Path, kernel: str
) -> None:
    with running_api(tmp_path, engine=True) as api:
        events = [inbound(index, f"c{index % 3}") for index in range(6)]
        ack = api.ingest.PublishBatch(json_batch(events, "first"), metadata=api.md())
        assert (ack.batch_id, ack.accepted, list(ack.rejected)) == ("first", 6, [])
        assert ack.last_offset == "6"

        stream = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="crm"),
            metadata=api.md(),
            timeout=60,
        )
        # Each of the three customers falls silent a second after its last
        # touch: the default rule silent_care opens a care task and pushes
        # the policy brief.
        messages = read_messages(stream, 6)
        stream.cancel()
        decided = sorted(
            (m.intervention.customer_id, m.intervention.action) for m in messages
        )
        assert decided == sorted(
            (f"c{number}", action)
            for number in range(3)
            for action in ("care_task", "content_push")
        )
        assert all(m.intervention.rule == "silent_care" for m in messages)
        cursors = [int(m.cursor) for m in messages]
        assert cursors == sorted(cursors) and len(set(cursors)) == 6

        record = api.customers.Get(
            customers_pb2.GetCustomerRequest(customer_id="c1"), metadata=api.md()
        )
        assert record.tenant == "acme" and record.customer_id == "c1"
        assert record.last_inbound_channel == "wechat"
        channels = json_format.MessageToDict(record.record)["channels"]
        assert channels["wechat"]["inbound"] == 2  # events 1 and 4


def test_events_as_messages_and_as_msgpack_are_the_json_contract(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path) as api:
        message = events_pb2.Event(
            event_id="m1",
            customer_id="c9",
            source="erp",
            channel=events_pb2.STORE,
            kind=events_pb2.ORDER,
            direction=events_pb2.INBOUND,
            ts_ms=NOW_MS,
            amount=42.5,
        )
        meeting = events_pb2.Event(
            event_id="m2",
            tenant="acme",
            customer_id="c9",
            source="crm",
            channel=events_pb2.MEETING,
            kind=events_pb2.MEETING_HELD,
            direction=events_pb2.OUTBOUND,
            ts_rfc3339="2026-01-05T10:00:00+08:00",
        )
        order_without_amount = events_pb2.Event(
            event_id="m3",
            customer_id="c9",
            source="erp",
            channel=events_pb2.STORE,
            kind=events_pb2.ORDER,
            direction=events_pb2.INBOUND,
            ts_ms=NOW_MS,
        )
        ack = api.ingest.PublishBatch(
            ingest_pb2.EventBatch(
                events=ingest_pb2.EventList(
                    events=[message, meeting, order_without_amount]
                )
            ),
            metadata=api.md(),
        )
        assert ack.accepted == 2
        [rejected] = ack.rejected
        assert (rejected.index, rejected.event_id) == (3, "m3")
        assert "amount" in rejected.reason

        packed = msgpack.packb(inbound(1, "c1")) + msgpack.packb(
            {**inbound(2, "c1"), "channel": "fax"}
        )
        ack = api.ingest.PublishBatch(
            ingest_pb2.EventBatch(msgpack=packed), metadata=api.md()
        )
        assert ack.accepted == 1
        assert [(r.index, r.event_id) for r in ack.rejected] == [(2, "e2")]
        assert "fax" in ack.rejected[0].reason

        from stream.store import INGEST_FILE, IngestLog

        ingest = IngestLog(api.data / INGEST_FILE)
        bodies = [orjson.loads(body) for _, body in ingest.read_after(0, 100)]
        ingest.close()
        # The tenant of the token fills in a missing one; the kind MEETING_HELD
        # is the contract's `meeting`.
        assert bodies[0]["tenant"] == "acme"
        assert bodies[1]["kind"] == "meeting" and bodies[1]["channel"] == "meeting"
        assert bodies[2]["event_id"] == "e1"


def test_a_subscriber_that_resumes_after_its_cursor_misses_nothing_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, heartbeat="200ms") as api:
        log = api.log()
        log.append([intervention(number) for number in range(50)], NOW_MS)
        request = interventions_pb2.SubscribeRequest(subscriber_id="crm")
        stream = api.interventions.Subscribe(request, metadata=api.md(), timeout=30)
        first = read_messages(stream, 20)
        stream.cancel()
        log.append([intervention(number) for number in range(50, 80)], NOW_MS)

        resumed = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(
                subscriber_id="crm", resume_after=first[-1].cursor
            ),
            metadata=api.md(),
            timeout=30,
        )
        rest = read_messages(resumed, 60)
        resumed.cancel()
        ids = [m.intervention.intervention_id for m in first + rest]
        assert ids == [f"acme-{number:06d}" for number in range(80)]

        # The committed cursor is where a subscriber without resume_after
        # starts: an ack of the 30th entry gives the 31st next.
        api.interventions.Ack(
            interventions_pb2.AckRequest(subscriber_id="crm", cursor=rest[9].cursor),
            metadata=api.md(),
        )
        again = api.interventions.Subscribe(request, metadata=api.md(), timeout=30)
        [next_one] = read_messages(again, 1)
        again.cancel()
        assert next_one.intervention.intervention_id == "acme-000030"
        log.close()


def test_an_idle_stream_gets_heartbeats_with_the_latest_cursor(tmp_path: Path) -> None:
    with running_api(tmp_path, heartbeat="100ms") as api:
        log = api.log()
        log.append([intervention(1), intervention(2, tenant="beta")], NOW_MS)
        stream = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="crm"),
            metadata=api.md(),
            timeout=30,
        )
        first = next(stream)
        heartbeat = next(stream)
        stream.cancel()
        assert not first.heartbeat and first.cursor == "1"
        # The other tenant's entry is past this subscriber's cursor, unseen.
        assert heartbeat.heartbeat and heartbeat.cursor == "2"
        assert not heartbeat.HasField("intervention")
        log.close()


def test_filters_keep_actions_priorities_and_segments(tmp_path: Path) -> None:
    with running_api(tmp_path, heartbeat="100ms") as api:
        log = api.log()
        log.append([intervention(number) for number in range(12)], NOW_MS)
        stream = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(
                subscriber_id="crm",
                actions=["care_task"],
                min_priority=5,
                segments=["gold"],
            ),
            metadata=api.md(),
            timeout=30,
        )
        got = read_messages(stream, 2)
        stream.cancel()
        # Odd numbers are care tasks of priority 7; multiples of 3 are gold.
        assert [m.intervention.intervention_id for m in got] == [
            "acme-000003",
            "acme-000009",
        ]
        log.close()


def test_a_missing_or_wrong_token_is_unauthenticated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_api(tmp_path) as api:
        calls = {
            "PublishBatch": lambda md: api.ingest.PublishBatch(
                json_batch([inbound(1, "c1")]), metadata=md
            ),
            "Subscribe": lambda md: next(
                api.interventions.Subscribe(
                    interventions_pb2.SubscribeRequest(subscriber_id="s"), metadata=md
                )
            ),
            "Ack": lambda md: api.interventions.Ack(
                interventions_pb2.AckRequest(subscriber_id="s"), metadata=md
            ),
            "Get": lambda md: api.customers.Get(
                customers_pb2.GetCustomerRequest(customer_id="c1"), metadata=md
            ),
            "TopMovers": lambda md: api.customers.TopMovers(
                customers_pb2.TopMoversRequest(), metadata=md
            ),
        }
        wrong = (("authorization", "Bearer not-a-token-of-this-server"),)
        basic = (("authorization", "Basic dXNlcjpwYXNz"),)
        for name, call in calls.items():
            for metadata in ((), wrong, basic):
                code = status_of(lambda call=call, md=metadata: call(md))
                assert code == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
    audit = [r.getMessage() for r in caplog.records if r.name == "stream.audit"]
    assert len(audit) == 15
    assert not any("not-a-token-of-this-server" in line for line in audit)
    assert not any("dXNlcjpwYXNz" in line for line in audit)


def test_a_tenant_never_sees_another_tenants_interventions_or_customers(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, heartbeat="100ms") as api:
        log = api.log()
        log.append(
            [intervention(n, tenant="acme" if n % 2 else "beta") for n in range(20)],
            NOW_MS,
        )
        store = CustomerStore(api.data / CUSTOMERS_FILE)
        beta_record = {
            "tenant": "beta",
            "customer_id": "shared",
            "clv": 5.0,
            "value_band": 1,
        }
        store.publish([beta_record], [{"tenant": "beta"}], NOW_MS)
        store.close()

        for name, tenant in (("acme-admin", "acme"), ("beta-admin", "beta")):
            got = subscribe(api, 10, name, subscriber_id="crm")
            assert {m.intervention.tenant for m in got} == {tenant}

        code = status_of(
            lambda: api.customers.Get(
                customers_pb2.GetCustomerRequest(customer_id="shared"),
                metadata=api.md("acme-admin"),
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        movers = api.customers.TopMovers(
            customers_pb2.TopMoversRequest(), metadata=api.md("acme-admin")
        )
        assert list(movers.movers) == []
        # An outcome for another tenant's intervention is not found either.
        code = status_of(
            lambda: api.interventions.Ack(
                interventions_pb2.AckRequest(
                    subscriber_id="crm",
                    outcomes=[
                        interventions_pb2.InterventionOutcome(
                            intervention_id="beta-000000",
                            outcome=interventions_pb2.DONE,
                        )
                    ],
                ),
                metadata=api.md("acme-admin"),
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND

        ack = api.ingest.PublishBatch(
            json_batch([inbound(1, "c1", tenant="beta"), inbound(2, "c1")]),
            metadata=api.md("acme-admin"),
        )
        assert ack.accepted == 1
        [rejected] = ack.rejected
        assert (rejected.index, rejected.code) == (1, "wrong_tenant")
        assert "'acme'" in rejected.reason and "'beta'" in rejected.reason
        log.close()


def _money_values(value: Any, found: list[float]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in MONEY_KEYS and isinstance(item, (int, float)):
                found.append(float(item))
            _money_values(item, found)
    elif isinstance(value, list):
        for item in value:
            _money_values(item, found)


def _money_texts(amounts: list[float]) -> set[str]:
    """The ways an amount may be written: 1234.56, 1,234.56, 1234.6, 1234."""
    texts = set()
    for amount in amounts:
        if abs(amount) < 1:
            continue  # 0 and small shares would match any text
        texts |= {
            f"{amount:.2f}",
            f"{amount:,.2f}",
            f"{amount:.1f}",
            repr(amount),
        }
    return texts


def test_the_sales_role_never_receives_a_money_amount(tmp_path: Path) -> None:
    with running_api(tmp_path, engine=True, heartbeat="100ms") as api:
        now = int(time.time() * 1000)
        events = [
            inbound(1, "c1", kind="order", channel="store", amount=1234.56, ts=now),
            inbound(2, "c1", kind="order", channel="app", amount=777.77, ts=now + 1),
            inbound(3, "c2", kind="order", channel="store", amount=98.5, ts=now),
        ]
        ack = api.ingest.PublishBatch(json_batch(events), metadata=api.md())
        assert ack.accepted == 3

        def both(call: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            return (
                json_format.MessageToDict(call(api.md("acme-finance"))),
                json_format.MessageToDict(call(api.md("acme-sales"))),
            )

        def subscription(md: Any) -> Any:
            stream = api.interventions.Subscribe(
                interventions_pb2.SubscribeRequest(subscriber_id=md[0][1]),
                metadata=md,
                timeout=60,
            )
            got = read_messages(stream, 4)
            stream.cancel()
            return got

        streams = {
            name: subscription(api.md(name)) for name in ("acme-finance", "acme-sales")
        }
        wait_for(
            lambda: (
                api.customers.Get(
                    customers_pb2.GetCustomerRequest(customer_id="c1"),
                    metadata=api.md(),
                ).repeat_purchases
                >= 0
            )
        )
        views = [
            both(
                lambda md, c=customer: api.customers.Get(
                    customers_pb2.GetCustomerRequest(customer_id=c), metadata=md
                )
            )
            for customer in ("c1", "c2")
        ]
        views += [
            both(
                lambda md, c=customer: api.customers.Explain(
                    customers_pb2.GetCustomerRequest(customer_id=c), metadata=md
                )
            )
            for customer in ("c1", "c2")
        ]
        views.append(
            both(
                lambda md: api.customers.TopMovers(
                    customers_pb2.TopMoversRequest(), metadata=md
                )
            )
        )
        finance_stream = [json_format.MessageToDict(m) for m in streams["acme-finance"]]
        sales_stream = [json_format.MessageToDict(m) for m in streams["acme-sales"]]

    amounts = [1234.56, 777.77, 98.5, 1234.56 + 777.77]
    given = len(amounts)
    for finance, _ in views:
        _money_values(finance, amounts)
    for message in finance_stream:
        _money_values(message, amounts)
    # Finance sees the amounts (so the check below looks for real ones) ...
    finance_text = orjson.dumps([v[0] for v in views] + finance_stream).decode()
    assert len(amounts) > given + 10 and '"totalSpend":2012.33' in finance_text
    assert any(" USD" in m["intervention"]["reason"] for m in finance_stream)
    # ... and sales none of them, in any field or text.
    sales_text = orjson.dumps([v[1] for v in views] + sales_stream).decode()
    leaked = [text for text in _money_texts(amounts) if text in sales_text]
    assert leaked == []
    for message in sales_stream:
        item = message["intervention"]
        assert "reason" not in item and "clv" not in item
        assert item["reasonRedacted"] and "valueBand" in item


def test_a_subscriber_that_does_not_ack_is_held_at_its_unacknowledged_limit(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, heartbeat="100ms", max_unacked=5) as api:
        log = api.log()
        log.append([intervention(number) for number in range(20)], NOW_MS)
        stream = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="slow"),
            metadata=api.md(),
            timeout=30,
        )
        received: list[Any] = []

        def consume() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                for message in stream:
                    received.append(message)

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        wait_for(lambda: len(received) >= 7)
        # Held: heartbeats with the last cursor sent, and no interventions.
        assert [m.heartbeat for m in received[:5]] == [False] * 5
        assert all(m.heartbeat and m.cursor == "5" for m in received[5:])
        held = len(received)
        api.interventions.Ack(
            interventions_pb2.AckRequest(subscriber_id="slow", cursor="3"),
            metadata=api.md(),
        )
        wait_for(lambda: sum(not m.heartbeat for m in received) >= 8)
        time.sleep(0.5)
        delivered = [m.cursor for m in received if not m.heartbeat]
        assert delivered == [str(n) for n in range(1, 9)]
        assert len(received) > held
        stream.cancel()
        log.close()


def test_a_cursor_older_than_the_retention_period_is_out_of_range(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, retention="1s") as api:
        log = api.log()
        log.append([intervention(number) for number in range(5)], NOW_MS - 5_000)
        wait_for(lambda: log.trimmed_through() == 5)
        log.append(
            [intervention(number) for number in range(5, 8)], int(time.time() * 1000)
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(
                api.interventions.Subscribe(
                    interventions_pb2.SubscribeRequest(
                        subscriber_id="late", resume_after="2"
                    ),
                    metadata=api.md(),
                    timeout=30,
                )
            )
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        status = rpc_status.from_call(caught.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == "CURSOR_EXPIRED"
        assert info.metadata["earliest_cursor"] == "5"
        # Resuming at the earliest cursor it gave loses nothing retained.
        stream = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(
                subscriber_id="late", resume_after=info.metadata["earliest_cursor"]
            ),
            metadata=api.md(),
            timeout=30,
        )
        got = read_messages(stream, 3)
        stream.cancel()
        assert [m.cursor for m in got] == ["6", "7", "8"]
        log.close()


def test_outcomes_are_counted_per_rule_and_only_admins_reset_cursors(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path) as api:
        log = api.log()
        log.append([intervention(number) for number in range(4)], NOW_MS)
        outcome = interventions_pb2.InterventionOutcome
        api.interventions.Ack(
            interventions_pb2.AckRequest(
                subscriber_id="crm",
                cursor="4",
                outcomes=[
                    outcome(
                        intervention_id="acme-000001", outcome=interventions_pb2.DONE
                    ),
                    outcome(
                        intervention_id="acme-000003",
                        outcome=interventions_pb2.CONVERTED,
                    ),
                    outcome(
                        intervention_id="acme-000000",
                        outcome=interventions_pb2.DISMISSED,
                    ),
                ],
            ),
            metadata=api.md("acme-sales"),
        )
        # A repeated ack is the same outcome, not a second one; an ack never
        # moves the cursor back.
        response = api.interventions.Ack(
            interventions_pb2.AckRequest(
                subscriber_id="crm",
                cursor="2",
                outcomes=[
                    outcome(
                        intervention_id="acme-000001", outcome=interventions_pb2.DONE
                    )
                ],
            ),
            metadata=api.md("acme-sales"),
        )
        assert response.committed_cursor == "4"
        counts = api.interventions.OutcomeCounts(
            interventions_pb2.OutcomeCountsRequest(), metadata=api.md()
        )
        assert {
            rule.rule: (rule.accepted, rule.dismissed, rule.done, rule.converted)
            for rule in counts.rules
        } == {"silent_care": (0, 0, 1, 1), "win_back_regular": (0, 1, 0, 0)}

        reset = interventions_pb2.ResetCursorRequest(subscriber_id="crm", cursor="1")
        for name in ("acme-sales", "acme-finance"):
            code = status_of(
                lambda n=name: api.interventions.ResetCursor(reset, metadata=api.md(n))
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED
        moved = api.interventions.ResetCursor(reset, metadata=api.md("acme-admin"))
        assert moved.committed_cursor == "1"
        log.close()


def test_bad_requests_get_statuses_a_developer_can_act_on_and_lose_nothing(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, max_batch_events=10, max_message_bytes=65_536) as api:
        md = api.md()
        accepted = api.ingest.PublishBatch(
            json_batch([inbound(n, "c1") for n in range(3)]), metadata=md
        )
        assert accepted.accepted == 3

        def refused(batch: Any) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as caught:
                api.ingest.PublishBatch(batch, metadata=md)
            return caught.value

        too_many = refused(json_batch([inbound(n, "c1") for n in range(11)]))
        assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "11 events" in too_many.details() and "at most 10" in too_many.details()

        big = ingest_pb2.EventBatch(json_lines=b"x" * 70_000)
        assert refused(big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        cut = msgpack.packb(inbound(1, "c1"))[:-3]
        error = refused(ingest_pb2.EventBatch(msgpack=cut))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cut off" in error.details()

        empty = refused(ingest_pb2.EventBatch(batch_id="nothing"))
        assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "json_lines" in empty.details()

        # A field of a newer contract: number 99, a varint.
        newer = ingest_pb2.EventBatch(json_lines=b"{}").SerializeToString() + bytes(
            [0x98, 0x06, 0x01]
        )
        publish_raw = api.channel.unary_unary(
            "/touchstream.v1.Ingest/PublishBatch",
            request_serializer=lambda raw: raw,
            response_deserializer=ingest_pb2.PublishAck.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            publish_raw(newer, metadata=md)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[99]" in caught.value.details()

        # Unknown fields of an event are its own rejection, not the batch's.
        ack = api.ingest.PublishBatch(
            json_batch([{**inbound(7, "c1"), "colour": "red"}, inbound(8, "c1")]),
            metadata=md,
        )
        assert ack.accepted == 1 and ack.rejected[0].index == 1
        assert "colour" in ack.rejected[0].reason

        bad_cursor = status_of(
            lambda: next(
                api.interventions.Subscribe(
                    interventions_pb2.SubscribeRequest(
                        subscriber_id="s", resume_after="abc"
                    ),
                    metadata=md,
                )
            )
        )
        assert bad_cursor == grpc.StatusCode.INVALID_ARGUMENT
        no_id = status_of(
            lambda: next(
                api.interventions.Subscribe(
                    interventions_pb2.SubscribeRequest(), metadata=md
                )
            )
        )
        assert no_id == grpc.StatusCode.INVALID_ARGUMENT

        from stream.store import INGEST_FILE, IngestLog

        ingest = IngestLog(api.data / INGEST_FILE)
        kept = [orjson.loads(body)["event_id"] for _, body in ingest.read_after(0, 99)]
        ingest.close()
        assert kept == ["e0", "e1", "e2", "e8"]


def test_streams_per_tenant_are_limited(tmp_path: Path) -> None:
    with running_api(tmp_path, heartbeat="100ms", max_streams_per_tenant=2) as api:
        request = interventions_pb2.SubscribeRequest(subscriber_id="s")
        open_streams = [
            api.interventions.Subscribe(request, metadata=api.md(), timeout=30)
            for _ in range(2)
        ]
        for stream in open_streams:
            assert next(stream).heartbeat
        code = status_of(
            lambda: next(api.interventions.Subscribe(request, metadata=api.md()))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Another tenant has streams of its own.
        other = api.interventions.Subscribe(
            request, metadata=api.md("beta-admin"), timeout=30
        )
        assert next(other).heartbeat
        for stream in (*open_streams, other):
            stream.cancel()


def test_top_movers_rank_customers_by_how_far_their_clv_moved(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        store = CustomerStore(api.data / CUSTOMERS_FILE)
        day = 86_400_000
        now = int(time.time() * 1000)

        def publish(customer: str, clv: float, band: int, at_ms: int) -> None:
            record = {
                "tenant": "acme",
                "customer_id": customer,
                "clv": clv,
                "value_band": band,
            }
            store.publish([record], [{}], at_ms)

        publish("x", 10.0, 1, now - 2 * day)
        publish("z", 30.0, 3, now - 3 * day)
        publish("w", 20.0, 2, now - 2 * day)
        publish("x", 50.0, 4, now - 1000)
        publish("y", 5.0, 1, now - 1000)  # first seen inside the window
        publish("z", 28.0, 3, now - 500)
        store.close()

        board = api.customers.TopMovers(
            customers_pb2.TopMoversRequest(window="1d"), metadata=api.md("acme-finance")
        )
        assert [
            (m.customer_id, m.clv_before, m.clv_now, m.change, m.direction)
            for m in board.movers
        ] == [
            ("x", 10.0, 50.0, 40.0, "up"),
            ("y", 0.0, 5.0, 5.0, "up"),
            ("z", 30.0, 28.0, -2.0, "down"),
        ]
        assert board.movers[0].value_band_before == 1
        assert board.movers[0].value_band_now == 4
        sales = api.customers.TopMovers(
            customers_pb2.TopMoversRequest(window="1d", limit=1),
            metadata=api.md("acme-sales"),
        )
        [top] = sales.movers
        assert top.customer_id == "x" and not top.HasField("clv_now")
        for window in ("yesterday", "0s", "-1d", "3651d", "9" * 30 + "s", "\u0661d"):
            bad = status_of(
                lambda w=window: api.customers.TopMovers(
                    customers_pb2.TopMoversRequest(window=w), metadata=api.md()
                )
            )
            assert bad == grpc.StatusCode.INVALID_ARGUMENT, window


def test_health_reports_serving_and_not_serving_once_stopping(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        stub = health_pb2_grpc.HealthStub(api.channel)
        for service in ("", "touchstream.v1.Ingest", "touchstream.v1.Interventions"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A watcher on a channel of its own, which outlives the server.
        channel = grpc.insecure_channel(api.address)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        statuses: list[int] = []

        def follow() -> None:
            with contextlib.suppress(grpc.RpcError):
                for reply in watch:
                    statuses.append(reply.status)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        wait_for(lambda: statuses)
    # Leaving the block stopped the server: the watcher saw it go.
    watcher.join(timeout=30)
    channel.close()
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


def test_reflection_lists_the_three_services(tmp_path: Path) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with running_api(tmp_path) as api:
        database = ProtoReflectionDescriptorDatabase(api.channel)
        services = set(database.get_services())
        assert {
            "touchstream.v1.Ingest",
            "touchstream.v1.Interventions",
            "touchstream.v1.Customers",
            "grpc.health.v1.Health",
        } <= services
        ingest = database.FindFileContainingSymbol("touchstream.v1.Ingest")
        assert ingest.name == "touchstream/v1/ingest.proto"


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    msg = f"no VmRSS in /proc/{pid}/status"
    raise AssertionError(msg)


def test_a_subscriber_that_stops_reading_leaves_the_server_memory_bounded(
    tmp_path: Path,
) -> None:
    total = 100_000
    padding = "x" * 2_000  # 200 MB in all, were the server to hold them
    with serve_process(tmp_path, heartbeat="200ms", max_unacked=10 * total) as (
        api,
        process,
    ):
        log = api.log()
        log.append([intervention(0, params={"note": padding})], NOW_MS)
        slow = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="slow"),
            metadata=api.md(),
            timeout=600,
        )
        assert next(slow).cursor == "1"  # then it reads no more
        fast_channel = grpc.insecure_channel(api.address)
        fast = Api(api.address, api.data, fast_channel).interventions.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="fast"),
            metadata=api.md(),
            timeout=600,
        )
        received = [0]

        def consume() -> None:
            with contextlib.suppress(grpc.RpcError):
                for message in fast:
                    if not message.heartbeat:
                        received[0] += 1
                        if received[0] == total:
                            return

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        wait_for(lambda: received[0] >= 1)
        baseline = _rss_bytes(process.pid)
        peak = baseline
        for start in range(1, total, 5_000):
            batch = [
                intervention(number, params={"note": padding})
                for number in range(start, min(total, start + 5_000))
            ]
            log.append(batch, NOW_MS)
            peak = max(peak, _rss_bytes(process.pid))
        while reader.is_alive():
            peak = max(peak, _rss_bytes(process.pid))
            reader.join(timeout=0.2)
        assert received[0] == total  # they flowed, to the subscriber that reads
        growth = peak - baseline
        assert growth < 60 * 2**20, f"server grew by {growth / 2**20:.0f} MiB"
        fast.cancel()
        slow.cancel()
        fast_channel.close()
        log.close()


def test_a_restarted_server_resumes_subscribers_from_the_durable_log(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, engine=True, heartbeat="100ms") as api:
        events = [inbound(index, f"c{index}") for index in range(4)]
        assert api.ingest.PublishBatch(json_batch(events), metadata=api.md()).accepted
        first = subscribe(api, 3, subscriber_id="crm")
        api.interventions.Ack(
            interventions_pb2.AckRequest(subscriber_id="crm", cursor=first[-1].cursor),
            metadata=api.md(),
        )
        wait_for(lambda: api.log().latest_cursor() >= 8)
        before = [
            (entry.cursor, orjson.loads(entry.body)["intervention_id"])
            for entry in api.log().read_after("acme", 0, 100)[0]
        ]
    # The engine reads the ingest log again from its start: the same
    # decisions carry the same ids, which the log holds once.
    with running_api(tmp_path, engine=True, heartbeat="100ms") as api:
        rest = subscribe(api, 5, subscriber_id="crm")
        time.sleep(3)  # time for the engine to decide again
        after = [
            (entry.cursor, orjson.loads(entry.body)["intervention_id"])
            for entry in api.log().read_after("acme", 0, 100)[0]
        ]
    assert len(before) == 8 and after == before
    ids = [m.intervention.intervention_id for m in first + rest]
    assert ids == [intervention_id for _, intervention_id in before]


def test_an_engine_killed_with_sigkill_is_restarted_and_catches_up(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, engine=True, heartbeat="100ms") as api:
        assert api.server is not None
        health = health_pb2_grpc.HealthStub(api.channel)

        def engine_status() -> int:
            request = health_pb2.HealthCheckRequest(service="touchstream.engine")
            return int(health.Check(request).status)

        assert engine_status() == health_pb2.HealthCheckResponse.SERVING
        first = api.server._engine
        assert first is not None
        first.kill()
        wait_for(lambda: engine_status() == health_pb2.HealthCheckResponse.NOT_SERVING)
        # Accepted while the engine is down: durable, applied once it is back.
        events = [inbound(index, f"c{index}") for index in range(2)]
        assert api.ingest.PublishBatch(json_batch(events), metadata=api.md()).accepted
        wait_for(lambda: engine_status() == health_pb2.HealthCheckResponse.SERVING)
        assert api.server._engine is not first
        got = subscribe(api, 4, subscriber_id="crm")
        assert sorted(m.intervention.customer_id for m in got) == [
            "c0",
            "c0",
            "c1",
            "c1",
        ]


@pytest.mark.parametrize(
    "cursor", ["41", "9" * 30, "\u0661", "\u00b2", "-1", "1e3", " 1"]
)
def test_a_cursor_past_the_end_or_not_a_cursor_is_an_invalid_argument(
    tmp_path: Path, cursor: str
) -> None:
    with running_api(tmp_path) as api:
        log = api.log()
        log.append([intervention(number) for number in range(40)], NOW_MS)
        calls = [
            lambda: next(
                api.interventions.Subscribe(
                    interventions_pb2.SubscribeRequest(
                        subscriber_id="s", resume_after=cursor
                    ),
                    metadata=api.md(),
                    timeout=10,
                )
            ),
            lambda: api.interventions.Ack(
                interventions_pb2.AckRequest(subscriber_id="s", cursor=cursor),
                metadata=api.md(),
            ),
            lambda: api.interventions.ResetCursor(
                interventions_pb2.ResetCursorRequest(subscriber_id="s", cursor=cursor),
                metadata=api.md(),
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "cursor" in caught.value.details()
        assert log.committed("acme", "s") is None
        log.close()


def test_an_outcome_the_contract_does_not_have_is_an_invalid_argument(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path) as api:
        api.log().append([intervention(1)], NOW_MS)
        code = status_of(
            lambda: api.interventions.Ack(
                interventions_pb2.AckRequest(
                    subscriber_id="s",
                    outcomes=[
                        interventions_pb2.InterventionOutcome(
                            intervention_id="acme-000001", outcome=9
                        )
                    ],
                ),
                metadata=api.md(),
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stopping_server_ends_streams_with_unavailable_and_the_cursor(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, heartbeat="100ms") as api:
        api.log().append([intervention(number) for number in range(3)], NOW_MS)
        channel = grpc.insecure_channel(api.address)
        stream = Api(api.address, api.data, channel).interventions.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="s"),
            metadata=api.md(),
            timeout=60,
        )
        assert len(read_messages(stream, 3)) == 3
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stream:
            pass
    channel.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "resume after cursor 3" in caught.value.details()


def test_one_data_folder_and_one_port_serve_one_server(tmp_path: Path) -> None:
    from stream.config import load_config
    from stream.errors import UsageError
    from stream.server import ServeOptions, Server

    with running_api(tmp_path) as api:
        config = load_config(tmp_path / "touchstream.toml")
        with pytest.raises(UsageError, match="uses the data folder"):
            Server(ServeOptions(config, api.data, "127.0.0.1:0"))
        other = ServeOptions(config, tmp_path / "other", api.address, engine=False)
        with pytest.raises(UsageError, match="cannot listen"):
            asyncio.run(Server(other).start())


def test_an_engine_killed_mid_stream_resumes_from_its_checkpoint_exactly_once(
    tmp_path: Path, kernel: str
) -> None:
    extra = '[checkpoint]\ninterval = "200ms"'
    with running_api(tmp_path, engine=True, extra=extra) as api:
        assert api.server is not None
        store = CustomerStore(api.data / CUSTOMERS_FILE)

        def record(customer: str) -> dict[str, Any] | None:
            found = store.get("acme", customer)
            return None if found is None else found[0]

        def inbound_count(customer: str) -> int:
            found = record(customer)
            return 0 if found is None else found["channels"]["wechat"]["inbound"]

        before = [inbound(n, f"c{n % 4}") for n in range(40)]  # c0..c3: 10 each
        assert api.ingest.PublishBatch(json_batch(before), metadata=api.md()).accepted
        wait_for(lambda: all(inbound_count(f"c{n}") == 10 for n in range(4)))
        time.sleep(1.0)  # several checkpoints hold all of it
        untouched_at = record("c3")["evaluated_at"]  # type: ignore[index]

        api.server._engine.kill()  # type: ignore[union-attr]
        after = [inbound(n, f"c{n % 3}") for n in range(40, 70)]  # c0..c2: 10 more
        assert api.ingest.PublishBatch(json_batch(after), metadata=api.md()).accepted
        wait_for(lambda: all(inbound_count(f"c{n}") == 20 for n in range(3)), 60)
        time.sleep(0.5)
        # Each event applied once; c3, untouched since the checkpoint, was not
        # rebuilt from the start of the ingest log.
        assert [inbound_count(f"c{n}") for n in range(4)] == [20, 20, 20, 10]
        assert record("c3")["evaluated_at"] == untouched_at  # type: ignore[index]
        store.close()


def test_lag_shows_how_far_each_subscriber_is_behind(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        log = api.log()
        log.append([intervention(number) for number in range(5)], NOW_MS)
        log.append([intervention(number) for number in range(5, 8)], NOW_MS + 4_000)
        for subscriber, cursor in (("ahead", "8"), ("behind", "3")):
            api.interventions.Ack(
                interventions_pb2.AckRequest(subscriber_id=subscriber, cursor=cursor),
                metadata=api.md(),
            )
        lags = api.interventions.Lag(
            interventions_pb2.LagRequest(), metadata=api.md()
        ).subscribers
        assert [
            (lag.subscriber_id, lag.committed_cursor, lag.entries_behind)
            for lag in lags
        ] == [("ahead", "8", 0), ("behind", "3", 5)]
        assert lags[1].seconds_behind == 4.0 and lags[0].seconds_behind == 0.0
        log.close()


def test_an_event_ahead_of_the_wall_clock_does_not_move_time_for_everyone(
    tmp_path: Path,
) -> None:
    with running_api(tmp_path, engine=True, heartbeat="100ms") as api:
        now = int(time.time() * 1000)
        skewed = inbound(1, "early", ts=now + 240_000)  # within the allowed skew
        assert api.ingest.PublishBatch(json_batch([skewed]), metadata=api.md()).accepted
        time.sleep(1.5)
        ack = api.ingest.PublishBatch(
            json_batch([inbound(2, "on_time")]), metadata=api.md()
        )
        assert ack.accepted == 1
        got = subscribe(api, 2, subscriber_id="crm")
        # The customer on time falls silent a second later, as ever; the
        # early one's silence is not due for minutes.
        assert {m.intervention.customer_id for m in got} == {"on_time"}


def test_events_that_arrive_while_the_engine_is_down_are_decided_after_it_resumes(
    tmp_path: Path,
) -> None:
    extra = '[checkpoint]\ninterval = "200ms"'
    with running_api(tmp_path, engine=True, extra=extra, heartbeat="100ms") as api:
        assert api.server is not None
        health = health_pb2_grpc.HealthStub(api.channel)
        request = health_pb2.HealthCheckRequest(service="touchstream.engine")
        serving = health_pb2.HealthCheckResponse.SERVING
        time.sleep(1.5)  # checkpoints of the running engine exist
        api.server._engine.kill()  # type: ignore[union-attr]
        wait_for(lambda: health.Check(request).status != serving)
        events = [inbound(index, f"c{index}") for index in range(3)]
        assert api.ingest.PublishBatch(json_batch(events), metadata=api.md()).accepted
        # Resumed from its checkpoint, seconds after these events: they are
        # its backlog, decided in event time, not late.
        got = subscribe(api, 6, subscriber_id="crm")
        assert sorted({m.intervention.customer_id for m in got}) == ["c0", "c1", "c2"]
