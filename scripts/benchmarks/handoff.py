"""A frame put in one process and read in another: the handoff workload, for every store.

Run by scripts/bench (improv-store, Redis) and by the Plasma worker alike.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from typing import Any

import numpy as np

from benchmarks.backend import Backend
from benchmarks.harness import collect_reports, percentile, size_label

HANDOFF_TIMEOUT = 300.0


def handoff_label(size: int) -> str:
    return f"handoff {size_label(size)} to another process"


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
    reports = {role: (samples, error) for role, samples, error in
               collect_reports(procs, out, HANDOFF_TIMEOUT)}
    errors = [error for _, error in reports.values() if error]
    if errors:
        raise RuntimeError(f"{kind} handoff failed: {'; '.join(errors)}")
    samples = reports["consumer"][0][warmup:]
    if len(samples) != frames:
        raise RuntimeError(f"{kind} handoff: {len(samples)} of {frames} frames arrived")
    return samples


def handoff_rows(label: str, transport: str, store: str,
                 samples: list[int]) -> list[dict[str, Any]]:
    """The p50 and p99 rows (µs) of one handoff case."""
    ordered = sorted(samples)
    return [{"workload": label, "transport": transport, "store": store, "metric": metric,
             "value": percentile(ordered, fraction), "samples": len(ordered)}
            for metric, fraction in (("p50_us", 0.50), ("p99_us", 0.99))]
