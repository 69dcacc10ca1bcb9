"""The Plasma side of scripts/bench, and the timing code it shares with scripts/bench.

Apache Arrow Plasma was removed after pyarrow 11, which needs numpy < 2, while
the project's venv has numpy 2. So scripts/bench runs the Plasma workloads in a
subprocess, under ``.venv-plasma/bin/python`` (made by scripts/bench-setup):

    .venv-plasma/bin/python scripts/bench_plasma_worker.py --socket /tmp/x/plasma.sock

against a ``plasma_store`` that scripts/bench started, and reads the JSON this
prints on stdout: ``{"versions": {...}, "rows": [{"workload", "transport",
"store", "metric", "value", ...}, ...]}``. Progress goes to stderr.

scripts/bench imports this module too (stdlib and numpy only at import time;
each store's client is imported when it is first used), so every store is
timed by the same functions: ``time_ops`` (one call after another),
``time_large`` (one big object, median of repeats), ``handoff`` (a frame
put in one process and read in another) and ``fanout`` (a put announced to
subscribers in other processes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import select
import signal
import statistics
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

KiB = 1 << 10
MiB = 1 << 20
PLASMA = "plasma"
COLOCATED = "colocated"
HANDOFF_TIMEOUT = 300.0
FANOUT_TIMEOUT = 120.0


# -- timing ----------------------------------------------------------------------------------



def collect_reports(procs: list, out: Any, timeout: float) -> list:
    """One report per started process from ``out``; then join them, killing stragglers."""
    try:
        reports = [out.get(timeout=timeout) for _ in procs]
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return reports

def percentile(sorted_ns: list[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    index = min(len(sorted_ns) - 1, max(0, round(fraction * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1e3


def time_ops(op: Callable[[int], object], duration: float, warmup: float) -> dict[str, float]:
    """Call ``op(i)`` back to back: ``warmup`` s unrecorded, then ``duration`` s, each op timed."""
    ns = time.perf_counter_ns
    i = 0
    warm_end = ns() + int(warmup * 1e9)
    while ns() < warm_end:
        op(i)
        i += 1
    samples: list[int] = []
    start = ns()
    end = start + int(duration * 1e9)
    now = start
    while now < end:
        t0 = ns()
        op(i)
        now = ns()
        samples.append(now - t0)
        i += 1
    elapsed = now - start
    samples.sort()
    return {
        "ops_per_s": len(samples) / (elapsed / 1e9),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "count": len(samples),
    }


def ops_rows(workload: str, transport: str, store: str,
             measured: dict[str, float]) -> list[dict[str, Any]]:
    """Result rows (ops/s, p50, p99) of one ``time_ops`` case."""
    return [{"workload": workload, "transport": transport, "store": store, "metric": metric,
             "value": measured[metric], "samples": measured["count"]}
            for metric in ("ops_per_s", "p50_us", "p99_us")]


def time_large(put: Callable[[], Any], get: Callable[[Any], Any], delete: Callable[[Any], None],
               nbytes: int, repeats: int,
               settle: Callable[[], None] = lambda: None) -> dict[str, list[int]]:
    """Nanoseconds of ``repeats`` puts and gets of one ``nbytes`` object, after one warm-up each.

    Each put is deleted again before the next; the gets all read one object.
    ``settle()`` runs (untimed) before every timed call, so each starts from a
    quiet store (improv-store: its background commits have caught up).
    """
    ns = time.perf_counter_ns
    put_ns = []
    for attempt in range(repeats + 1):
        settle()
        t0 = ns()
        ref = put()
        elapsed = ns() - t0
        delete(ref)
        if attempt:
            put_ns.append(elapsed)
    ref = put()
    get_ns = []
    for attempt in range(repeats + 1):
        settle()
        t0 = ns()
        data = get(ref)
        elapsed = ns() - t0
        if len(data) != nbytes:
            raise RuntimeError(f"got {len(data)} of {nbytes} bytes")
        del data
        if attempt:
            get_ns.append(elapsed)
    delete(ref)
    settle()
    return {"put_ns": put_ns, "get_ns": get_ns}


def large_rows(label: str, transport: str, store: str, nbytes: int, timed: dict[str, list[int]],
               metrics: tuple[str, ...] = ("put GB_per_s", "get GB_per_s", "get ms"),
               ) -> list[dict[str, Any]]:
    """Result rows of one ``time_large`` case: medians, with every sample kept."""
    rows = []
    for item in metrics:
        op, metric = item.split()
        times = timed[f"{op}_ns"]
        if metric == "GB_per_s":
            each = [nbytes / t for t in times]  # bytes per ns == GB/s
        else:
            metric = "ms"
            each = [t / 1e6 for t in times]
        rows.append({"workload": f"{op} {label}", "transport": transport, "store": store,
                     "metric": metric, "value": statistics.median(each),
                     "samples": len(each), "each": each})
    return rows


# -- frame handoff between two processes -----------------------------------------------------


class Backend:
    """One process's connection to a store, as the handoff uses it: put, get, delete a frame.

    ``put`` returns a small picklable reference that the other process's
    ``get`` accepts. Kinds: ``improv-shm`` (StoreClient, transfer="auto"),
    ``improv-inline`` (transfer="inline"), ``redis`` (a key), ``plasma``.
    """

    def __init__(self, kind: str, address: str) -> None:
        self.kind = kind
        self._count = 0
        if kind.startswith("improv-"):
            from improv_store.client import StoreClient

            transfer = "auto" if kind == "improv-shm" else "inline"
            self.client: Any = StoreClient("unix://" + address, transfer=transfer)
            if kind == "improv-shm" and not self.client.colocated:
                raise RuntimeError("improv-store does not use shared memory for this client")
        elif kind == "redis":
            import redis

            self.client = redis.Redis(unix_socket_path=address)
        elif kind == PLASMA:
            self.plasma = import_plasma()
            self.client = self.plasma.connect(address)
        else:
            raise ValueError(f"unknown store kind {kind!r}")

    def put(self, frame: np.ndarray) -> bytes:
        if self.kind == "redis":
            self._count += 1
            key = b"frame:%d" % self._count
            self.client.set(key, memoryview(frame))
            return key
        return self.client.put(frame).binary()  # improv-store and Plasma ObjectIDs alike

    def get(self, ref: bytes) -> Any:
        if self.kind == PLASMA:
            return self.client.get(self.plasma.ObjectID(ref))
        return self.client.get(ref)

    def delete(self, ref: bytes) -> None:
        if self.kind == PLASMA:
            self.client.delete([self.plasma.ObjectID(ref)])
        else:
            self.client.delete(ref)

    def close(self) -> None:
        if self.kind == PLASMA:
            self.client.disconnect()
        else:
            self.client.close()


def import_plasma() -> Any:
    """``pyarrow.plasma``, without its deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyarrow.plasma as plasma
    return plasma


