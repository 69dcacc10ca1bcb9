"""A put announced to subscriber processes: the subscribe workload, for every store.

One publisher process puts small objects whose name (Plasma: ObjectID) carries
the put's timestamp; each subscriber process records the delay until the event
reaches it. Run by scripts/bench (improv-store, Redis) and by the Plasma worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import struct
import threading
import time
from typing import Any

from benchmarks.backend import Backend
from benchmarks.harness import PLASMA, collect_reports, percentile

FANOUT_TIMEOUT = 120.0
SUB_PREFIX = "benchsub/"
SUB_CHANNEL = "benchsub"
SUB_PAYLOAD_BYTES = 64
WARM, TIMED, STOP = 0, 1, 2
_PLASMA_ID = struct.Struct("<BIq7x")  # phase, index, t0: exactly 20 bytes, an ObjectID


def sub_name(phase: int, index: int, t0: int) -> str:
    """The announced name (improv-store object, Redis key): carries the put's timestamp."""
    return f"{SUB_PREFIX}{phase}/{index}/{t0}"


def parse_sub_name(name: str | bytes) -> tuple[int, int, int]:
    if isinstance(name, bytes):
        name = name.decode()
    phase, index, t0 = name[len(SUB_PREFIX):].split("/")
    return int(phase), int(index), int(t0)


class Publisher:
    """Puts small objects whose name (or Plasma ID) carries a phase, an index and t0."""

    def __init__(self, kind: str, address: str) -> None:
        self.backend = Backend(kind, address)
        self.kind = kind
        self.payload = os.urandom(SUB_PAYLOAD_BYTES)

    def publish(self, phase: int, index: int) -> None:
        client = self.backend.client
        t0 = time.perf_counter_ns()
        if self.kind == PLASMA:
            object_id = self.backend.plasma.ObjectID(_PLASMA_ID.pack(phase, index, t0))
            client.put_raw_buffer(self.payload, object_id=object_id)
        elif self.kind == "redis":  # SET + PUBLISH of the key, one round trip
            key = sub_name(phase, index, t0)
            pipe = client.pipeline(transaction=False)
            pipe.set(key, self.payload)
            pipe.publish(SUB_CHANNEL, key)
            pipe.execute()
        else:
            client.put(self.payload, sub_name(phase, index, t0))

    def close(self) -> None:
        self.backend.close()


class Subscriber:
    """One process's subscription: ``events()`` yields (phase, index, t0, received_ns)."""

    def __init__(self, kind: str, address: str) -> None:
        self.kind = kind
        self.backend = Backend(kind, address)
        client = self.backend.client
        if kind == PLASMA:
            client.subscribe()
            self.socket = client.get_notification_socket()
        elif kind == "redis":
            self.pubsub = client.pubsub(ignore_subscribe_messages=True)
            self.pubsub.subscribe(SUB_CHANNEL)
        else:
            self.subscription = client.subscribe(SUB_PREFIX)
        self.closed = threading.Event()

    def events(self) -> Any:
        ns = time.perf_counter_ns
        if self.kind == PLASMA:
            client = self.backend.client
            while not self.closed.is_set():
                ready, _, _ = select.select([self.socket], [], [], 0.2)
                if not ready:
                    continue
                object_id, data_size, _ = client.get_next_notification()
                now = ns()
                if data_size >= 0:  # -1: a deletion
                    yield (*_PLASMA_ID.unpack(object_id.binary()), now)
        elif self.kind == "redis":
            while not self.closed.is_set():
                message = self.pubsub.get_message(timeout=0.2)
                if message is not None and message["type"] == "message":
                    yield (*parse_sub_name(message["data"]), ns())
        else:
            for event in self.subscription:
                now = ns()
                if event.type == "put":
                    yield (*parse_sub_name(event.object.name), now)

    def close(self) -> None:
        self.closed.set()
        if self.kind == "redis":
            self.pubsub.close()
        elif self.kind != PLASMA:
            self.subscription.close()


def _fanout_publisher(kind: str, address: str, events: int, warmup: int, rate: float,
                      subscribed: list[Any], warmed: list[Any], out: Any) -> None:
    """Wait for every subscriber; put warm-up objects until each has seen one (and at least
    ``warmup`` of them), then ``events`` timed ones, then a stop marker, at ``rate`` per s."""
    try:
        publisher = Publisher(kind, address)
        deadline = time.monotonic() + FANOUT_TIMEOUT / 2
        for ready in subscribed:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("a subscriber did not subscribe in time")
        interval = 1.0 / rate
        next_at = time.monotonic()

        def paced(phase: int, index: int) -> None:
            nonlocal next_at
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.publish(phase, index)
            next_at += interval

        sent = 0
        while sent < warmup or not all(seen.is_set() for seen in warmed):
            if time.monotonic() > deadline:
                raise RuntimeError("a subscriber saw no warm-up event in time")
            paced(WARM, sent)
            sent += 1
        for index in range(events):
            paced(TIMED, index)
        paced(STOP, 0)
        publisher.close()
        out.put(("publisher", -1, [], 0, None))
    except BaseException as exc:  # report, do not hang the parent
        out.put(("publisher", -1, [], 0, f"{type(exc).__name__}: {exc}"))


