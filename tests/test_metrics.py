"""The metrics of ``/metrics`` and the lifecycle logs, on a real server with
real gRPC clients: every name is exposed, each moves by what was done, the
engine's figures come through the server's port (also after the engine is
killed), and the Grafana dashboard shows every metric and no other name."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from touchstream.v1 import ingest_pb2, interventions_pb2

from stream.engine_metrics import EngineMetrics
from stream.metrics import ServerMetrics
from tests.api_support import (
    Api,
    inbound,
    intervention,
    json_batch,
    read_messages,
    running_api,
    status_of,
    wait_for,
)

NOW_MS = int(time.time() * 1000)
DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana" / "touchstream.json"
CHECKPOINTS = '[checkpoint]\ninterval = "1s"'


class Scrape:
    """One scrape of ``/metrics``: sample values by name and labels."""

    def __init__(self, port: int) -> None:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as page:
            self.text = page.read().decode()
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(self.text)
            for sample in family.samples
        }
        self.families = {
            family.name: family.type
            for family in text_string_to_metric_families(self.text)
        }

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.samples

    def total(self, name: str) -> float:
        """The sum over every label set of `name`."""
        return sum(value for (found, _), value in self.samples.items() if found == name)

    def labels(self, name: str, label: str) -> set[str]:
        return {
            dict(labels)[label]
            for (found, labels), _ in self.samples.items()
            if found == name and label in dict(labels)
        }


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


def _port(api: Api) -> int:
    assert api.server is not None and api.server.metrics_port
    return api.server.metrics_port


def test_metrics_name_what_the_server_does_and_move_with_it(tmp_path: Path) -> None:
    with running_api(tmp_path, metrics=True, heartbeat="100ms") as api:
        port = _port(api)
        api.log().append([intervention(1), intervention(3), intervention(5)], NOW_MS)
        before = Scrape(port)
        events = [inbound(1, "c1"), inbound(2, "c2", source="zendesk")]
        events.append({**inbound(3, "c3"), "channel": "fax"})
        events.append(inbound(4, "c4", tenant="beta"))
        api.ingest.PublishBatch(json_batch(events), metadata=api.md())
        no_payload = ingest_pb2.EventBatch(batch_id="empty")
        assert (
            status_of(
                lambda: api.ingest.PublishBatch(
                    no_payload, metadata=api.md("acme-sales")
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        status_of(
            lambda: api.ingest.PublishBatch(
                json_batch(events), metadata=(("authorization", "Bearer nope"),)
            )
        )
        messages = read_messages(
            api.interventions.Subscribe(
                interventions_pb2.SubscribeRequest(subscriber_id="crm"),
                metadata=api.md(),
                timeout=30,
            ),
            3,
        )
        api.interventions.Ack(
            interventions_pb2.AckRequest(
                subscriber_id="crm", cursor=messages[0].cursor
            ),
            metadata=api.md(),
        )
        behind = Scrape(port)
        api.interventions.Ack(
            interventions_pb2.AckRequest(
                subscriber_id="crm", cursor=messages[-1].cursor
            ),
            metadata=api.md(),
        )
        after = Scrape(port)

    accepted = {"tenant": "acme", "channel": "wechat", "outcome": "accepted"}
    counted = [
        ("touchstream_ingest_events_total", dict(source="wecom", **accepted), 1),
        ("touchstream_ingest_events_total", dict(source="zendesk", **accepted), 1),
        (
            "touchstream_ingest_rejected_total",
            dict(tenant="acme", code="invalid_value"),
            1,
        ),
        (
            "touchstream_ingest_rejected_total",
            dict(tenant="acme", code="wrong_tenant"),
            1,
        ),
        ("touchstream_ingest_batches_total", dict(tenant="acme", status="OK"), 1),
        (
            "touchstream_ingest_batches_total",
            dict(tenant="acme", status="INVALID_ARGUMENT"),
            1,
        ),
        ("touchstream_ingest_ack_seconds_count", dict(tenant="acme"), 1),
        ("touchstream_auth_failures_total", dict(reason="unknown_token"), 1),
        (
            "touchstream_interventions_sent_total",
            dict(tenant="acme", action="care_task"),
            3,
        ),
        # The integration health board, by token name.
        (
            "touchstream_integration_events_total",
            dict(integration="acme-admin", outcome="accepted"),
            2,
        ),
        (
            "touchstream_integration_events_total",
            dict(integration="acme-admin", outcome="rejected"),
            2,
        ),
        (
            "touchstream_integration_batches_total",
            dict(integration="acme-admin", status="OK"),
            1,
        ),
        (
            "touchstream_integration_batches_total",
            dict(integration="acme-sales", status="INVALID_ARGUMENT"),
            1,
        ),
        (
            "touchstream_integration_ack_seconds_count",
            dict(integration="acme-admin"),
            1,
        ),
    ]
    assert [
        (name, labels, moved(before, after, name, **labels))
        for name, labels, _ in counted
    ] == counted
    # Three entries, the first acknowledged: two behind; then none.
    crm = {"tenant": "acme", "subscriber": "crm"}
    assert not before.has("touchstream_subscriber_lag", **crm)
    assert behind.get("touchstream_subscriber_lag", **crm) == 2
    assert after.get("touchstream_subscriber_lag", **crm) == 0
    assert after.has("touchstream_subscriber_lag_seconds", **crm)
    # No engine in this server: nothing of it is claimed.
    assert not after.has("touchstream_engine_up")
    assert all(name.startswith("touchstream_") for name in after.families)


def _engine_scrape(port: int, up: float = 1) -> Scrape | None:
    scrape = Scrape(port)
    return scrape if scrape.get("touchstream_engine_up") == up else None


def test_the_engines_metrics_come_through_the_servers_port_and_move(
    tmp_path: Path,
) -> None:
    with running_api(
        tmp_path, engine=True, metrics=True, heartbeat="100ms", extra=CHECKPOINTS
    ) as api:
        port = _port(api)
        before = wait_for(lambda: _engine_scrape(port), 60)
        # Caught up with an empty log, time follows the wall clock less the
        # allowed lateness (100 ms) from the start.
        lag_name = "touchstream_watermark_lag_seconds"
        assert wait_for(lambda: Scrape(port).get(lag_name), 60) >= 0.1
        events = [inbound(number, f"c{number % 3}") for number in range(5)]
        bad = [{**inbound(5, "c0"), "channel": "fax"}, inbound(6, "c1", tenant="beta")]
        ack = api.ingest.PublishBatch(json_batch(events + bad), metadata=api.md())
        assert (ack.accepted, len(ack.rejected)) == (5, 2)

        # Each of the three customers falls silent a second later: a care
        # task and a policy brief each, due at the silence's deadline.
        def decided() -> Scrape | None:
            scrape = Scrape(port)
            total = moved(
                before, scrape, "touchstream_end_to_end_seconds_count", trigger="time"
            )
            return scrape if total == 6 else None

        after = wait_for(decided, 60)
        for action in ("care_task", "content_push"):
            labels = {"tenant": "acme", "action": action}
            assert (
                moved(
                    before, after, "touchstream_interventions_decided_total", **labels
                )
                == 3
            )
        assert (
            moved(before, after, "touchstream_engine_events_total", outcome="applied")
            == 5
        )
        assert after.total("touchstream_key_group_customers") == 3
        assert after.get("touchstream_customers") == 3
        assert all(
            name.startswith("kg")
            for name in after.labels("touchstream_key_group_customers", "key_group")
        )
        lag = after.get("touchstream_watermark_lag_seconds")
        assert after.has("touchstream_watermark_lag_seconds") and 0 <= lag < 60
        time.sleep(0.2)
        assert Scrape(port).get("touchstream_watermark_lag_seconds") != lag

        # A repeated event, one repeating an id with another payload, one a
        # minute older than the watermark, and two on time (a second ahead
        # of the wall clock, so that no watermark can have passed them).
        ahead_ms = int(time.time() * 1000) + 1_000
        again = [
            events[0],
            {**events[1], "ts": events[1]["ts"] - 1},
            inbound(7, "c2", ts=ahead_ms - 61_000),
            inbound(8, "c0", ts=ahead_ms),
            inbound(9, "c1", ts=ahead_ms),
        ]
        assert (
            api.ingest.PublishBatch(json_batch(again), metadata=api.md()).accepted == 5
        )

        def counted() -> Scrape | None:
            scrape = Scrape(port)
            late = moved(before, scrape, "touchstream_late_events_total")
            return scrape if late == 1 else None

        final = wait_for(counted, 60)
        assert [
            moved(before, final, "touchstream_engine_events_total", outcome=outcome)
            for outcome in ("applied", "duplicate", "rejected")
        ] == [8, 1, 1]
        assert (
            moved(before, final, "touchstream_engine_rejected_total", code="conflict")
            == 1
        )
        checkpoints = wait_for(
            lambda: (
                (s := Scrape(port)).get("touchstream_checkpoint_seconds_count") >= 1
                and s
            )
        )
        assert checkpoints.get("touchstream_checkpoint_bytes") > 0
        assert checkpoints.get("touchstream_engine_restarts_total") == 0


def test_a_killed_engine_is_scraped_again_once_restarted_and_logs_one_line_a_phase(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    extra = '[checkpoint]\ninterval = "200ms"'
    with running_api(
        tmp_path, engine=True, metrics=True, heartbeat="100ms", extra=extra
    ) as api:
        assert api.server is not None
        port = _port(api)
        wait_for(lambda: _engine_scrape(port), 60)
        events = [inbound(number, f"c{number % 50}") for number in range(400)]
        assert api.ingest.PublishBatch(json_batch(events), metadata=api.md()).accepted
        applied = wait_for(
            lambda: (
                (s := Scrape(port)).get(
                    "touchstream_engine_events_total", outcome="applied"
                )
                == 400
                and s
            ),
            60,
        )
        saved = applied.get("touchstream_checkpoint_seconds_count")
        # Two more checkpoints: one of them holds every customer.
        wait_for(
            lambda: (
                Scrape(port).get("touchstream_checkpoint_seconds_count") >= saved + 2
            )
        )
        stream = api.interventions.Subscribe(
            interventions_pb2.SubscribeRequest(subscriber_id="crm"),
            metadata=api.md(),
            timeout=60,
        )
        assert len(read_messages(stream, 10)) == 10
        stream.cancel()

        api.server._engine.kill()  # type: ignore[union-attr]
        wait_for(lambda: _engine_scrape(port, up=0), 60)
        restarted = wait_for(
            lambda: (
                (s := _engine_scrape(port))
                and s.get("touchstream_customers") == 50
                and s
            ),
            90,
        )
        assert restarted.get("touchstream_engine_restarts_total") == 1

    engine_lines = capfd.readouterr().err.splitlines()
    server_lines = [record.getMessage() for record in caplog.records]
    lines = engine_lines + server_lines

    def named(phase: str) -> list[str]:
        return [line for line in lines if phase in line]

    assert len(named("Engine: started")) == 2
    assert len(named("Engine: exited")) == 1
    (restore,) = named("Restore: resumed")
    assert re.search(r"key_groups=\d+ customers=50 bytes=\d+ took_ms=\d+", restore)
    assert named("Checkpoint: saved key_groups=")
    assert any("customers=50" in line for line in named("Checkpoint: saved"))
    (closed,) = named("Subscribe: closed")
    found = re.search(
        r"tenant=acme subscriber=crm sent=(\d+) last=\d+ reason=(\w+)", closed
    )
    assert found is not None and int(found[1]) >= 10 and found[2] == "client_gone"
    # Hundreds of events, a line for none of them.
    assert not [line for line in lines if re.search(r"\b[ec]\d+\b", line)]
    assert len(lines) < len(events) / 2


def _exposed() -> dict[str, set[str]]:
    """Every metric the server's /metrics may show, the engine's too, with
    the names of its samples."""
    server = ServerMetrics()
    server.watch_subscribers([], lambda: None, 10)
    server.watch_engine(Path("/nonexistent/engine-metrics.port"))
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
    }
    return {
        family.name: {family.name + suffix for suffix in suffixes[family.type]}
        for registry in (server.registry, EngineMetrics().registry)
        for family in registry.collect()
    }


def test_the_grafana_dashboard_shows_every_metric_and_asks_for_no_other() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [
        item for item in dashboard["templating"]["list"] if item["type"] == "datasource"
    ]
    assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in panels)
    used = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"\btouchstream_\w+", target["expr"])
    }
    exposed = _exposed()
    samples = set().union(*exposed.values())
    assert sorted(used - samples) == []
    assert sorted(family for family, names in exposed.items() if not names & used) == []


def test_the_engine_alone_serves_its_metrics_on_metrics_listen(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "engine", "--data", str(tmp_path),
         "--metrics-listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def scraped() -> Scrape | None:
            try:
                return Scrape(port)
            except OSError:
                return None

        scrape = wait_for(scraped, 60)
        assert {
            "touchstream_engine_events",
            "touchstream_watermark_lag_seconds",
            "touchstream_checkpoint_seconds",
        } <= set(scrape.families)
        assert not scrape.has("touchstream_engine_up")  # the server's, not its own
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"metrics_port={port}" in err
