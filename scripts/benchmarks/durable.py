"""Durable puts from writer processes: improv-store --durability sync vs Redis appendfsync always.

1 and 4 writers, one put per call, in rounds with the stores taking turns
(each number the median round); then 4 writers storing ``BATCH`` objects per
call (put_many vs 64-SET pipelines).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
from pathlib import Path
from typing import Any

from benchmarks.calls import BATCH, redis_set_pipelined
from benchmarks.harness import (
    COLOCATED,
    IMPROV,
    PLASMA,
    REDIS,
    KiB,
    collect_reports,
    percentile,
    progress,
    size_label,
    time_loop,
)
from benchmarks.results import Results
from benchmarks.servers import Peers, start_improv, start_redis
from improv_store.client import StoreClient

DURABLE_BATCH_WRITERS = 4


def durable_writer(store: str, socket_path: str, size: int, warmup: float, duration: float,
                   barrier: Any, out: Any, worker: int, transport: str = "unix",
                   batch: int = 0) -> None:
    """One writer process: warm up, wait for the others, put for ``duration`` s, report.

    improv-store "unix": transfer="inline" (gRPC); "colocated": transfer="auto",
    whose unary calls take the local lane. ``batch`` > 0: each op stores
    ``batch`` objects in one round trip (improv-store put_many, Redis a
    pipeline of ``batch`` SETs); 0: one put / SET per op.
    """
    try:
        payload = os.urandom(size)
        payloads = [payload] * batch
        if store == IMPROV:
            transfer = "auto" if transport == COLOCATED else "inline"
            client: Any = StoreClient("unix://" + socket_path, transfer=transfer)
            if transport == COLOCATED and not client.colocated:
                raise RuntimeError("improv-store does not see this client as colocated")

            def op(i: int) -> object:
                if batch:
                    ids = client.put_many(payloads)
                    if len(ids) != batch:
                        raise RuntimeError(f"put_many stored {len(ids)} of {batch} objects")
                    return ids
                return client.put(payload)
        else:
            import redis

            client = redis.Redis(unix_socket_path=socket_path)

            def op(i: int) -> object:
                if batch:
                    return redis_set_pipelined(client, f"w{worker}:{i}:", payloads)
                return client.set(f"w{worker}:{i}", payload)
        samples, elapsed = time_loop(op, duration, warmup,
                                     lambda: barrier.wait(timeout=120))
        client.close()
        out.put((worker, len(samples), elapsed, samples, None))
    except BaseException as exc:  # report, do not hang the parent
        with contextlib.suppress(Exception):
            barrier.abort()
        out.put((worker, 0, 0, [], f"{type(exc).__name__}: {exc}"))


def durable_batched_label(size: int, batch: int, writers: int) -> str:
    return f"durable put {size_label(size)} batched ({batch}/call), {writers} writer processes"


def bench_durable(results: Results, store: str, socket_path: str, writers: int, size: int,
                  duration: float, warmup: float, transport: str = "unix",
                  batch: int = 0) -> None:
    """Aggregate puts/s from ``writers`` processes, each with its own client connection.

    ``batch`` > 0: each call stores ``batch`` objects (see durable_writer);
    the result is then items/s, with p50 / p99 of a whole call.
    """
    ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork
    barrier = ctx.Barrier(writers)
    out = ctx.Queue()
    procs = [ctx.Process(target=durable_writer,
                         args=(store, socket_path, size, warmup, duration, barrier, out, w,
                               transport, batch),
                         daemon=True)
             for w in range(writers)]
    for proc in procs:
        proc.start()
    reports = collect_reports(procs, out, duration + warmup + 120)
    errors = [error for *_, error in reports if error]
    if errors:
        raise RuntimeError(f"{store} durable writer failed: {errors[0]}")
    rate = sum(count / (elapsed / 1e9) for _, count, elapsed, _, _ in reports)
    samples = sorted(s for *_, worker_samples, _ in reports for s in worker_samples)
    count = len(samples)
    if batch:
        workload = durable_batched_label(size, batch, writers)
        results.add(workload, transport, store, "items_per_s", rate * batch, samples=count,
                    per_call=batch, call_p50_us=percentile(samples, 0.50),
                    call_p99_us=percentile(samples, 0.99))
        return
    workload = f"durable put {size_label(size)} x{writers} proc"
    results.add(workload, transport, store, "puts_per_s", rate, samples=count)
    results.add(workload, transport, store, "p50_us", percentile(samples, 0.50), samples=count)
    results.add(workload, transport, store, "p99_us", percentile(samples, 0.99), samples=count)


def median_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, transport, store, metric): the row of its median round
    (the lower one of an even count), with every round's value in ``rounds``."""
    by_key: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["workload"], row["transport"], row["store"], row["metric"])
        by_key.setdefault(key, []).append(row)
    merged = []
    for same in by_key.values():
        ordered = sorted(same, key=lambda row: row["value"])
        merged.append({**ordered[(len(ordered) - 1) // 2],
                       "rounds": [row["value"] for row in same]})
    return merged


def run_durable(args: argparse.Namespace, workdir: Path, results: Results,
                stack: contextlib.ExitStack, with_redis: bool) -> None:
    """A sync improv-store and an appendfsync-always redis-server of their own, then stopped."""
    duration, warmup = args.duration_per_case, args.warmup
    peers = Peers(start_improv(workdir, "improv-sync", "sync", args.memory, stack),
                  start_redis(workdir, "redis-aof", True, stack) if with_redis else None)
    for writers in (1, 4):
        # The stores take turns, round after round: one slow spell of the machine then
        # moves one round of each, not one store's only measurement.
        rounds = Results()
        for round_number in range(1, args.durable_rounds + 1):
            for store in peers.stores:
                progress(f"{store} durable: {writers} writer process(es),"
                         f" round {round_number}/{args.durable_rounds}")
                bench_durable(rounds, store, peers.server(store).socket_path, writers, KiB,
                              duration, warmup)
            progress(f"{IMPROV} durable {COLOCATED}: {writers} writer process(es),"
                     f" round {round_number}/{args.durable_rounds}")
            bench_durable(rounds, IMPROV, peers.improv.socket_path, writers, KiB, duration,
                          warmup, COLOCATED)
        results.extend(median_rounds(rounds.rows))
        for metric in ("puts_per_s", "p50_us", "p99_us"):
            results.not_applicable(f"durable put {size_label(KiB)} x{writers} proc", COLOCATED,
                                   PLASMA, metric, "plasma_store keeps objects in memory only")
    writers = DURABLE_BATCH_WRITERS
    for store, transport in [(IMPROV, "unix"), (IMPROV, COLOCATED),
                             *([] if peers.redis is None else [(REDIS, "unix")])]:
        progress(f"{store} durable {transport}: {writers} writer processes,"
                 f" {BATCH} x {size_label(KiB)} per call")
        bench_durable(results, store, peers.server(store).socket_path, writers, KiB, duration,
                      warmup, transport, batch=BATCH)
    results.not_applicable(durable_batched_label(KiB, BATCH, writers), COLOCATED, PLASMA,
                           "items_per_s", "plasma_store keeps objects in memory only")
    peers.stop()
