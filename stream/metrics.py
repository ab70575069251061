"""Metrics of ``touchstream serve`` in Prometheus format, on the HTTP
address of ``--metrics-listen`` (README, "Metrics"). Every name starts
with ``touchstream_``; a label never holds a customer's id."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from stream.config import parse_address
from stream.errors import UsageError

# Ack latency of the ingest, from a batch's arrival to its durable ack.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """The server process's metrics, in a registry of their own."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.registry = registry
        self.events = Counter(
            "touchstream_ingest_events",
            "Events that reached the gRPC ingest, by tenant, channel, source "
            "and outcome (accepted or rejected)",
            ["tenant", "channel", "source", "outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "touchstream_ingest_rejected",
            "Events the gRPC ingest rejected, by tenant and reason code",
            ["tenant", "code"],
            registry=registry,
        )
        self.batches = Counter(
            "touchstream_ingest_batches",
            "Batches the gRPC ingest answered, by tenant and status",
            ["tenant", "status"],
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "touchstream_ingest_ack_seconds",
            "From a batch's arrival to its ack (events durable), by tenant",
            ["tenant"],
            buckets=_ACK_BUCKETS,
            registry=registry,
        )
        self.sent = Counter(
            "touchstream_interventions_sent",
            "Interventions sent to subscribers, by tenant and action",
            ["tenant", "action"],
            registry=registry,
        )
        self.streams = Gauge(
            "touchstream_open_streams",
            "Open Subscribe and Publish streams, by tenant",
            ["tenant"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "touchstream_auth_failures",
            "Calls refused for their credentials or role, by reason",
            ["reason"],
            registry=registry,
        )
        self._http: Any = None

    def serve(self, address: str) -> int:
        """Serve ``/metrics`` on HOST:PORT; return the port."""
        host, port = parse_address(address, "--metrics-listen")
        try:
            server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as ex:
            msg = f"cannot serve metrics on {address!r}: {ex.strerror}"
            raise UsageError(msg) from None
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
