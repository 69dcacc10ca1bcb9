"""One client in this process, one call after another: put / get by size, batched, copy.

Transports: "unix" and "tcp" are improv-store with transfer="inline" and
Redis over its unix socket / TCP loopback; "colocated" is improv-store's
transfer="auto" (shared memory from ``SHM_MIN_SIZE``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from benchmarks.harness import (
    COLOCATED,
    IMPROV,
    NUMPY,
    PLASMA,
    REDIS,
    KiB,
    MiB,
    large_rows,
    ops_rows,
    progress,
    size_label,
    time_large,
    time_ops,
)
from benchmarks.results import Results
from benchmarks.servers import Peers, settle

SWEEP_SIZES = (64 * KiB, 16 * MiB)  # get-only; 128 B, 1 MiB and the large size are measured anyway
BATCH = 64  # objects per put_many / get_many call, and commands per Redis pipeline
BATCH_ITEM_BYTES = 128
SHM_MIN_SIZE = 64 * KiB  # improv-store's default: smaller payloads travel inline even colocated


def record_ops(results: Results, workload: str, transport: str, store: str,
               measured: dict[str, float]) -> None:
    results.extend(ops_rows(workload, transport, store, measured))


def same_payload(got: Any, payload: Any) -> bool:
    if isinstance(payload, np.ndarray):
        return isinstance(got, np.ndarray) and np.array_equal(got, payload)
    return bool(got == payload)


def _payload(store: str, transport: str, size: int) -> Any:
    """Random bytes; improv-store colocated from ``SHM_MIN_SIZE`` a uint8 array, so that
    its get is a zero-copy view (bytes would be copied out of shared memory)."""
    payload: Any = os.urandom(size)
    if store == IMPROV and transport == COLOCATED and size >= SHM_MIN_SIZE:
        payload = np.frombuffer(payload, dtype=np.uint8)
    return payload


def _time_get(results: Results, store: str, transport: str, client: Any, payload: Any,
              duration: float, warmup: float) -> None:
    """Store ``payload`` once, check it reads back, then time its get call after call."""
    label = size_label(len(payload))
    if store == IMPROV:
        object_id = client.put(payload)
        got = client.get(object_id)
        if not same_payload(got, payload):
            raise RuntimeError("improv-store returned different bytes")
        del got
        settle(client)
        record_ops(results, f"get {label}", transport, store,
                   time_ops(lambda _i: client.get(object_id), duration, warmup))
        client.delete(object_id)
        settle(client)
    else:
        client.set("get", payload)
        if client.get("get") != payload:
            raise RuntimeError("redis returned different bytes")
        record_ops(results, f"get {label}", transport, store,
                   time_ops(lambda _i: client.get("get"), duration, warmup))
        client.flushall()


def bench_small(results: Results, store: str, transport: str, client: Any, size: int,
                duration: float, warmup: float) -> None:
    """put and get of ``size``-byte objects, one client, one op at a time.

    Every object put is deleted again (untimed) before the get is timed.
    """
    payload = _payload(store, transport, size)
    label = size_label(size)
    if store == IMPROV:
        stored: list[Any] = []
        settle(client)
        record_ops(results, f"put {label}", transport, store,
                   time_ops(lambda _i: stored.append(client.put(payload)), duration, warmup))
        with ThreadPoolExecutor(4) as pool:  # untimed clean-up, so memory is reused
            list(pool.map(client.delete, stored))
    else:
        record_ops(results, f"put {label}", transport, store,
                   time_ops(lambda i: client.set(f"put:{i}", payload), duration, warmup))
        client.flushall()
    _time_get(results, store, transport, client, payload, duration, warmup)


def bench_get(results: Results, store: str, transport: str, client: Any, size: int,
              duration: float, warmup: float) -> None:
    """Only the get of one ``size``-byte object, one call after another (the size sweep)."""
    _time_get(results, store, transport, client, _payload(store, transport, size), duration,
              warmup)


def bench_large(results: Results, store: str, transport: str, client: Any, payload: Any,
                repeats: int) -> None:
    """One big object: put GB/s, get GB/s and ms; one warm-up, then the median of ``repeats``.

    Colocated (improv-store shared memory) the payload is a uint8 array and a
    get is a zero-copy view, so only its latency is reported, not GB/s.
    """
    nbytes = len(payload)
    if store == IMPROV:
        timed = time_large(lambda: client.put(payload), client.get, client.delete,
                           nbytes, repeats, settle=lambda: settle(client))
    else:
        def put() -> str:
            client.set("big", payload)
            return "big"

        timed = time_large(put, client.get, client.delete, nbytes, repeats)
    metrics = (("put GB_per_s", "get ms") if transport == COLOCATED
               else ("put GB_per_s", "get GB_per_s", "get ms"))
    results.extend(large_rows(size_label(nbytes), transport, store, nbytes, timed, metrics))


def batched_label(op: str, size: int, batch: int) -> str:
    return f"{op} {size_label(size)} batched ({batch}/call)"


def redis_set_pipelined(client: Any, prefix: str, payloads: list[bytes]) -> list[Any]:
    """SET ``prefix<j>`` for each payload, in one round trip (no MULTI)."""
    pipe = client.pipeline(transaction=False)
    for j, payload in enumerate(payloads):
        pipe.set(f"{prefix}{j}", payload)
    replies: list[Any] = pipe.execute()
    if not all(replies):
        raise RuntimeError("a pipelined redis SET failed")
    return replies


def record_batched(results: Results, workload: str, transport: str, store: str,
                   measured: dict[str, float], batch: int) -> None:
    """items/s = calls/s x ``batch``; the per-call p50 / p99 ride along in the row."""
    results.add(workload, transport, store, "items_per_s", measured["ops_per_s"] * batch,
                samples=measured["count"], per_call=batch, call_p50_us=measured["p50_us"],
                call_p99_us=measured["p99_us"])


def bench_batched(results: Results, store: str, transport: str, client: Any, size: int,
                  batch: int, duration: float, warmup: float) -> None:
    """put and get of ``batch`` ``size``-byte objects per call, one client.

    improv-store: put_many / get_many (one BatchPut / BatchGet each); Redis: a
    pipeline (transaction=False) of ``batch`` SETs / GETs per round trip. The
    objects put stay until the server stops (improv-store) or FLUSHALL (Redis).
    """
    payloads = [os.urandom(size) for _ in range(batch)]
    if store == IMPROV:
        settle(client)
        record_batched(results, batched_label("put", size, batch), transport, store,
                       time_ops(lambda _i: client.put_many(payloads), duration, warmup), batch)
        ids = client.put_many(payloads)
        if len(ids) != batch or client.get_many(ids) != payloads:
            raise RuntimeError("improv-store get_many returned different bytes")
        settle(client)
        record_batched(results, batched_label("get", size, batch), transport, store,
                       time_ops(lambda _i: client.get_many(ids), duration, warmup), batch)
        settle(client)
    else:
        record_batched(results, batched_label("put", size, batch), transport, store,
                       time_ops(lambda i: redis_set_pipelined(client, f"bput:{i}:", payloads),
                                duration, warmup), batch)
        client.flushall()
        redis_set_pipelined(client, "bget:", payloads)
        keys = [f"bget:{j}" for j in range(batch)]

        def get_pipelined(_i: int) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            replies: list[Any] = pipe.execute()
            return replies

        if get_pipelined(0) != payloads:
            raise RuntimeError("redis returned different bytes")
        record_batched(results, batched_label("get", size, batch), transport, store,
                       time_ops(get_pipelined, duration, warmup), batch)
        client.flushall()


def copy_label(nbytes: int) -> str:
    return f"reference: np.copyto {size_label(nbytes)} into warm memory"


def bench_copy(results: Results, nbytes: int, repeats: int) -> None:
    """The ceiling for a put that copies once: np.copyto into memory already touched."""
    source = np.random.default_rng().integers(0, 256, nbytes, dtype=np.uint8)
    target = np.ones(nbytes, dtype=np.uint8)  # every page touched: no page faults timed
    ns = time.perf_counter_ns
    times = []
    for attempt in range(max(repeats, 3) + 1):
        t0 = ns()
        np.copyto(target, source)
        elapsed = ns() - t0
        if attempt:
            times.append(elapsed)
    if not np.array_equal(target[-KiB:], source[-KiB:]):
        raise RuntimeError("np.copyto did not copy")
    gbps = [nbytes / t for t in times]
    results.add(copy_label(nbytes), "memory", NUMPY, "GB_per_s", statistics.median(gbps),
                samples=len(gbps), each=gbps)


def run_single(args: argparse.Namespace, results: Results, peers: Peers) -> None:
    """put / get of 128 B and 1 MiB, the get-only size sweep, and the large object."""
    duration, warmup = args.duration_per_case, args.warmup
    for size in (128, MiB):
        for transport in ("unix", "tcp"):
            for store in peers.stores:
                progress(f"{store} {transport}: put/get {size_label(size)}")
                with contextlib.closing(peers.connect(store, transport)) as client:
                    bench_small(results, store, transport, client, size, duration, warmup)
        progress(f"{IMPROV} {COLOCATED}: put/get {size_label(size)}")
        with contextlib.closing(peers.connect(IMPROV, COLOCATED)) as client:
            bench_small(results, IMPROV, COLOCATED, client, size, duration, warmup)

    for size in SWEEP_SIZES:  # get only: the latency-vs-size chart, with unix for reference
        for store, transport in [(IMPROV, "unix"), (IMPROV, COLOCATED),
                                 *([] if peers.redis is None else [(REDIS, "unix")])]:
            progress(f"{store} {transport}: get {size_label(size)}")
            with contextlib.closing(peers.connect(store, transport)) as client:
                bench_get(results, store, transport, client, size, duration, warmup)

    payload = os.urandom(args.large_mib * MiB)
    for transport in ("unix", "tcp"):
        for store in peers.stores:
            progress(f"{store} {transport}: put/get {size_label(len(payload))}")
            with contextlib.closing(peers.connect(store, transport)) as client:
                bench_large(results, store, transport, client, payload, args.repeats)
    progress(f"{IMPROV} {COLOCATED}: put/get {size_label(len(payload))}")
    with contextlib.closing(peers.connect(IMPROV, COLOCATED)) as client:
        bench_large(results, IMPROV, COLOCATED, client, np.frombuffer(payload, np.uint8),
                    args.repeats)


def run_batched(args: argparse.Namespace, results: Results, peers: Peers) -> None:
    """put_many / get_many vs Redis pipelines; last on these servers: the objects stay."""
    batched = [(store, transport) for transport in ("unix", "tcp") for store in peers.stores]
    for store, transport in [*batched, (IMPROV, COLOCATED)]:
        progress(f"{store} {transport}: put/get {BATCH} x {size_label(BATCH_ITEM_BYTES)}"
                 " batched")
        with contextlib.closing(peers.connect(store, transport)) as client:
            bench_batched(results, store, transport, client, BATCH_ITEM_BYTES, BATCH,
                          args.duration_per_case, args.warmup)
    for op in ("put", "get"):
        results.not_applicable(batched_label(op, BATCH_ITEM_BYTES, BATCH), COLOCATED, PLASMA,
                               "items_per_s", "not measured (batched rows: improv-store vs"
                               " Redis only)")


def run_copy(args: argparse.Namespace, results: Results) -> None:
    """The reference row: one np.copyto of the large size in this process."""
    progress(f"reference: np.copyto {size_label(args.large_mib * MiB)}")
    bench_copy(results, args.large_mib * MiB, args.repeats)