def _producer(kind: str, address: str, size: int, count: int, conn: Any, out: Any) -> None:
    """Put ``count`` frames one at a time; send (ref, index, t0) and wait for the ack."""
    try:
        backend = Backend(kind, address)
        frame = np.ones(size, dtype=np.uint8)  # touched: no page faults in the timed part
        if conn.recv() != "ready":
            raise RuntimeError("consumer did not start")
        ns = time.perf_counter_ns
        for i in range(count):
            frame[0] = frame[-1] = i & 0xFF  # each frame differs; the consumer checks
            t0 = ns()
            ref = backend.put(frame)
            conn.send((ref, i, t0))
            if conn.recv() != "ack":
                raise RuntimeError("consumer stopped")
            backend.delete(ref)  # untimed: the consumer has read it
        conn.send(None)
        backend.close()
        out.put(("producer", [], None))
    except BaseException as exc:  # report, do not hang the parent
        with contextlib.suppress(Exception):
            conn.send(None)
        out.put(("producer", [], f"{type(exc).__name__}: {exc}"))


def _consumer(kind: str, address: str, size: int, conn: Any, out: Any) -> None:
    """Get each frame by its ref, read its first and last byte, record now - t0."""
    try:
        backend = Backend(kind, address)
        conn.send("ready")
        ns = time.perf_counter_ns
        samples = []
        while (message := conn.recv()) is not None:
            ref, i, t0 = message
            frame = backend.get(ref)
            first, last = int(frame[0]), int(frame[-1])
            t1 = ns()
            if len(frame) != size or first != i & 0xFF or last != i & 0xFF:
                raise RuntimeError(f"frame {i} came back wrong ({len(frame)} bytes)")
            del frame
            samples.append(t1 - t0)
            conn.send("ack")
        backend.close()
        out.put(("consumer", samples, None))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send("stop")
        out.put(("consumer", [], f"{type(exc).__name__}: {exc}"))


