"""The scale section: what an object costs as the store grows to a million, against Redis 7.

For each count N (``--scale``) a fresh improv-store (--durability async) and
a fresh redis-server (appendonly yes, appendfsync everysec) get N objects of
``SCALE_OBJECT_BYTES`` named ``acq_NNNNNNN``, with ``PROBES`` objects named
``probe_NNNN`` spread evenly among them, put ``FILL_BATCH`` per call
(put_many through a colocated client vs pipelined SETs over the unix
socket). Then, side by side: server memory per object, batched put and get
rates (colocated and TCP), listing every object and a prefix that matches
``PROBES``, single put / get cost, fan-out to ``FANOUT_SUBSCRIBERS``
subscribers, restart (async, and a --durability sync server filled the same
way; Redis's AOF load), bulk delete (the probes by prefix, then everything
older than the middle of the fill), and put cost on a server that evicts
(improv-store --memory ``EVICTION_MEMORY`` vs Redis maxmemory allkeys-lru).
Each row carries ``objects`` (N) and, where a cost per object makes sense,
``us_per_object``: the chart's "cost per object against N" panel.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from benchmarks.harness import (
    COLOCATED,
    IMPROV,
    PLASMA,
    REDIS,
    MiB,
    collect_reports,
    percentile,
    process_memory,
    progress,
)
from benchmarks.results import Results
from benchmarks.servers import (
    Server,
    improv_client,
    no_retry,
    redis_client,
    settle,
    start_improv,
    start_redis,
)
from improv_store.client import StoreClient
from improv_store.client.errors import StoreError

SCALE_OBJECT_BYTES = 128
FILL_BATCH = 1000  # objects per put_many / get_many call, commands per Redis pipeline
PROBES = 1000  # probe_NNNN objects among the N: the prefix that matches 1,000 of N
TCP_OBJECTS = 100_000  # the timed TCP put (at most N), on a prefix of its own, then deleted
TIMED_OPS = 2000  # single puts / gets timed, and puts delivered to the subscribers
FANOUT_SUBSCRIBERS = 64  # one of them on a prefix that matches nothing
EVICTION_MEMORY = 64 * MiB
LIST_BUDGET_S = 180.0  # a listing still running after this stops: its time is a lower bound
FANOUT_TIMEOUT = 180.0
RESTART_TIMEOUT = 300.0  # a restart slower than this fails the run
COUNTS = "100000,1000000"
QUICK_COUNTS = "20000,100000"
WORKLOAD_PREFIX = "scale"
FILL = f"batched put {SCALE_OBJECT_BYTES} B ({FILL_BATCH}/call), filling"
TCP_DELETE = f"delete the min(N, {TCP_OBJECTS:,}) tcp_ by prefix"


def parse_counts(text: str) -> list[int]:
    """``--scale``'s comma-separated counts ("100000,1000000", "1e6" and "100k" too)."""
    counts = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        number = part[:-1] if scale > 1 else part
        counts.append(int(float(number) * scale))
    if not counts or min(counts) < 2 * PROBES:
        raise argparse.ArgumentTypeError(f"counts must be at least {2 * PROBES:,}: {text!r}")
    return sorted(set(counts))


def label(count: int, what: str) -> str:
    """A scale row's workload: the count first, so that each N's rows read together."""
    return f"{WORKLOAD_PREFIX} {count:,}: {what}"


def fill_names(count: int) -> list[str]:
    """``count`` names in put order: acq_NNNNNNN, with a probe_NNNN every count // PROBES."""
    step = count // PROBES
    names = []
    acq = probe = 0
    for position in range(count):
        if probe < PROBES and position % step == step - 1:
            names.append(f"probe_{probe:04d}")
            probe += 1
        else:
            names.append(f"acq_{acq:07d}")
            acq += 1
    return names


def batches(names: Sequence[str], size: int = FILL_BATCH) -> Iterator[Sequence[str]]:
    for start in range(0, len(names), size):
        yield names[start:start + size]


def is_unimplemented(exc: StoreError) -> bool:
    return exc.code == grpc.StatusCode.UNIMPLEMENTED