def _fanout_subscriber(kind: str, address: str, number: int, subscribed: Any, warmed: Any,
                       out: Any) -> None:
    """Receive in a thread; report latencies of the timed events and how many arrived."""
    try:
        subscriber = Subscriber(kind, address)
        samples: dict[int, int] = {}
        duplicates = 0
        stopped = threading.Event()
        failure: list[str] = []

        def receive() -> None:
            nonlocal duplicates
            try:
                for phase, index, t0, received in subscriber.events():
                    if phase == WARM:
                        warmed.set()
                    elif phase == TIMED:
                        if index in samples:
                            duplicates += 1
                        samples[index] = received - t0
                    else:
                        break
            except BaseException as exc:
                failure.append(f"{type(exc).__name__}: {exc}")
            stopped.set()

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        subscribed.set()
        stopped.wait(FANOUT_TIMEOUT)
        subscriber.close()
        thread.join(5)
        error = failure[0] if failure else None
        if not stopped.is_set() and error is None:
            error = f"no stop marker after {FANOUT_TIMEOUT} s"
        if duplicates and error is None:
            error = f"{duplicates} events delivered twice"
        out.put(("subscriber", number, [samples[i] for i in sorted(samples)],
                 len(samples), error))
    except BaseException as exc:  # let the publisher go on; the parent reports it
        with contextlib.suppress(Exception):
            subscribed.set()
            warmed.set()
        out.put(("subscriber", number, [], 0, f"{type(exc).__name__}: {exc}"))


def fanout(kind: str, address: str, subscribers: int, events: int, warmup: int,
           rate: float) -> list[dict[str, Any]]:
    """Put -> event latency in ``subscribers`` other processes, one entry per subscriber.

    One publisher process puts small objects at ``rate`` per second; the put's
    ``perf_counter_ns`` (CLOCK_MONOTONIC, the same clock in every process)
    travels in the object's name (Plasma: its ObjectID; Redis: the key, SET
    then PUBLISH of it). Each subscriber process records when it received
    the event minus that timestamp. Warm-up events go first, until every
    subscriber has received one. Each entry: ``samples`` (ns, in put order),
    ``received`` (timed events that arrived, of ``events``), ``error``.
    """
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    subscribed = [ctx.Event() for _ in range(subscribers)]
    warmed = [ctx.Event() for _ in range(subscribers)]
    procs = [ctx.Process(target=_fanout_subscriber, daemon=True,
                         args=(kind, address, n, subscribed[n], warmed[n], out))
             for n in range(subscribers)]
    procs.append(ctx.Process(target=_fanout_publisher, daemon=True,
                             args=(kind, address, events, warmup, rate, subscribed, warmed,
                                   out)))
    for proc in procs:
        proc.start()
    reports = collect_reports(procs, out, FANOUT_TIMEOUT + 60)
    errors = [error for role, _, _, _, error in reports if error and role == "publisher"]
    if errors:
        raise RuntimeError(f"{kind} publisher failed: {errors[0]}")
    return [{"subscriber": number, "samples": samples, "received": received, "error": error}
            for role, number, samples, received, error in sorted(reports, key=lambda r: r[1])
            if role == "subscriber"]


def fanout_label(subscribers: int) -> str:
    return f"subscribe: put -> event in {subscribers} other processes"


def fanout_rows(label: str, transport: str, store: str, events: int,
                per_subscriber: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worst subscriber's p50 and p99 (µs), with every subscriber's numbers kept."""
    p50s, p99s = [], []
    for entry in per_subscriber:
        ordered = sorted(entry["samples"])
        p50s.append(percentile(ordered, 0.50) if ordered else None)
        p99s.append(percentile(ordered, 0.99) if ordered else None)
    received = [entry["received"] for entry in per_subscriber]
    errors = [entry["error"] for entry in per_subscriber if entry["error"]]
    common = {"workload": label, "transport": transport, "store": store, "expected": events,
              "received": received, "errors": errors, "samples": sum(received)}
    rows = []
    for metric, each in (("p50_us", p50s), ("p99_us", p99s)):
        known = [value for value in each if value is not None]
        rows.append({**common, "metric": metric, "value": max(known) if known else None,
                     "each": each})
    return rows
