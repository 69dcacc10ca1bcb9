"""Prometheus metrics: what an operator watches, served on ``--metrics-listen``.

Request counts and latencies come from a server interceptor (and the lane),
by method and status Code; commit latency and batch size from the committer;
the rest (objects, bytes, arena, evictions, subscribers and their lag) is read
from the store at scrape time, so the hot path pays for nothing it does not
already do. Requests are tallied in plain lists and made metric families at
scrape time: prometheus_client's labelled Counter and Histogram cost a
noticeable part of a small lane put.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from improv_store.protocol import Code
from improv_store.v1 import store_pb2 as pb

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
# A request tally: [count, sum of seconds, then one count per latency bucket, +Inf last].
_COUNT, _SUM, _BUCKETS = 0, 1, 2


class StoreMetrics:
    """The registry of one server and the instruments the server feeds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestTallies(_LATENCY_BUCKETS)
        self.registry.register(self.requests)
        self.commit_seconds = Histogram(
            "improv_store_commit_seconds",
            "Group commit latency (a write-ahead log append or an LMDB commit), fsync included",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.commit_batch = Histogram(
            "improv_store_commit_batch_changes", "Changes made durable per group commit",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        # Counts one finished request: the interceptor's job, and the lane's for its calls.
        self.record = self.requests.record

    def observe_commit(self, changes: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(changes)

    def stats(self) -> pb.ServerStats:
        """The counters as Info reports them."""
        stats = pb.ServerStats()
        for (_, code), tally in self.requests.totals().items():
            stats.requests += tally[_COUNT]
            if code != Code.OK:
                stats.failed_requests += tally[_COUNT]
        stats.commits = int(sum(s.value for s in _samples(self.commit_seconds, "_count")))
        stats.commit_seconds = sum(s.value for s in _samples(self.commit_seconds, "_sum"))
        stats.committed_changes = int(sum(s.value for s in _samples(self.commit_batch, "_sum")))
        return stats

    def watch(self, info: Callable[[], pb.InfoResponse], lag: Callable[[], int],
              replication: Callable[[], pb.Replication] | None = None) -> None:
        """Report the store's state (and a follower's ``replication``) at every scrape."""
        self.registry.register(_StoreCollector(info, lag, replication))

    def serve(self, address: str) -> None:
        """Serve /metrics over HTTP on ``host:port`` (a daemon thread)."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)

    def interceptor(self) -> grpc.ServerInterceptor:
        return _MetricsInterceptor(self)


class RequestTallies(Collector):
    """Finished requests by method and status code: counts and a latency histogram,
    kept in plain lists under one lock and turned into metric families at scrape time."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, Code], list[Any]] = {}

    def record(self, method: str, code: Code, seconds: float) -> None:
        """Count one finished request that took ``seconds``."""
        bucket = _BUCKETS + bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            tally = self._tallies.get((method, code))
            if tally is None:
                tally = self._tallies[(method, code)] = [0, 0.0] + [0] * (len(self._bounds) + 1)
            tally[_COUNT] += 1
            tally[_SUM] += seconds
            tally[bucket] += 1

    def totals(self) -> dict[tuple[str, Code], list[Any]]:
        """A copy of the tallies, by (method, code)."""
        with self._lock:
            return {key: list(tally) for key, tally in self._tallies.items()}

    def collect(self) -> Iterable[Any]:
        requests = CounterMetricFamily(
            "improv_store_requests", "RPCs finished, by method and status code",
            labels=("method", "code"),
        )
        latency = HistogramMetricFamily(
            "improv_store_request_seconds", "RPC latency, from arrival to last response",
            labels=("method", "code"),
        )
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        totals = self.totals()
        for method, code in sorted(totals, key=lambda key: (key[0], key[1].name)):
            tally = totals[(method, code)]
            labels = (method, code.name)
            requests.add_metric(labels, tally[_COUNT])
            cumulative = 0
            buckets = []
            for bound, count in zip(bounds, tally[_BUCKETS:], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(labels, buckets, tally[_SUM])
        yield requests
        yield latency


def _samples(metric: Histogram, suffix: str) -> Iterator[Any]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample


class _StoreCollector(Collector):
    def __init__(self, info: Callable[[], pb.InfoResponse], lag: Callable[[], int],
                 replication: Callable[[], pb.Replication] | None) -> None:
        self._info = info
        self._lag = lag
        self._replication = replication

    def collect(self) -> Iterable[Any]:
        info = self._info()
        arena = info.arena
        gauges = (
            ("improv_store_objects", "Objects stored", info.object_count),
            ("improv_store_bytes", "Sum of stored payload sizes", info.total_bytes),
            ("improv_store_arena_capacity_bytes", "Shared memory the arena may hold",
             arena.capacity),
            ("improv_store_arena_used_bytes", "Shared memory allocated to objects", arena.used),
            ("improv_store_arena_pinned_bytes",
             "Shared memory pinned by leases, creates and in-place readers",
             arena.pinned),
            ("improv_store_resident_objects", "Objects whose payload is in shared memory",
             arena.resident_objects),
            ("improv_store_sessions", "Open client sessions", arena.sessions),
            ("improv_store_subscribers", "Open Subscribe streams", info.subscriber_count),
            ("improv_store_subscriber_lag_events",
             "Events the furthest-behind subscriber has yet to receive", self._lag()),
            ("improv_store_last_sequence", "Sequence number of the latest change",
             info.last_sequence),
            ("improv_store_committed_sequence", "Latest sequence committed to disk",
             info.committed_sequence),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        yield CounterMetricFamily(
            "improv_store_evictions", "Objects evicted from shared memory", value=arena.evictions
        )
        if self._replication is not None:
            yield from _replication_metrics(self._replication())


def _replication_metrics(status: pb.Replication) -> Iterator[Any]:
    """A follower's lag behind its primary, and its resyncs."""
    gauges = (
        ("improv_store_replication_lag_events",
         "Events the primary issued that this follower has not applied", status.lag_events),
        ("improv_store_replication_lag_seconds",
         "Seconds since this follower was last caught up with its primary", status.lag_seconds),
        ("improv_store_replication_applied_sequence",
         "The primary's sequence of the last event applied here", status.applied_sequence),
        ("improv_store_replication_state",
         "ReplicationState: 1 connecting, 2 streaming, 3 resyncing (0 once promoted)",
         status.state),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(name, documentation, value=value)
    yield CounterMetricFamily("improv_store_replication_resyncs",
                              "Snapshot resyncs completed since start", value=status.resyncs)


class _MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC by method and final status code."""

    def __init__(self, metrics: StoreMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._timed(method, handler.unary_unary),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._timed(method, handler.stream_unary),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._timed_stream(method, handler.unary_stream),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._timed_stream(method, handler.stream_stream),
            handler.request_deserializer, handler.response_serializer)

    def _record(self, method: str, context: grpc.ServicerContext, started: float,
                failed: bool) -> None:
        status = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
        self._metrics.record(method, Code.of(status.value[0]), time.perf_counter() - started)

    def _timed(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self._record(method, context, started, failed)

        return timed

    def _timed_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            failed = True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                self._record(method, context, started, failed)

        return timed