class Scale:
    """One count's servers, names and rows: improv-store and Redis measured in turns."""

    def __init__(self, args: argparse.Namespace, workdir: Path, results: Results,
                 stack: contextlib.ExitStack, count: int, with_redis: bool) -> None:
        self.args = args
        self.workdir = workdir
        self.results = results
        self.stack = stack
        self.count = count
        self.with_redis = with_redis
        self.payload = os.urandom(SCALE_OBJECT_BYTES)
        self.names = fill_names(count)
        # The first half of the fill (whole batches): what "older than a sequence" deletes.
        self.half = count // 2 // FILL_BATCH * FILL_BATCH
        self.half_sequence = 0  # improv-store's first sequence after the first half
        self.acq_names = [name for name in self.names if name.startswith("acq_")]
        self.tag = f"s{count}"
        self.dirs: list[Path] = []

    # -- rows ---------------------------------------------------------------------

    def add(self, what: str, transport: str, store: str, metric: str, value: float | None,
            per_object_us: float | None = None, **extra: Any) -> None:
        """A row; Redis's unix-socket numbers go on the colocated rows, as its best path on
        one machine (``via`` says so), so that they pair with improv-store's there."""
        if per_object_us is not None:
            extra["us_per_object"] = per_object_us
        if store == REDIS and transport == "unix":
            transport, extra["via"] = COLOCATED, "unix socket"
        self.results.add(label(self.count, what), transport, store, metric, value,
                         objects=self.count, **extra)

    def close_rows(self) -> None:
        """Plasma is not measured here (—, not "missing")."""
        label_prefix = label(self.count, "")
        keys = {(row["workload"], row["transport"], row["metric"]) for row in self.results.rows
                if row["workload"].startswith(label_prefix)}
        for workload, transport, metric in sorted(keys):
            if transport in (COLOCATED, "server"):
                self.results.not_applicable(workload, transport, PLASMA, metric,
                                            "not measured (scale rows: improv-store vs Redis)")

    def add_rate(self, what: str, transport: str, store: str, items: int, seconds: float,
                 **extra: Any) -> None:
        """items/s of ``items`` handled in ``seconds``, with the cost per object."""
        self.add(what, transport, store, "items_per_s", items / seconds,
                 per_object_us=seconds * 1e6 / items, items=items, seconds=seconds, **extra)

    # -- servers ------------------------------------------------------------------

    def improv(self, tag: str, durability: str, memory: int,
               data_dir: Path | None = None) -> Server:
        server = start_improv(self.workdir, tag, durability, memory, self.stack,
                              data_dir=data_dir, poll=0.005)
        self.dirs.append(data_dir or self.workdir / f"{tag}-data")
        return server

    def redis(self, tag: str, data_dir: Path | None = None) -> Server:
        server = start_redis(self.workdir, tag, True, self.stack, data_dir=data_dir, poll=0.005,
                             appendfsync="everysec")
        self.dirs.append(data_dir or self.workdir / f"{tag}-data")
        return server

    def remove_data(self) -> None:
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)

    # -- filling ------------------------------------------------------------------

    def fill_improv(self, client: StoreClient, names: Sequence[str],
                    mark_half: bool = False) -> float:
        """put_many ``FILL_BATCH`` at a time; the seconds it took. ``mark_half``: note the
        sequence after the first half (untimed)."""
        payloads = [self.payload] * FILL_BATCH
        elapsed = 0.0
        done = 0
        for chunk in batches(names):
            started = time.perf_counter()
            ids = client.put_many(payloads[:len(chunk)], chunk)
            elapsed += time.perf_counter() - started
            if len(ids) != len(chunk):
                raise RuntimeError(f"put_many stored {len(ids)} of {len(chunk)}")
            done += len(chunk)
            if mark_half and done == self.half:
                self.half_sequence = client.info().last_sequence + 1
        return elapsed

    def fill_redis(self, client: Any, names: Sequence[str]) -> float:
        """Pipelined SETs, ``FILL_BATCH`` per round trip; the seconds it took."""
        started = time.perf_counter()
        for chunk in batches(names):
            pipe = client.pipeline(transaction=False)
            for name in chunk:
                pipe.set(name, self.payload)
            if not all(pipe.execute()):
                raise RuntimeError("a pipelined redis SET failed")
        return time.perf_counter() - started

    # -- the steps ----------------------------------------------------------------

    def fill_and_memory(self, improv: Server, redis_server: Server | None) -> None:
        """Fill both stores; the fill's rate, and RSS growth per object after it."""
        count = self.count
        progress(f"{IMPROV}: scale fill of {count:,} objects (put_many of {FILL_BATCH})")
        with contextlib.closing(improv_client(improv, COLOCATED)) as client:
            client.info()  # the lane is open before the first reading
            settle(client)
            before = process_memory(improv.process.pid)
            seconds = self.fill_improv(client, self.names, mark_half=True)
            settle(client, timeout=600)
            after = process_memory(improv.process.pid)
            info = client.info()
        if info.object_count != count:
            raise RuntimeError(f"improv-store holds {info.object_count} of {count} objects")
        self.add_rate(FILL, COLOCATED, IMPROV, count, seconds)
        self.memory_rows(IMPROV, before, after, info.arena_used)
        if redis_server is None:
            return
        progress(f"{REDIS}: scale fill of {count:,} keys (pipelines of {FILL_BATCH})")
        with contextlib.closing(redis_client(redis_server.socket_path, 0, "unix")) as client:
            used_before = client.info("memory")["used_memory"]
            before = process_memory(redis_server.process.pid)
            seconds = self.fill_redis(client, self.names)
            after = process_memory(redis_server.process.pid)
            used_after = client.info("memory")["used_memory"]
            if client.dbsize() != count:
                raise RuntimeError(f"redis holds {client.dbsize()} of {count} keys")
        self.add_rate(FILL, "unix", REDIS, count, seconds)
        self.memory_rows(REDIS, before, after, used_after - used_before)

    def memory_rows(self, store: str, before: dict[str, int], after: dict[str, int],
                    allocated: int) -> None:
        parts = {f"{key}_per_object": (after[key] - before.get(key, 0)) / self.count
                 for key in after if key != "VmRSS"}
        what = f"server memory per {SCALE_OBJECT_BYTES} B object"
        self.add(what, "server", store, "rss_B_per_obj",
                 (after["VmRSS"] - before["VmRSS"]) / self.count, rss_before_fill=before,
                 rss_after_fill=after, **parts)
        self.add(what, "server", store, "alloc_B_per_obj", allocated / self.count)

    def get_rates(self, improv: Server, redis_server: Server | None) -> None:
        """get_many of ``FILL_BATCH`` names vs pipelined GETs, colocated/unix and TCP."""
        rng = random.Random(self.count)
        starts = [rng.randrange(0, len(self.acq_names) - FILL_BATCH) for _ in range(64)]
        groups = [self.acq_names[start:start + FILL_BATCH] for start in starts]
        duration = self.args.duration_per_case
        what = f"batched get {SCALE_OBJECT_BYTES} B ({FILL_BATCH}/call by name)"
        for transport in (COLOCATED, "tcp"):
            progress(f"{IMPROV} {transport}: scale get_many of {FILL_BATCH} names")
            with contextlib.closing(improv_client(improv, transport)) as client:
                if client.get_many(groups[0]) != [self.payload] * FILL_BATCH:
                    raise RuntimeError("improv-store get_many returned different bytes")
                settle(client)
                items, seconds = timed_batches(lambda i, c=client: c.get_many(groups[i % 64]),
                                               duration)
            self.add_rate(what, transport, IMPROV, items * FILL_BATCH, seconds)
            if redis_server is None:
                continue
            redis_transport = "unix" if transport == COLOCATED else "tcp"
            progress(f"{REDIS} {redis_transport}: scale pipelined GET of {FILL_BATCH} keys")
            with contextlib.closing(redis_client(redis_server.socket_path, redis_server.port,
                                                 redis_transport)) as client:
                def get(i: int, c: Any = client) -> list[Any]:
                    pipe = c.pipeline(transaction=False)
                    for name in groups[i % 64]:
                        pipe.get(name)
                    replies: list[Any] = pipe.execute()
                    return replies

                if get(0) != [self.payload] * FILL_BATCH:
                    raise RuntimeError("redis returned different bytes")
                items, seconds = timed_batches(get, duration)
            self.add_rate(what, redis_transport, REDIS, items * FILL_BATCH, seconds)

    def tcp_puts(self, improv: Server, redis_server: Server | None) -> None:
        """A timed put of min(N, ``TCP_OBJECTS``) objects over TCP on the prefix tcp_, then
        their deletion by prefix (one DeleteMatching vs SCAN MATCH + pipelined UNLINK)."""
        names = [f"tcp_{i:07d}" for i in range(min(self.count, TCP_OBJECTS))]
        what = f"batched put {SCALE_OBJECT_BYTES} B ({FILL_BATCH}/call) of min(N, {TCP_OBJECTS:,})"
        progress(f"{IMPROV} tcp: scale put_many of {len(names):,} objects")
        with contextlib.closing(improv_client(improv, "tcp")) as client:
            settle(client)
            seconds = self.fill_improv(client, names)
            settle(client, timeout=600)
        self.add_rate(what, "tcp", IMPROV, len(names), seconds)
        self.delete_prefix_improv(improv, "tcp_", names, TCP_DELETE)
        if redis_server is None:
            return
        progress(f"{REDIS} tcp: scale pipelined SET of {len(names):,} keys")
        with contextlib.closing(redis_client(redis_server.socket_path, redis_server.port,
                                             "tcp")) as client:
            seconds = self.fill_redis(client, names)
        self.add_rate(what, "tcp", REDIS, len(names), seconds)
        self.delete_prefix_redis(redis_server, "tcp_", len(names), TCP_DELETE)

    def list_all(self, improv: Server, redis_server: Server | None) -> None:
        """Every object: paging through list() (1,000 a page) vs SCAN COUNT 1000."""
        what = "list every object"
        progress(f"{IMPROV}: scale list of {self.count:,} objects (pages of {FILL_BATCH})")
        with contextlib.closing(improv_client(improv, COLOCATED)) as client:
            settle(client)
            listed = 0
            started = time.perf_counter()
            deadline = started + LIST_BUDGET_S
            for _ in client.list(page_size=FILL_BATCH):
                listed += 1
                if listed % FILL_BATCH == 0 and time.perf_counter() > deadline:
                    break
            seconds = time.perf_counter() - started
        complete = listed == self.count
        if not complete and (listed > self.count or seconds < LIST_BUDGET_S):
            raise RuntimeError(f"improv-store listed {listed} of {self.count} objects")
        extra = {} if complete else {"incomplete": f"stopped after {seconds:.0f} s with"
                                                   f" {listed:,} of {self.count:,} listed"}
        self.add(what, COLOCATED, IMPROV, "ms", seconds * 1e3,
                 per_object_us=seconds * 1e6 / max(listed, 1), listed=listed, **extra)
        if redis_server is None:
            return
        progress(f"{REDIS}: scale SCAN of {self.count:,} keys (COUNT {FILL_BATCH})")
        with contextlib.closing(redis_client(redis_server.socket_path, 0, "unix")) as client:
            started = time.perf_counter()
            keys = scan(client, None)
            seconds = time.perf_counter() - started
        if len(set(keys)) != self.count:
            raise RuntimeError(f"redis SCAN found {len(set(keys))} of {self.count} keys")
        self.add(what, "unix", REDIS, "ms", seconds * 1e3,
                 per_object_us=seconds * 1e6 / self.count, listed=len(keys))

    def list_prefix(self, improv: Server, redis_server: Server | None) -> None:
        """The prefix probe_, which matches ``PROBES`` of N: list(prefix) vs SCAN MATCH."""
        what = f"list a prefix matching {PROBES:,}"
        progress(f"{IMPROV}: scale list('probe_') among {self.count:,}")
        with contextlib.closing(improv_client(improv, COLOCATED)) as client:
            started = time.perf_counter()
            listed = sum(1 for _ in client.list("probe_", page_size=FILL_BATCH))
            seconds = time.perf_counter() - started
        if listed != PROBES:
            raise RuntimeError(f"improv-store listed {listed} of {PROBES} probe_ objects")
        self.add(what, COLOCATED, IMPROV, "ms", seconds * 1e3)
        if redis_server is None:
            return
        progress(f"{REDIS}: scale SCAN MATCH probe_* among {self.count:,}")
        with contextlib.closing(redis_client(redis_server.socket_path, 0, "unix")) as client:
            started = time.perf_counter()
            keys = set(scan(client, "probe_*"))
            seconds = time.perf_counter() - started
        if len(keys) != PROBES:
            raise RuntimeError(f"redis SCAN MATCH found {len(keys)} of {PROBES} probe_ keys")
        self.add(what, "unix", REDIS, "ms", seconds * 1e3)

    def single_ops(self, improv: Server, redis_server: Server | None) -> None:
        """``TIMED_OPS`` single puts (new names one_NNNNN, deleted after) and gets by name."""
        rng = random.Random(-self.count)
        picked = rng.sample(self.acq_names, TIMED_OPS)
        fresh = [f"one_{i:05d}" for i in range(TIMED_OPS)]
        payload = self.payload
        progress(f"{IMPROV}: scale single put / get among {self.count:,}")
        with contextlib.closing(improv_client(improv, COLOCATED)) as client:
            settle(client)
            self.add_op("put", COLOCATED, IMPROV,
                        timed_each(lambda i: client.put(payload, fresh[i]), TIMED_OPS))
            settle(client)
            self.add_op("get by name", COLOCATED, IMPROV,
                        timed_each(lambda i: client.get(picked[i]), TIMED_OPS))
        self.delete_quietly(improv, "one_", fresh)
        if redis_server is None:
            return
        progress(f"{REDIS}: scale single SET / GET among {self.count:,}")
        with contextlib.closing(redis_client(redis_server.socket_path, 0, "unix")) as client:
            self.add_op("put", "unix", REDIS,
                        timed_each(lambda i: client.set(fresh[i], payload), TIMED_OPS))
            self.add_op("get by name", "unix", REDIS,
                        timed_each(lambda i: client.get(picked[i]), TIMED_OPS))
            for chunk in batches(fresh):
                client.unlink(*chunk)

    def add_op(self, op: str, transport: str, store: str, samples: list[int],
               what: str | None = None) -> None:
        """Mean µs of one call, with p50 / p99 beside it."""
        ordered = sorted(samples)
        mean = sum(samples) / len(samples) / 1e3
        self.add(what or f"single {op} {SCALE_OBJECT_BYTES} B", transport, store, "us_per_op",
                 mean, samples=len(samples), p50_us=percentile(ordered, 0.5),
                 p99_us=percentile(ordered, 0.99))

    def fan_out(self, improv: Server, redis_server: Server | None) -> None:
        """``TIMED_OPS`` puts delivered to ``FANOUT_SUBSCRIBERS`` subscribers in one other
        process (one subscribed to a prefix that matches nothing): ms from the first put
        until the last subscriber has its last event. Redis: keyspace notifications."""
        what = (f"{TIMED_OPS:,} puts delivered to {FANOUT_SUBSCRIBERS} subscribers"
                " (1 matching nothing)")
        names = [f"fan_{i:05d}" for i in range(TIMED_OPS)]
        progress(f"{IMPROV}: scale fan-out to {FANOUT_SUBSCRIBERS} subscribers")
        with contextlib.closing(improv_client(improv, COLOCATED)) as client:
            settle(client)
            measured = fan_out(IMPROV, improv.socket_path,
                               lambda i: client.put(self.payload, names[i]))
        self.add(what, COLOCATED, IMPROV, "ms", measured.pop("ms"), **measured)
        self.delete_quietly(improv, "fan_", names)
        if redis_server is None:
            return
        progress(f"{REDIS}: scale fan-out to {FANOUT_SUBSCRIBERS} keyspace subscribers")
        with contextlib.closing(redis_client(redis_server.socket_path, 0, "unix")) as client:
            client.config_set("notify-keyspace-events", "K$")
            try:
                measured = fan_out(REDIS, redis_server.socket_path,
                                   lambda i: client.set(names[i], self.payload))
            finally:
                client.config_set("notify-keyspace-events", "")
            for chunk in batches(names):
                client.unlink(*chunk)
        self.add(what, "unix", REDIS, "ms", measured.pop("ms"), **measured)

    def delete_quietly(self, server: Server, prefix: str, names: Sequence[str]) -> None:
        """Untimed clean-up: DeleteMatching, or one Delete per name on a server without it."""
        with contextlib.closing(improv_client(server, COLOCATED)) as client:
            try:
                client.delete_matching(prefix)
            except StoreError as exc:
                if not is_unimplemented(exc):
                    raise
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(client.delete, names))
            settle(client)

    def delete_prefix_improv(self, server: Server, prefix: str, names: Sequence[str],
                             what: str) -> None:
        """One DeleteMatching(prefix): items/s (a row without a value on a server that does
        not implement it, which then deletes them one by one, untimed)."""
        with contextlib.closing(improv_client(server, COLOCATED)) as client:
            settle(client)
            started = time.perf_counter()
            try:
                deleted = client.delete_matching(prefix)
            except StoreError as exc:
                if not is_unimplemented(exc):
                    raise
                self.add(what, COLOCATED, IMPROV, "items_per_s", None,
                         not_measured="DeleteMatching is not implemented by this server")
                self.delete_quietly(server, prefix, names)
                return
            seconds = time.perf_counter() - started
            settle(client, timeout=600)
        if deleted != len(names):
            raise RuntimeError(f"improv-store deleted {deleted} of {len(names)} {prefix} objects")
        self.add_rate(what, COLOCATED, IMPROV, deleted, seconds)

    def delete_prefix_redis(self, server: Server, prefix: str, expected: int,
                            what: str) -> None:
        """SCAN MATCH prefix* for the keys, then UNLINK pipelined ``FILL_BATCH`` at a time:
        items/s of both together."""
        with contextlib.closing(redis_client(server.socket_path, 0, "unix")) as client:
            started = time.perf_counter()
            keys = sorted(set(scan(client, prefix + "*")))
            unlink_pipelined(client, keys)
            seconds = time.perf_counter() - started
            left = len(scan(client, prefix + "*"))
        if len(keys) != expected or left:
            raise RuntimeError(f"redis unlinked {len(keys)} of {expected} {prefix} keys,"
                               f" {left} left")
        self.add_rate(what, "unix", REDIS, len(keys), seconds)

    def restart_improv(self, server: Server, durability: str, **extra: Any) -> Server:
        """SIGTERM, a new server on the same data dir (that of ``improv(f"{tag}-{durability}")``):
        seconds until SERVING and until the first get by name returns (both from the new
        process's start)."""
        stopping = time.monotonic()
        server.stop(timeout=300)
        stop_s = time.monotonic() - stopping
        if server.process.returncode != 0:
            raise RuntimeError(f"improv-store exited with {server.process.returncode} on"
                               f" SIGTERM:\n{server.log_tail()}")
        data_dir = self.workdir / f"{self.tag}-{durability}-data"
        again = start_improv(self.workdir, f"{self.tag}-{durability}-again", durability,
                             int(server.extra["memory"]), self.stack, data_dir=data_dir,
                             poll=0.005, timeout=RESTART_TIMEOUT)
        serving_at = time.monotonic()
        with contextlib.closing(improv_client(again, COLOCATED)) as client:
            if client.get(self.acq_names[0]) != self.payload:
                raise RuntimeError("after a restart improv-store returned different bytes")
            first_get_s = again.ready_s + time.monotonic() - serving_at
            recovered = client.info().object_count
        if recovered != self.count:
            raise RuntimeError(f"after a restart improv-store holds {recovered} of {self.count}")
        what = f"restart ({durability})"
        self.add(what, "server", IMPROV, "restart_s", again.ready_s,
                 per_object_us=again.ready_s * 1e6 / self.count, until="health SERVING",
                 stop_s=stop_s, objects_recovered=recovered, **extra)
        self.add(what, "server", IMPROV, "first_get_s", first_get_s,
                 until="the first get by name returned")
        return again

    def restart_redis(self, server: Server) -> Server:
        """SIGTERM, a new redis-server (appendonly yes) on the same dir: seconds until DBSIZE
        is N and it is not loading, and until the first GET returns."""
        import redis

        stopping = time.monotonic()
        server.stop(timeout=300)
        stop_s = time.monotonic() - stopping
        started = time.monotonic()
        again = start_redis(self.workdir, f"{self.tag}-redis-again", True, self.stack,
                            data_dir=self.workdir / f"{self.tag}-redis-data", poll=0.005,
                            appendfsync="everysec", timeout=RESTART_TIMEOUT)
        deadline = started + RESTART_TIMEOUT
        with contextlib.closing(redis.Redis(unix_socket_path=again.socket_path,
                                            retry=no_retry())) as client:
            while True:
                with contextlib.suppress(redis.BusyLoadingError):
                    if (client.dbsize() == self.count
                            and not client.info("persistence")["loading"]):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis holds {client.dbsize()} of {self.count} keys"
                                       " after a restart")
                time.sleep(0.005)
            ready_s = time.monotonic() - started
            if client.get(self.acq_names[0]) != self.payload:
                raise RuntimeError("after a restart redis returned different bytes")
            first_get_s = time.monotonic() - started
        for durability in ("async", "sync"):
            what = f"restart ({durability})"
            self.add(what, "server", REDIS, "restart_s", ready_s,
                     per_object_us=ready_s * 1e6 / self.count,
                     until="DBSIZE is N, not loading (AOF everysec; the same for both rows)",
                     stop_s=stop_s)
            self.add(what, "server", REDIS, "first_get_s", first_get_s,
                     until="the first GET returned")
        return again

    def bulk_delete(self, improv: Server, redis_server: Server | None) -> None:
        """The probes by prefix, then everything older than the middle of the fill."""
        probes = [name for name in self.names if name.startswith("probe_")]
        self.delete_prefix_improv(improv, "probe_", probes, f"delete {PROBES:,} by prefix")
        older = [name for name in self.names[:self.half] if name.startswith("acq_")]
        what = "delete the older half (by sequence)"
        with contextlib.closing(improv_client(improv, COLOCATED)) as client:
            settle(client)
            started = time.perf_counter()
            try:
                deleted = client.delete_matching(before_sequence=self.half_sequence)
            except StoreError as exc:
                if not is_unimplemented(exc):
                    raise
                self.add(what, COLOCATED, IMPROV, "items_per_s", None,
                         not_measured="DeleteMatching is not implemented by this server")
            else:
                seconds = time.perf_counter() - started
                if deleted != len(older):
                    raise RuntimeError(f"improv-store deleted {deleted} of {len(older)}"
                                       f" objects before sequence {self.half_sequence}")
                self.add_rate(what, COLOCATED, IMPROV, deleted, seconds)
        if redis_server is None:
            return
        self.delete_prefix_redis(redis_server, "probe_", PROBES, f"delete {PROBES:,} by prefix")
        with contextlib.closing(redis_client(redis_server.socket_path, 0, "unix")) as client:
            started = time.perf_counter()
            unlinked = unlink_pipelined(client, older)
            seconds = time.perf_counter() - started
        if unlinked != len(older):
            raise RuntimeError(f"redis unlinked {unlinked} of {len(older)} keys")
        self.add_rate(what, "unix", REDIS, unlinked, seconds)

    def sync_restart(self) -> None:
        """A --durability sync server filled the same way, then its restart; the fill's
        rate rides on the restart row (Redis has no such fill to compare with)."""
        progress(f"{IMPROV} sync: scale fill of {self.count:,} objects, then restart")
        server = self.improv(f"{self.tag}-sync", "sync", self.args.memory)
        with contextlib.closing(improv_client(server, COLOCATED)) as client:
            seconds = self.fill_improv(client, self.names)
        self.restart_improv(server, "sync", fill_items_per_s=self.count / seconds).stop()

    def eviction(self) -> None:
        """Single-put cost on a store kept small: improv-store --memory ``EVICTION_MEMORY``
        vs redis-server maxmemory the same, allkeys-lru; each filled with the N first."""
        memory = EVICTION_MEMORY
        what = f"single put {SCALE_OBJECT_BYTES} B, evicting ({memory // MiB} MiB of memory)"
        fresh = [f"one_{i:05d}" for i in range(TIMED_OPS)]
        progress(f"{IMPROV}: scale fill of {self.count:,} with --memory {memory // MiB}M")
        server = self.improv(f"{self.tag}-evict", "async", memory)
        with contextlib.closing(improv_client(server, COLOCATED)) as client:
            self.fill_improv(client, self.names)
            settle(client, timeout=600)
            samples = timed_each(lambda i: client.put(self.payload, fresh[i]), TIMED_OPS)
            info = client.info()
        server.stop()
        self.add_op("put", COLOCATED, IMPROV, samples, what)
        self.results.rows[-1].update(evictions=info.evictions,
                                     resident_objects=info.resident_objects)
        if not self.with_redis:
            return
        progress(f"{REDIS}: scale fill of {self.count:,} with maxmemory {memory // MiB} MiB")
        server = start_redis(self.workdir, f"{self.tag}-redis-evict", False, self.stack,
                             poll=0.005)
        self.dirs.append(self.workdir / f"{self.tag}-redis-evict-data")
        with contextlib.closing(redis_client(server.socket_path, 0, "unix")) as client:
            client.config_set("maxmemory", str(memory))
            client.config_set("maxmemory-policy", "allkeys-lru")
            self.fill_redis(client, self.names)
            samples = timed_each(lambda i: client.set(fresh[i], self.payload), TIMED_OPS)
            evicted = client.info("stats")["evicted_keys"]
            kept = client.dbsize()
        server.stop()
        self.add_op("put", "unix", REDIS, samples, what)
        self.results.rows[-1].update(evictions=evicted, resident_objects=kept)

    def run(self) -> None:
        """Every step for this count, the servers stopped and their data removed at the end."""
        improv = self.improv(f"{self.tag}-async", "async", self.args.memory)
        redis_server = self.redis(f"{self.tag}-redis") if self.with_redis else None
        try:
            self.fill_and_memory(improv, redis_server)
            self.get_rates(improv, redis_server)
            self.tcp_puts(improv, redis_server)
            self.list_all(improv, redis_server)
            self.list_prefix(improv, redis_server)
            self.single_ops(improv, redis_server)
            self.fan_out(improv, redis_server)
            progress(f"{IMPROV}: scale restart (async) with {self.count:,} objects")
            improv = self.restart_improv(improv, "async")
            if redis_server is not None:
                progress(f"{REDIS}: scale restart (AOF) with {self.count:,} keys")
                redis_server = self.restart_redis(redis_server)
            self.bulk_delete(improv, redis_server)
            improv.stop()
            if redis_server is not None:
                redis_server.stop()
            self.sync_restart()
            self.eviction()
        finally:
            improv.stop()
            if redis_server is not None:
                redis_server.stop()
            self.remove_data()
        self.close_rows()