def handoff(kind: str, address: str, size: int, frames: int, warmup: int) -> list[int]:
    """Latencies (ns) of ``frames`` handoffs: put in one process -> read in another.

    Two fresh processes (spawned: gRPC does not survive fork), one connection
    each. The producer takes a ``perf_counter_ns`` timestamp (CLOCK_MONOTONIC,
    the same clock in every process), puts a 1-byte-changed frame and sends
    the reference through a pipe; the consumer gets the frame, reads its first
    and last byte, and records the time since the timestamp. One frame at a
    time (the producer waits for an ack), so no queueing is measured. The
    first ``warmup`` frames are dropped.
    """
    ctx = multiprocessing.get_context("spawn")
    producer_end, consumer_end = ctx.Pipe()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_producer, daemon=True,
                    args=(kind, address, size, warmup + frames, producer_end, out)),
        ctx.Process(target=_consumer, daemon=True,
                    args=(kind, address, size, consumer_end, out)),
    ]
    for proc in procs:
        proc.start()
    reports = dict((role, (samples, error)) for role, samples, error in
                   collect_reports(procs, out, HANDOFF_TIMEOUT))
    errors = [error for _, error in reports.values() if error]
    if errors:
        raise RuntimeError(f"{kind} handoff failed: {'; '.join(errors)}")
    samples = reports["consumer"][0][warmup:]
    if len(samples) != frames:
        raise RuntimeError(f"{kind} handoff: {len(samples)} of {frames} frames arrived")
    return samples


def handoff_rows(label: str, transport: str, store: str,
                 samples: list[int]) -> list[dict[str, Any]]:
    ordered = sorted(samples)
    return [{"workload": label, "transport": transport, "store": store, "metric": metric,
             "value": percentile(ordered, fraction), "samples": len(ordered)}
            for metric, fraction in (("p50_us", 0.50), ("p99_us", 0.99))]


# -- put -> event in other processes (subscribe) ---------------------------------------------

SUB_PREFIX = "benchsub/"
SUB_CHANNEL = "benchsub"
SUB_PAYLOAD_BYTES = 64
SUB_GRACE = 5.0  # seconds a subscriber waits for late events after the last put
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


def handoff_label(size: int) -> str:
    return f"handoff {size_label(size)} to another process"


def size_label(size: int) -> str:
    if size >= MiB:
        return f"{size // MiB} MiB"
    if size >= KiB:
        return f"{size // KiB} KiB"
    return f"{size} B"


