"""Metrics of ``touchstream serve`` in Prometheus format, on the HTTP
address of ``--metrics-listen`` (README, "Metrics"). Every name starts
with ``touchstream_``; a label never holds a customer's id.

The server's own figures are counted as calls are handled. Two kinds are
worked out when scraped: each subscriber's lag, from the intervention log
(on a connection of the collector's own), and the engine's figures,
fetched from the engine process's own metrics port (``stream/
engine_metrics.py``) and shown here as they are, beside
``touchstream_engine_up``.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from stream.config import parse_address
from stream.errors import UsageError
from stream.store import SubscriberLag

log = logging.getLogger(__name__)

# Ack latency of the ingest, from a batch's arrival to its durable ack.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def serve_registry(registry: CollectorRegistry, address: str, flag: str) -> Any:
    """Serve a registry's ``/metrics`` on HOST:PORT (`flag` names the
    option in errors); the HTTP server, whose ``server_port`` is the port."""
    host, port = parse_address(address, flag)
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as ex:
        msg = f"cannot serve metrics on {address!r}: {ex.strerror}"
        raise UsageError(msg) from None
    return server


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
        # The integration health board: each upstream system publishes with
        # a token of its own, named in the tokens file.
        self.integration_events = Counter(
            "touchstream_integration_events",
            "Events each upstream integration (token name) published, by "
            "outcome (accepted or rejected)",
            ["integration", "outcome"],
            registry=registry,
        )
        self.integration_batches = Counter(
            "touchstream_integration_batches",
            "Batches each upstream integration (token name) published, by "
            "status (OK, or the status that refused the batch)",
            ["integration", "status"],
            registry=registry,
        )
        self.integration_ack_seconds = Histogram(
            "touchstream_integration_ack_seconds",
            "From a batch's arrival to its ack (events durable), by upstream "
            "integration (token name)",
            ["integration"],
            buckets=_ACK_BUCKETS,
            registry=registry,
        )
        self.engine_restarts = Counter(
            "touchstream_engine_restarts",
            "Times the engine process exited and was started again",
            registry=registry,
        )
        self._http: Any = None
        self._collectors: list[Any] = []

    def watch_engine(self, port_file: Path) -> None:
        """Show the engine's metrics, from the port named in `port_file`."""
        collector = EngineCollector(port_file)
        self.registry.register(collector)
        self._collectors.append(collector)

    def watch_subscribers(
        self,
        tenants: list[str],
        open_log: Callable[[], Any],
        cap: int,
    ) -> None:
        """Show each subscriber's lag, read with a log `open_log` opens."""
        collector = SubscriberLagCollector(tenants, open_log, cap)
        self.registry.register(collector)
        self._collectors.append(collector)

    def serve(self, address: str) -> int:
        """Serve ``/metrics`` on HOST:PORT; return the port."""
        self._http = serve_registry(self.registry, address, "--metrics-listen")
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for collector in self._collectors:
            collector.close()


# How long a scrape waits for the engine's metrics.
ENGINE_SCRAPE_TIMEOUT_S = 2.0


class EngineCollector:
    """The engine process's metrics, fetched from its own port when
    scraped, and whether that worked (``touchstream_engine_up``).

    The engine names its port in a file when it starts; one started again
    after a crash names its new port there."""

    def __init__(self, port_file: Path) -> None:
        self.port_file = port_file

    def collect(self) -> Iterator[Metric]:
        families = self._fetch()
        up = GaugeMetricFamily(
            "touchstream_engine_up",
            "1 when the engine process answered this scrape with its metrics, else 0",
            value=0 if families is None else 1,
        )
        yield up
        yield from families or ()

    def _fetch(self) -> list[Metric] | None:
        try:
            port = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None  # not started yet, or started again meanwhile
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=ENGINE_SCRAPE_TIMEOUT_S) as page:
                text = page.read().decode()
            return list(text_string_to_metric_families(text))
        except (OSError, ValueError, urllib.error.URLError) as ex:
            log.debug("Metrics: engine unreachable url=%s error=%s", url, ex)
            return None

    def close(self) -> None:
        pass


class SubscriberLagCollector:
    """Each subscriber's lag when scraped, as ``Interventions.Lag`` counts
    it, for the tenants of the tokens file.

    It reads with an intervention log of its own, opened on the first
    scrape; scrapes (each on a thread of the HTTP server) take turns."""

    def __init__(
        self, tenants: list[str], open_log: Callable[[], Any], cap: int
    ) -> None:
        self.tenants = tenants
        self.open_log = open_log
        self.cap = cap
        self._lock = threading.Lock()
        self._log: Any = None

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            "touchstream_subscriber_lag",
            "Entries of the tenant's intervention log after the subscriber's "
            f"committed cursor (counted up to {self.cap:,})",
            labels=["tenant", "subscriber"],
        )
        seconds = GaugeMetricFamily(
            "touchstream_subscriber_lag_seconds",
            "Seconds between the append times of the first entry after the "
            "subscriber's committed cursor and the newest entry",
            labels=["tenant", "subscriber"],
        )
        for tenant, lag in self._lags():
            entries.add_metric([tenant, lag.subscriber_id], lag.entries_behind)
            seconds.add_metric([tenant, lag.subscriber_id], lag.seconds_behind)
        yield entries
        yield seconds

    def _lags(self) -> list[tuple[str, SubscriberLag]]:
        with self._lock:
            try:
                if self._log is None:
                    self._log = self.open_log()
                return [
                    (tenant, lag)
                    for tenant in self.tenants
                    for lag in self._log.lags(tenant, self.cap)
                ]
            except Exception as ex:  # a scrape never fails for it
                log.warning("Metrics: subscriber lag not read error=%s", ex)
                return []

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None