def timed_batches(op: Callable[[int], object], duration: float) -> tuple[int, float]:
    """Calls of ``op(i)`` back to back for ``duration`` s (after one untimed): how many,
    and the seconds they took."""
    op(0)
    calls = 0
    started = time.perf_counter()
    end = started + duration
    now = started
    while now < end:
        op(calls)
        calls += 1
        now = time.perf_counter()
    return calls, now - started


def timed_each(op: Callable[[int], object], count: int) -> list[int]:
    """Nanoseconds of each of ``count`` calls ``op(0)`` .. ``op(count - 1)``."""
    ns = time.perf_counter_ns
    samples = []
    for i in range(count):
        t0 = ns()
        op(i)
        samples.append(ns() - t0)
    return samples


def scan(client: Any, match: str | None) -> list[bytes]:
    """Every key SCAN returns (COUNT ``FILL_BATCH``) until the cursor is 0 again."""
    keys: list[bytes] = []
    cursor = 0
    while True:
        cursor, found = client.scan(cursor, match=match, count=FILL_BATCH)
        keys.extend(found)
        if cursor == 0:
            return keys


def unlink_pipelined(client: Any, keys: Sequence[Any]) -> int:
    """UNLINK each key, ``FILL_BATCH`` commands per pipeline; how many existed."""
    unlinked = 0
    for chunk in batches(keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.unlink(key)
        unlinked += sum(pipe.execute())
    return unlinked


def fan_out(store: str, socket_path: str, put: Callable[[int], object]) -> dict[str, Any]:
    """Start the subscribers' process, wait until all are subscribed, then ``put`` each of
    ``TIMED_OPS``: ms from the first put until every matching subscriber had them all."""
    ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork
    ready = ctx.Event()
    out = ctx.Queue()
    proc = ctx.Process(target=subscribers, args=(store, socket_path, ready, out), daemon=True)
    proc.start()
    if not ready.wait(FANOUT_TIMEOUT):
        proc.kill()
        raise RuntimeError(f"{store} subscribers did not subscribe in {FANOUT_TIMEOUT} s")
    started = time.perf_counter_ns()
    for i in range(TIMED_OPS):
        put(i)
    put_ns = time.perf_counter_ns() - started
    last_ns, counts, unmatched, error = collect_reports([proc], out, FANOUT_TIMEOUT + 60)[0]
    if error:
        raise RuntimeError(f"{store} subscriber failed: {error}")
    return {"ms": (max(last_ns) - started) / 1e6, "puts_ms": put_ns / 1e6,
            "per_event_us": (max(last_ns) - started) / 1e3 / TIMED_OPS,
            "received_min": min(counts), "unmatched_received": unmatched}


def subscribers(store: str, socket_path: str, ready: Any, out: Any) -> None:
    """The subscribers' process: ``FANOUT_SUBSCRIBERS`` - 1 threads following fan_ and one
    following a prefix that matches nothing; reports when each matching thread had its
    last event (perf_counter_ns), their counts, and the non-matching one's count."""
    try:
        follow = (follow_improv if store == IMPROV else follow_redis)(socket_path)
        prefixes = ["fan_"] * (FANOUT_SUBSCRIBERS - 1) + ["nomatch_"]
        streams = [follow(prefix) for prefix in prefixes]
        done = threading.Event()
        last_ns = [0] * len(streams)
        counts = [0] * len(streams)
        errors: list[str] = []

        def drain(index: int) -> None:
            try:
                for _ in streams[index][0]:
                    counts[index] += 1
                    if counts[index] == TIMED_OPS:
                        last_ns[index] = time.perf_counter_ns()
                        return
                    if done.is_set():
                        return
            except Exception as exc:  # reported to the parent, unless closed on purpose
                if not done.is_set():
                    errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=drain, args=(i,), daemon=True)
                   for i in range(len(streams))]
        for thread in threads:
            thread.start()
        ready.set()
        deadline = time.monotonic() + FANOUT_TIMEOUT
        for thread in threads[:-1]:
            thread.join(max(0.0, deadline - time.monotonic()))
        done.set()
        matched = counts[:-1]
        error = "; ".join(errors) or (None if min(matched) == TIMED_OPS else
                                      f"matching subscribers received {sorted(matched)} of"
                                      f" {TIMED_OPS} events")
        out.put((last_ns[:-1], matched, counts[-1], error))
        for _, close in streams:  # after the report: a close may wait for its reader
            with contextlib.suppress(Exception):
                close()
    except BaseException as exc:
        out.put(([0], [0], 0, f"{type(exc).__name__}: {exc}"))