# -- the Plasma workloads ----------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def plasma_small(client: Any, size: int, duration: float, warmup: float) -> list[dict[str, Any]]:
    """put and get of ``size``-byte objects, one call each: bytes below 64 KiB, else an array."""
    raw = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    payload: Any = raw.tobytes() if size < 64 * KiB else raw
    label = size_label(size)
    stored: list[Any] = []
    rows = ops_rows(f"put {label}", COLOCATED, PLASMA,
                    time_ops(lambda _i: stored.append(client.put(payload)), duration, warmup))
    client.delete(stored)
    object_id = client.put(payload)
    got = client.get(object_id)
    if (got != payload) if size < 64 * KiB else not np.array_equal(got, payload):
        raise RuntimeError("plasma returned different bytes")
    del got
    rows += ops_rows(f"get {label}", COLOCATED, PLASMA,
                     time_ops(lambda _i: client.get(object_id), duration, warmup))
    client.delete([object_id])
    return rows


def plasma_large(client: Any, size: int, repeats: int) -> list[dict[str, Any]]:
    """One ``size``-byte numpy array: client.put(arr); client.get(oid) is a zero-copy view."""
    array = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    timed = time_large(lambda: client.put(array), client.get,
                       lambda object_id: client.delete([object_id]), size, repeats)
    return large_rows(size_label(size), COLOCATED, PLASMA, size, timed,
                      ("put GB_per_s", "get ms"))


def plasma_get(client: Any, size: int, duration: float, warmup: float) -> list[dict[str, Any]]:
    """Only the get of one ``size``-byte object (the latency-vs-size sweep): bytes below
    64 KiB, else an array (a zero-copy view)."""
    raw = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    payload: Any = raw.tobytes() if size < 64 * KiB else raw
    object_id = client.put(payload)
    got = client.get(object_id)
    if len(got) != size:
        raise RuntimeError("plasma returned a different size")
    del got
    rows = ops_rows(f"get {size_label(size)}", COLOCATED, PLASMA,
                    time_ops(lambda _i: client.get(object_id), duration, warmup))
    client.delete([object_id])
    return rows


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) of a process, in bytes."""
    memory = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                memory[key] = int(value.split()[0]) * KiB
    return memory


def memory_label(count: int, size: int) -> str:
    return f"server memory per {size_label(size)} object ({count:,} objects)"


def memory_rows(store: str, count: int, size: int, before: dict[str, int],
                after: dict[str, int], allocated: float | None) -> list[dict[str, Any]]:
    """RSS growth per object (with its parts) and the store's own allocation per object."""
    label = memory_label(count, size)
    parts = {f"{key}_per_object": (after[key] - before.get(key, 0)) / count
             for key in after if key != "VmRSS"}
    return [
        {"workload": label, "transport": "server", "store": store, "metric": "rss_B_per_obj",
         "value": (after["VmRSS"] - before["VmRSS"]) / count, "samples": count,
         "rss_before": before, "rss_after": after, **parts},
        {"workload": label, "transport": "server", "store": store,
         "metric": "alloc_B_per_obj", "value": allocated, "samples": count},
    ]


def plasma_allocated(client: Any) -> int | None:
    """plasma_store's "allocated bytes" (from its debug string)."""
    for line in client.debug_string().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "allocated bytes":
            return int(value)
    return None


