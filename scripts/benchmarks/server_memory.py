"""Server memory per stored object, then the restart time with those objects on disk.

Each store gets a fresh server: its RSS before and after ``--memory-objects``
puts of ``MEMORY_OBJECT_BYTES``, the store's own count of allocated bytes, and
the time a new server on the same data takes until it is ready.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

from benchmarks.harness import (
    COLOCATED,
    IMPROV,
    PLASMA,
    REDIS,
    memory_label,
    memory_rows,
    process_memory,
    progress,
    size_label,
)
from benchmarks.results import Results
from benchmarks.servers import (
    START_TIMEOUT,
    improv_client,
    no_retry,
    settle,
    start_improv,
    start_redis,
)

MEMORY_OBJECT_BYTES = 128


def restart_label(count: int, size: int) -> str:
    return f"restart with {count:,} objects of {size_label(size)}"


def bench_memory_improv(results: Results, workdir: Path, args: argparse.Namespace,
                        stack: contextlib.ExitStack) -> None:
    """A fresh server (--durability async): RSS before and after ``args.memory_objects``
    puts of 128 B through a colocated client (the lane), Info's arena bytes per object,
    then SIGTERM and the time a new server on the same data takes to be SERVING."""
    count, size = args.memory_objects, MEMORY_OBJECT_BYTES
    server = start_improv(workdir, "improv-mem", "async", args.memory, stack, poll=0.005)
    with contextlib.closing(improv_client(server, COLOCATED)) as client:
        lane = client.lane and os.path.exists(server.socket_path + ".lane")
        client.info()  # the lane connection (the session) is open before the first reading
        payload = os.urandom(size)
        before = process_memory(server.process.pid)
        first = client.put(payload)
        for _ in range(count - 1):
            client.put(payload)
        settle(client, timeout=300)
        after = process_memory(server.process.pid)
        info = client.info()
    if info.object_count != count:
        raise RuntimeError(f"improv-store holds {info.object_count} of {count} objects")
    rows = memory_rows(IMPROV, count, size, before, after, info.arena_used / count)
    rows[0]["lane"] = lane
    results.extend(rows)

    stopping = time.monotonic()
    server.stop()
    stopped_s = time.monotonic() - stopping
    if server.process.returncode != 0:
        raise RuntimeError(f"improv-store exited with {server.process.returncode} on SIGTERM:\n"
                           f"{server.log_tail()}")
    again = start_improv(workdir, "improv-mem2", "async", args.memory, stack,
                         data_dir=workdir / "improv-mem-data", poll=0.005)
    with contextlib.closing(improv_client(again, COLOCATED)) as client:
        recovered = client.info().object_count
        if recovered != count or bytes(client.get(first)) != payload:
            raise RuntimeError(f"after a restart improv-store holds {recovered} of {count}"
                               " objects, or the first one differs")
    again.stop()
    results.add(restart_label(count, size), "server", IMPROV, "restart_s", again.ready_s,
                until="health SERVING", stop_s=stopped_s, objects=recovered,
                empty_start_s=server.ready_s)


def bench_memory_redis(results: Results, workdir: Path, args: argparse.Namespace,
                       stack: contextlib.ExitStack) -> None:
    """A fresh redis-server: RSS and INFO used_memory before and after the same SETs
    (pipelined, 1,000 a round trip), then SAVE, SIGTERM and the time a new one takes
    to load the RDB (until DBSIZE counts every key)."""
    import redis

    count, size = args.memory_objects, MEMORY_OBJECT_BYTES
    server = start_redis(workdir, "redis-mem", False, stack, poll=0.005)
    payload = os.urandom(size)
    with contextlib.closing(redis.Redis(unix_socket_path=server.socket_path)) as client:
        used_before = client.info("memory")["used_memory"]
        before = process_memory(server.process.pid)
        for start in range(0, count, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + 1000, count)):
                pipe.set(b"obj:%07d" % i, payload)
            pipe.execute()
        after = process_memory(server.process.pid)
        used_after = client.info("memory")["used_memory"]
        if client.dbsize() != count:
            raise RuntimeError(f"redis holds {client.dbsize()} of {count} keys")
        client.save()
    results.extend(memory_rows(REDIS, count, size, before, after,
                               (used_after - used_before) / count))
    stopping = time.monotonic()
    server.stop()
    stopped_s = time.monotonic() - stopping
    started = time.monotonic()
    again = start_redis(workdir, "redis-mem2", False, stack, data_dir=workdir / "redis-mem-data",
                        poll=0.005)
    deadline = started + START_TIMEOUT
    with contextlib.closing(redis.Redis(unix_socket_path=again.socket_path,
                                        retry=no_retry())) as client:
        while True:
            with contextlib.suppress(redis.BusyLoadingError):
                if client.dbsize() == count:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis holds {client.dbsize()} of {count} keys after restart")
            time.sleep(0.005)
        ready_s = time.monotonic() - started
        if client.get(b"obj:%07d" % 0) != payload:
            raise RuntimeError("after a restart redis returned different bytes")
    again.stop()
    results.add(restart_label(count, size), "server", REDIS, "restart_s", ready_s,
                until="DBSIZE counts every key (RDB loaded)", stop_s=stopped_s, objects=count,
                empty_start_s=server.ready_s)


def run_server_memory(args: argparse.Namespace, workdir: Path, results: Results,
                      stack: contextlib.ExitStack, with_redis: bool) -> None:
    """improv-store's and Redis's memory and restart; Plasma's memory row comes from its worker."""
    label = memory_label(args.memory_objects, MEMORY_OBJECT_BYTES)
    progress(f"{IMPROV}: {label}, then restart")
    bench_memory_improv(results, workdir, args, stack)
    if with_redis:
        progress(f"{REDIS}: {label}, then restart")
        bench_memory_redis(results, workdir, args, stack)
    results.not_applicable(restart_label(args.memory_objects, MEMORY_OBJECT_BYTES), "server",
                           PLASMA, "restart_s", "plasma_store keeps objects in memory only")