def follow_improv(socket_path: str) -> Callable[[str], tuple[Iterator[Any], Callable[[], None]]]:
    """Subscriptions of one colocated client: put events only."""
    client = StoreClient("unix://" + socket_path, transfer="auto")

    def follow(prefix: str) -> tuple[Iterator[Any], Callable[[], None]]:
        subscription = client.subscribe(prefix)
        events = (event for event in subscription if event.type == "put")
        return events, subscription.close

    return follow


def follow_redis(socket_path: str) -> Callable[[str], tuple[Iterator[Any], Callable[[], None]]]:
    """PSUBSCRIBE to the keyspace notifications of keys under a prefix, one connection each.

    On a plain socket read by hiredis: redis-py's PubSub, read from 64 threads at once,
    lost a message now and then (redis-py 8)."""
    import hiredis

    def follow(prefix: str) -> tuple[Iterator[Any], Callable[[], None]]:
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(socket_path)
        connection.sendall(f"PSUBSCRIBE __keyspace@0__:{prefix}*\r\n".encode())
        reader = hiredis.Reader()
        confirmed = False
        while not confirmed:
            reader.feed(connection.recv(4096))
            while (reply := reader.gets()) is not False:
                confirmed = confirmed or reply[0] == b"psubscribe"

        def events() -> Iterator[Any]:
            while data := connection.recv(1 << 16):
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    if reply[0] == b"pmessage":
                        yield reply

        def close() -> None:
            connection.shutdown(socket.SHUT_RDWR)
            connection.close()

        return events(), close

    return follow