def plasma_memory(client: Any, store_pid: int, count: int, size: int) -> list[dict[str, Any]]:
    """RSS of plasma_store before and after ``count`` raw puts of ``size`` bytes."""
    payload = os.urandom(size)
    before = process_memory(store_pid)
    allocated_before = plasma_allocated(client) or 0
    object_ids = [client.put_raw_buffer(payload) for _ in range(count)]
    after = process_memory(store_pid)
    allocated = plasma_allocated(client)
    stored = len(client.list())
    if stored < count:
        raise RuntimeError(f"plasma holds {stored} of {count} objects")
    rows = memory_rows(PLASMA, count, size, before, after,
                       None if allocated is None else (allocated - allocated_before) / count)
    for start in range(0, len(object_ids), 10_000):
        client.delete(object_ids[start:start + 10_000])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="the plasma_store's socket")
    parser.add_argument("--duration", type=float, default=3.0, help="timed seconds per ops case")
    parser.add_argument("--warmup", type=float, default=0.3, help="unrecorded seconds before")
    parser.add_argument("--small-sizes", default=f"128,{MiB}", help="comma-separated bytes")
    parser.add_argument("--large-bytes", type=int, default=100 * MiB)
    parser.add_argument("--repeats", type=int, default=3, help="timed large puts and gets")
    parser.add_argument("--frame-bytes", type=int, default=MiB, help="handoff frame size")
    parser.add_argument("--frames", type=int, default=300, help="timed handoffs")
    parser.add_argument("--handoff-warmup", type=int, default=20, help="untimed handoffs first")
    parser.add_argument("--get-sizes", default="",
                        help="comma-separated bytes: get-only cases (default none)")
    parser.add_argument("--subscribers", type=int, default=4,
                        help="subscriber processes of the subscribe case")
    parser.add_argument("--sub-events", type=int, default=0,
                        help="timed put -> notification events (default 0: no subscribe case)")
    parser.add_argument("--sub-warmup", type=int, default=20, help="untimed events first")
    parser.add_argument("--sub-rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--memory-objects", type=int, default=0,
                        help="objects put for the memory case (default 0: no memory case)")
    parser.add_argument("--memory-object-bytes", type=int, default=128)
    parser.add_argument("--store-pid", type=int, default=0,
                        help="plasma_store's PID, whose RSS the memory case reads")
    args = parser.parse_args()
    if args.memory_objects and not args.store_pid:
        parser.error("--memory-objects needs --store-pid")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)

    import pyarrow

    plasma = import_plasma()
    rows: list[dict[str, Any]] = []
    client = plasma.connect(args.socket)
    try:
        for size in (int(s) for s in args.small_sizes.split(",") if s):
            progress(f"plasma colocated: put/get {size_label(size)}")
            rows += plasma_small(client, size, args.duration, args.warmup)
        for size in (int(s) for s in args.get_sizes.split(",") if s):
            progress(f"plasma colocated: get {size_label(size)}")
            rows += plasma_get(client, size, args.duration, args.warmup)
        progress(f"plasma colocated: put/get {size_label(args.large_bytes)}")
        rows += plasma_large(client, args.large_bytes, args.repeats)
    finally:
        client.disconnect()
    progress(f"plasma: {handoff_label(args.frame_bytes)}, {args.frames} frames")
    samples = handoff(PLASMA, args.socket, args.frame_bytes, args.frames, args.handoff_warmup)
    rows += handoff_rows(handoff_label(args.frame_bytes), COLOCATED, PLASMA, samples)
    if args.sub_events:
        label = fanout_label(args.subscribers)
        progress(f"plasma: {label}, {args.sub_events} events")
        try:
            per_subscriber = fanout(PLASMA, args.socket, args.subscribers, args.sub_events,
                                    args.sub_warmup, args.sub_rate)
        except Exception as exc:  # the notification socket is optional: report it, go on
            progress(f"plasma: the subscribe case failed: {exc}")
            rows += [{"workload": label, "transport": COLOCATED, "store": PLASMA,
                      "metric": metric, "value": None,
                      "not_applicable": f"its notification socket failed: {exc}"}
                     for metric in ("p50_us", "p99_us")]
        else:
            rows += fanout_rows(label, COLOCATED, PLASMA, args.sub_events, per_subscriber)
    if args.memory_objects:
        progress(f"plasma: {memory_label(args.memory_objects, args.memory_object_bytes)}")
        client = plasma.connect(args.socket)
        try:
            rows += plasma_memory(client, args.store_pid, args.memory_objects,
                                  args.memory_object_bytes)
        finally:
            client.disconnect()
    versions = {"pyarrow": pyarrow.__version__, "numpy (plasma venv)": np.__version__,
                "python (plasma venv)": sys.version.split()[0]}
    json.dump({"versions": versions, "rows": rows}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