def run_scale(args: argparse.Namespace, workdir: Path, results: Results,
              stack: contextlib.ExitStack, with_redis: bool) -> None:
    """Every count of ``args.scale``, smallest first, each on servers of its own."""
    for count in args.scale:
        progress(f"scale: {count:,} objects")
        Scale(args, workdir, results, stack, count, with_redis).run()


def scale_settings() -> dict[str, Any]:
    """What the scale section does, for the JSON's settings."""
    return {"object_bytes": SCALE_OBJECT_BYTES, "batch": FILL_BATCH, "probes": PROBES,
            "tcp_objects": TCP_OBJECTS, "timed_ops": TIMED_OPS,
            "fanout_subscribers": FANOUT_SUBSCRIBERS, "eviction_memory": EVICTION_MEMORY,
            "list_budget_s": LIST_BUDGET_S,
            "improv": "--durability async (restart rows also sync), colocated client"
                      " (the lane) unless tcp",
            "redis": "appendonly yes, appendfsync everysec; unix socket unless tcp"}


def scale_legend() -> str:
    return (
        f"Scale rows (\"{WORKLOAD_PREFIX} N: ...\"): a fresh improv-store (--durability async)"
        " and a fresh redis-server (appendonly yes, appendfsync everysec) per N, each given"
        f" N objects of {SCALE_OBJECT_BYTES} B named acq_NNNNNNN, {PROBES:,} of them named"
        f" probe_NNNN spread evenly, {FILL_BATCH} per call (put_many through a colocated"
        f" client vs a pipeline of {FILL_BATCH} SETs over the unix socket); colocated rows"
        " compare with Redis's unix socket."
        " Memory: growth of the server's VmRSS / N after the fill (improv-store's includes"
        " the shared-memory arena's pages, populated 64 MiB at a time; parts below);"
        " allocated: improv-store arena used / N, Redis INFO used_memory growth / N."
        " Batched get: get_many of 1,000 names vs 1,000 pipelined GETs, for"
        " --duration-per-case s. The TCP put is"
        f" min(N, {TCP_OBJECTS:,}) more objects (prefix tcp_), deleted after by prefix"
        " (DeleteMatching vs SCAN MATCH + pipelined UNLINK, the SCAN timed too)."
        " List every object: paging through list() with pages of 1,000 vs SCAN COUNT 1000"
        f" until the cursor is 0 (stopped after {LIST_BUDGET_S:.0f} s: a lower bound, see"
        " below). Prefix: list('probe_') vs SCAN MATCH probe_* (which walks every key)."
        f" Single put / get: mean µs of {TIMED_OPS:,} calls (p50 / p99 in the JSON), gets by"
        f" name. Fan-out: {TIMED_OPS:,} single puts, {FANOUT_SUBSCRIBERS} subscribers in one"
        " other process (one on a prefix that matches nothing): ms from the first put until"
        " every matching subscriber had every event (Redis: SET with keyspace notifications,"
        " PSUBSCRIBE)."
        " Restart: SIGTERM, a new server on the same data: s from its start until health"
        " SERVING (Redis: DBSIZE is N and not loading; its AOF, the same number on the async"
        " and sync rows), first_get_s until the first get by name returned; the sync row's"
        " server was filled under --durability sync."
        f" Delete: DeleteMatching of the {PROBES:,} probes by prefix, then of everything"
        " older than the sequence at the middle of the fill, vs UNLINK pipelined 1,000 a"
        " round trip (the probes found by SCAN MATCH, timed too)."
        f" Evicting: a server of {EVICTION_MEMORY // MiB} MiB (improv-store --memory,"
        " Redis maxmemory allkeys-lru) filled with N, then single puts."
    )


def scale_details(results: Results) -> list[str]:
    """Lines under the table: how each cost grows from the smallest N to the largest, the
    memory's parts, and listings that were stopped."""
    names = {IMPROV: IMPROV, REDIS: "Redis"}
    rows = [row for row in results.rows
            if row["workload"].startswith(f"{WORKLOAD_PREFIX} ") and row["store"] in names
            and "objects" in row]
    if not rows:
        return []
    lines = []
    parts = [f"N={row['objects']:,} {names[row['store']]} "
             + " / ".join(f"{row.get(f'{key}_per_object', 0):,.0f}"
                          for key in ("RssAnon", "RssShmem", "RssFile"))
             for row in rows if row["metric"] == "rss_B_per_obj"]
    if parts:
        lines.append("Scale: RSS growth per object, anonymous / shared memory / file pages"
                     f" (bytes): {'; '.join(parts)}.")
    for row in rows:
        if "incomplete" in row:
            lines.append(f"Scale: {names[row['store']]} {row['workload']}: {row['incomplete']}"
                         " (the time is a lower bound).")
        if "not_measured" in row:
            lines.append(f"Scale: {names[row['store']]} {row['workload']}: not measured,"
                         f" {row['not_measured']}.")
    sync_fills = [f"N={row['objects']:,} {row['fill_items_per_s']:,.0f}/s"
                  for row in rows if "fill_items_per_s" in row]
    if sync_fills:
        lines.append(f"Scale: improv-store put_many under --durability sync (the server of the"
                     f" restart (sync) rows), items/s: {'; '.join(sync_fills)}.")
    evictions = [f"N={row['objects']:,} {names[row['store']]} {row['evictions']:,} evicted,"
                 f" {row['resident_objects']:,} resident"
                 for row in rows if "evictions" in row]
    if evictions:
        lines.append(f"Scale: the evicting servers after their puts: {'; '.join(evictions)}.")
    counts = sorted({row["objects"] for row in rows})
    if len(counts) > 1:
        small, large = counts[0], counts[-1]
        lines.append(f"Scale: growth from N={small:,} to N={large:,}, the value at the larger"
                     " N / at the smaller (and so for the cost per object, where there is one:"
                     " 1.00 = flat):")
        growth: dict[tuple[str, str, str], list[str]] = {}
        for row in rows:
            if row["objects"] != large or row.get("value") is None:
                continue
            what = row["workload"].split(": ", 1)[1]
            base = results.row(label(small, what), row["transport"], row["store"],
                               row["metric"])
            if base is None or not base.get("value"):
                continue
            text = f"{names[row['store']]} x{row['value'] / base['value']:.2f}"
            if row.get("us_per_object") and base.get("us_per_object"):
                text += f" (per object x{row['us_per_object'] / base['us_per_object']:.2f})"
            growth.setdefault((what, row["transport"], row["metric"]), []).append(text)
        lines.extend(f"  {what}, {transport}, {metric}: {'; '.join(texts)}"
                     for (what, transport, metric), texts in growth.items())
    return lines
