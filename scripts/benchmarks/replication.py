"""The replication section: a follower on another machine against a Redis replica, one link.

Two machines on one (scripts/netlab.py): network, IPC and /dev/shm namespaces
joined by a veth pair shaped to 1 Gbit/s with tbf. Machine a runs the
improv-store primary and the Redis master, machine b the improv-store follower
(``--follow``) and the Redis replica (``--replicaof``); the two stores take
turns. Measured, side by side:

- replication lag of ``FRAME_BYTES`` frames put at ``FRAME_HZ`` by a process in
  machine a (improv-store: colocated puts; Redis: SET + PUBLISH, pipelined), seen
  by a process in machine b subscribed on the follower (Redis: SUBSCRIBE on the
  replica, which gets the master's PUBLISH through replication): from the
  primary's event time (improv-store: the primary's Event.time; Redis: when the
  master answered the pipeline) until the event reached the reader, and until it
  had the frame in hand (improv-store: a colocated get, Redis: GET on the replica);
- a burst of ``BURST_OBJECTS`` objects of ``BURST_OBJECT_BYTES`` (put_many vs
  pipelined SETs): from the first put until the follower's last_sequence reached
  the primary's (Redis: the replica's offset reached the master's);
- catch-up after a backlog: the follower (the replica) stopped with SIGSTOP while
  the primary (the master) takes ``BACKLOG_BYTES`` in ``BACKLOG_OBJECT_BYTES``
  objects, then SIGCONT: bytes/s until caught up (Redis keeps the stream in its
  replica output buffer, unlimited here, so it too catches up without a resync);
- initial sync: a new follower (an empty data dir; a new replica: a full sync,
  diskless, without delay) of the primary holding that backlog, from its start;
- a reader in machine b getting a ``GET_BYTES`` object from the follower there
  (colocated: zero copy) against one reading the primary over the link (Redis: GET
  on the replica's unix socket vs GET on the master over TCP).

The processes in the machines are this module run with ``--worker SPEC`` (a JSON
spec); each prints "ready" when set up, then one JSON line with what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks.harness import COLOCATED, IMPROV, PLASMA, REDIS, KiB, MiB, percentile, progress
from benchmarks.results import Results
from benchmarks.servers import Server, no_retry, serving
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

SCRIPTS = Path(__file__).resolve().parent.parent
FRAME_BYTES = 512 * KiB
FRAME_HZ = 30.0
LAG_FRAMES = 300  # timed frames per store, split over LAG_ROUNDS rounds
LAG_ROUNDS = 2  # the stores take turns
LAG_WARMUP = 10  # untimed frames at the start of each round
BURST_OBJECTS = 10_000
BURST_OBJECT_BYTES = 128
BURST_BATCH = 1000  # Redis SETs per pipeline (improv-store: put_many of all, batched by it)
BURST_ROUNDS = 3
BACKLOG_BYTES = 1 << 30
BACKLOG_OBJECT_BYTES = MiB
BACKLOG_PIPELINE = 16  # Redis SETs of the backlog per pipeline
GET_BYTES = MiB
GETS = 300  # timed gets per reader
GET_WARMUP = 10
EVENT_RETENTION = 1_000_000  # far above the section's events: the backlog streams, no resync
SERVER_MEMORY = 2 << 30  # each improv-store; netlab's /dev/shm per machine is 4g
IMPROV_PORT = 50051
REDIS_PORT = 6379
LINK_RATE = "1gbit"
LINK = "link"  # the transport of rows whose data crosses the link
SYNC_TIMEOUT = 120.0
WORKER_TIMEOUT = 120.0
POLL = 0.002
WORKLOAD_PREFIX = "replication"


@dataclass(frozen=True)
class Sizes:
    """How much the section does: the defaults, or less with --quick."""

    lag_frames: int
    burst_rounds: int
    backlog: int
    gets: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Sizes:
        if args.quick:
            return cls(lag_frames=60, burst_rounds=1, backlog=256 * MiB, gets=50)
        return cls(LAG_FRAMES, BURST_ROUNDS, BACKLOG_BYTES, GETS)


def label(what: str) -> str:
    return f"{WORKLOAD_PREFIX}: {what}"


LAG_EVENT = label(f"lag of {FRAME_BYTES // KiB} KiB frames at {FRAME_HZ:g} Hz, to the event")
LAG_FRAME = label(f"lag of {FRAME_BYTES // KiB} KiB frames at {FRAME_HZ:g} Hz, to the frame")
BURST = label(f"burst of {BURST_OBJECTS:,} x {BURST_OBJECT_BYTES} B (put_many), until replicated")
CATCH_UP = label("catch-up after a {} backlog of 1 MiB objects")
INITIAL = label("initial sync of a new follower / replica, {} of 1 MiB objects")
GET = label(f"get {GET_BYTES // MiB} MiB on the follower's machine")


def size_text(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):g} GiB" if nbytes >= 1 << 30 else f"{nbytes // MiB} MiB"


# -- the workers: processes inside the machines ------------------------------------------


def emit(value: Any) -> None:
    """One line to the driver: "ready", or the JSON result."""
    sys.stdout.write((value if isinstance(value, str) else json.dumps(value)) + "\n")
    sys.stdout.flush()


def worker_lag_writer(spec: dict[str, Any]) -> dict[str, Any]:
    """Put ``count`` frames at ``hz``, each named PREFIX<index>_<put start ns>; the start and
    reply time of each (ns, time.time_ns: one clock for every namespace)."""
    import numpy as np

    frame = np.random.default_rng(1).integers(0, 256, spec["size"], dtype=np.uint8)
    count, period, prefix = spec["count"], 1.0 / spec["hz"], spec["prefix"]
    started, replied = [], []
    if spec["store"] == IMPROV:
        from improv_store.client import StoreClient

        client = StoreClient("unix://" + spec["socket"])
        if not client.colocated:
            raise RuntimeError("the writer is not colocated with the primary")

        def put(index: int, start: int) -> None:
            client.put(frame, f"{prefix}{index:05d}_{start}")
    else:
        import redis

        client = redis.Redis(unix_socket_path=spec["socket"])
        payload = frame.tobytes()

        def put(index: int, start: int) -> None:
            key = f"{prefix}{index:05d}_{start}"
            pipe = client.pipeline(transaction=False)
            pipe.set(key, payload)
            pipe.publish(prefix, key)
            pipe.execute()

    emit("ready")
    begin = time.monotonic()
    for index in range(count):
        delay = begin + index * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        start = time.time_ns()
        put(index, start)
        started.append(start)
        replied.append(time.time_ns())
    client.close()
    return {"started_ns": started, "replied_ns": replied}


def worker_lag_reader(spec: dict[str, Any]) -> dict[str, Any]:
    """Subscribe on the follower (replica), then for each of ``count`` events: when it came,
    and when its frame was in hand (first and last byte read)."""
    count, prefix = spec["count"], spec["prefix"]
    names, sequences, event_ns, frame_ns = [], [], [], []
    touched = 0  # the first and last byte of every frame, summed: each frame was read
    if spec["store"] == IMPROV:
        from improv_store.client import StoreClient

        client = StoreClient("unix://" + spec["socket"])
        if not client.colocated:
            raise RuntimeError("the reader is not colocated with the follower")
        with client, client.subscribe(prefix) as subscription:
            emit("ready")
            for event in subscription:
                seen = time.time_ns()
                frame = client.get(event.object.id)
                touched += int(frame[0]) + int(frame[-1])
                del frame
                frame_ns.append(time.time_ns())
                event_ns.append(seen)
                names.append(event.object.name)
                sequences.append(event.sequence)
                if len(names) == count:
                    break
    else:
        import redis

        client = redis.Redis(unix_socket_path=spec["socket"])
        pubsub = client.pubsub()
        pubsub.subscribe(prefix)
        while pubsub.get_message(timeout=5) is None:  # the subscribe confirmation
            pass
        emit("ready")
        while len(names) < count:
            message = pubsub.get_message(timeout=30)
            if message is None or message["type"] != "message":
                continue
            seen = time.time_ns()
            key = message["data"].decode()
            value: Any = client.get(key)
            if value is None:
                raise RuntimeError(f"the replica published {key} but does not hold it")
            touched += value[0] + value[-1]
            frame_ns.append(time.time_ns())
            event_ns.append(seen)
            names.append(key)
        pubsub.close()
        client.close()
    return {"names": names, "sequences": sequences, "event_ns": event_ns, "frame_ns": frame_ns,
            "touched": touched}


def worker_getter(spec: dict[str, Any]) -> dict[str, Any]:
    """``warmup`` then ``count`` gets of one object, each timed with its first and last byte
    read (ns)."""
    if spec["store"] == IMPROV:
        from improv_store.client import ObjectID, StoreClient

        client = StoreClient(spec["address"])
        if client.colocated != spec["colocated"]:
            raise RuntimeError(f"{spec['address']}: colocated is {client.colocated}")
        ref: Any = ObjectID.from_hex(spec["ref"])
    else:
        import redis

        if spec["address"].startswith("unix://"):
            client = redis.Redis(unix_socket_path=spec["address"].removeprefix("unix://"))
        else:
            host, port = spec["address"].rsplit(":", 1)
            client = redis.Redis(host=host, port=int(port))
        ref = spec["ref"]
    emit("ready")
    samples = []
    touched = 0  # the first and last byte of every get, summed: each value was read
    ns = time.perf_counter_ns
    for attempt in range(spec["warmup"] + spec["count"]):
        t0 = ns()
        value = client.get(ref)
        touched += int(value[0]) + int(value[-1])
        elapsed = ns() - t0
        if len(value) != spec["size"]:
            raise RuntimeError(f"got {len(value)} of {spec['size']} bytes")
        del value
        if attempt >= spec["warmup"]:
            samples.append(elapsed)
    client.close()
    return {"ns": samples, "touched": touched}


def worker_burst_writer(spec: dict[str, Any]) -> dict[str, Any]:
    """Put ``count`` objects of ``size`` bytes at once (put_many; Redis: pipelines of
    ``batch`` SETs); when it started and when the last put was answered (time.time_ns)."""
    payload = os.urandom(spec["size"])
    names = [f"{spec['prefix']}{i:05d}" for i in range(spec["count"])]
    if spec["store"] == IMPROV:
        from improv_store.client import StoreClient

        client = StoreClient("unix://" + spec["socket"])
        if not client.colocated:
            raise RuntimeError("the writer is not colocated with the primary")
        client.info()  # the lane is open before the clock starts
        emit("ready")
        started = time.time_ns()
        stored = len(client.put_many([payload] * len(names), names))
    else:
        import redis

        client = redis.Redis(unix_socket_path=spec["socket"])
        client.ping()
        emit("ready")
        started = time.time_ns()
        stored = 0
        for start in range(0, len(names), spec["batch"]):
            pipe = client.pipeline(transaction=False)
            for name in names[start:start + spec["batch"]]:
                pipe.set(name, payload)
            stored += sum(map(bool, pipe.execute()))
    done = time.time_ns()
    client.close()
    if stored != len(names):
        raise RuntimeError(f"stored {stored} of {len(names)}")
    return {"started_ns": started, "done_ns": done}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "burst_writer": worker_burst_writer,
    "lag_writer": worker_lag_writer,
    "lag_reader": worker_lag_reader,
    "getter": worker_getter,
}


# -- the driver's view of the servers ----------------------------------------------------


class Worker:
    """A worker process in a machine: wait for its "ready", then its result."""

    def __init__(self, machine: Any, spec: dict[str, Any], stack: contextlib.ExitStack) -> None:
        self.spec = spec
        self.process = machine.popen(
            [sys.executable, "-m", "benchmarks.replication", "--worker", json.dumps(spec)],
            cwd=SCRIPTS, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        stack.callback(self.stop)

    def line(self, timeout: float = WORKER_TIMEOUT) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        text = self.process.stdout.readline() if ready else ""
        if not text:
            what = f"worker {self.spec['mode']} ({self.spec['store']})"
            if ready:
                raise RuntimeError(f"{what} exited with {self.process.wait(30)}")
            self.stop()
            raise RuntimeError(f"{what} gave no answer within {timeout:g} s")
        return text.strip()

    def ready(self) -> None:
        if (text := self.line()) != "ready":
            raise RuntimeError(f"worker {self.spec['mode']}: {text}")

    def result(self, timeout: float = WORKER_TIMEOUT) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.line(timeout))
        self.process.wait(30)
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


class Peek:
    """Info of an improv-store over its unix socket, from this (the driver's) namespace."""

    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.insecure_channel("unix://" + socket_path)
        self.stub = store_pb2_grpc.StoreServiceStub(self.channel)

    def info(self) -> Any:
        return self.stub.Info(pb.InfoRequest(), timeout=10)

    def close(self) -> None:
        self.channel.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = SYNC_TIMEOUT,
             explain: Callable[[], str] = str) -> float:
    """Poll ``condition`` every ``POLL`` s; the time (time.time, the clock the workers in the
    machines share) when it held. After ``timeout`` s, raise with ``explain()``."""
    deadline = time.time() + timeout
    while True:
        if condition():
            return time.time()
        if time.time() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s. {explain()}")
        time.sleep(POLL)


def redis_replication(client: Any) -> dict[str, Any]:
    info: dict[str, Any] = client.info("replication")
    return info


class Replication:
    """The lab, the four servers and the rows: improv-store and Redis measured in turns."""

    def __init__(self, args: argparse.Namespace, workdir: Path, results: Results,
                 stack: contextlib.ExitStack, with_redis: bool) -> None:
        import netlab

        self.args = args
        self.results = results
        self.stack = stack
        self.with_redis = with_redis
        self.root = workdir / "replication"
        self.root.mkdir()
        stack.callback(shutil.rmtree, self.root, ignore_errors=True)
        sizes = Sizes.of(args)
        self.lag_frames, self.burst_rounds = sizes.lag_frames, sizes.burst_rounds
        self.backlog, self.gets = sizes.backlog, sizes.gets
        self.lab = netlab.Lab("isbench", rate=LINK_RATE)
        stack.callback(self.lab.close)
        self.a, self.b = self.lab.a, self.lab.b
        self.primary_address = f"{self.a.address}:{IMPROV_PORT}"
        self._primary_client: Any = None

    # -- servers --------------------------------------------------------------------

    def server(self, machine: Any, name: str, argv: list[str], store: str,
               ready: Callable[[], bool]) -> Server:
        """Start ``argv`` in ``machine``, stopped (SIGCONT first, in case it is stopped) on
        the stack; wait until ``ready()``."""
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            process = machine.popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        server = Server(store, process, str(self.root / f"{name}.sock"), 0, log_path)

        def stop() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
            server.stop()

        self.stack.callback(stop)
        started = time.monotonic()
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n"
                                   f"{server.log_tail()}")
            if time.monotonic() - started > 60:
                raise RuntimeError(f"{name} not ready after 60 s:\n{server.log_tail()}")
            time.sleep(0.02)
        server.ready_s = time.monotonic() - started
        return server

    def improv(self, machine: Any, name: str, follow: str | None = None) -> Server:
        socket_path = str(self.root / f"{name}.sock")
        argv = [sys.executable, "-m", "improv_store.service", "--socket", socket_path,
                "--data-dir", str(self.root / f"{name}-data"), "--durability", "async",
                "--memory", str(SERVER_MEMORY), "--event-retention", str(EVENT_RETENTION)]
        if follow is None:
            argv += ["--listen", f"{machine.address}:{IMPROV_PORT}", "--insecure"]
        else:
            argv += ["--listen", "", "--follow", follow]
        return self.server(machine, name, argv, IMPROV, lambda: serving(socket_path))

    def redis(self, machine: Any, name: str, master: str | None = None) -> Server:
        import redis

        socket_path = str(self.root / f"{name}.sock")
        data = self.root / f"{name}-data"
        data.mkdir()
        argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", machine.address,
                "127.0.0.1", "--protected-mode", "no", "--unixsocket", socket_path,
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                "--dir", str(data), "--logfile", "",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                "--client-output-buffer-limit", "replica 0 0 0"]
        if master is not None:
            host, port = master.rsplit(":", 1)
            argv += ["--replicaof", host, port]

        def ready() -> bool:
            try:
                with redis.Redis(unix_socket_path=socket_path, socket_timeout=1,
                                 retry=no_retry()) as probe:
                    if master is None:
                        return bool(probe.ping())
                    return bool(redis_replication(probe).get("master_link_status") == "up")
            except (redis.RedisError, OSError):
                return False

        return self.server(machine, name, argv, REDIS, ready)

    # -- rows -----------------------------------------------------------------------

    def add(self, workload: str, transport: str, store: str, metric: str, value: float | None,
            **extra: Any) -> None:
        self.results.add(workload, transport, store, metric, value, **extra)
        if transport == COLOCATED and store == IMPROV:
            self.results.not_applicable(workload, transport, PLASMA, metric,
                                        "not measured (replication rows: improv-store vs Redis)")

    def add_latency(self, workload: str, transport: str, store: str, samples_ns: list[int],
                    **extra: Any) -> None:
        samples = sorted(samples_ns)
        for metric, fraction in (("p50_us", 0.50), ("p99_us", 0.99)):
            self.add(workload, transport, store, metric, percentile(samples, fraction),
                     samples=len(samples), **extra)

    # -- the steps --------------------------------------------------------------------

    def run(self) -> None:
        progress(f"replication: lab {self.a.name} ({self.a.address}) and {self.b.name}"
                 f" ({self.b.address}), link {LINK_RATE}")
        self.primary = self.improv(self.a, "primary")
        self.follower = self.improv(self.b, "follower", follow=self.primary_address)
        self.peek_primary = Peek(self.primary.socket_path)
        self.peek_follower = Peek(self.follower.socket_path)
        self.stack.callback(self.peek_primary.close)
        self.stack.callback(self.peek_follower.close)
        if self.with_redis:
            self.master = self.redis(self.a, "master")
            self.replica = self.redis(self.b, "replica", f"{self.a.address}:{REDIS_PORT}")
            self.master_client = self.redis_client(self.master)
            self.replica_client = self.redis_client(self.replica)
        self.remote_gets()
        self.lag()
        self.burst()
        self.clear()
        free = shutil.disk_usage(self.root).free
        if free < 4 * self.backlog:  # the primary's, the follower's and the new follower's
            raise RuntimeError(f"{free / 1e9:.1f} GB free under {self.root}: the backlog"
                               f" needs {4 * self.backlog / 1e9:.1f}")
        self.catch_up()
        self.initial_sync()

    def redis_client(self, server: Server) -> Any:
        import redis

        client = redis.Redis(unix_socket_path=server.socket_path)
        self.stack.callback(client.close)
        return client

    def primary_client(self) -> Any:
        """The driver's client of the primary (made once): inline over its unix socket."""
        from improv_store.client import StoreClient

        if self._primary_client is None:
            self._primary_client = StoreClient("unix://" + self.primary.socket_path,
                                               transfer="inline")
            self.stack.callback(self._primary_client.close)
        return self._primary_client

    def wait_follower(self, target: int, what: str, follower: Server | None = None,
                      peek: Peek | None = None) -> float:
        """``wait_for`` the follower (or ``follower``, seen through ``peek``) to apply
        ``target``; a timeout's error has its replication state and log."""
        follower, peek = follower or self.follower, peek or self.peek_follower

        def explain() -> str:
            with contextlib.suppress(grpc.RpcError):
                status = peek.info().replication
                return (f"The follower at {status.applied_sequence} of {target}: state"
                        f" {pb.ReplicationState.Name(status.state)}, primary_sequence"
                        f" {status.primary_sequence}, last_error {status.last_error!r};"
                        f" its log ends:\n{follower.log_tail()}")
            return f"The follower does not answer; its log ends:\n{follower.log_tail()}"

        return wait_for(lambda: int(peek.info().last_sequence) >= target, what,
                        explain=explain)

    def replica_caught_up(self, target: int, client: Any = None) -> Callable[[], bool]:
        """Whether the replica (or the one ``client`` talks to) is linked and at ``target``."""
        def caught_up() -> bool:
            info = redis_replication(client or self.replica_client)
            return bool(info.get("master_link_status") == "up"
                        and info.get("slave_repl_offset", -1) >= target)
        return caught_up

    def master_offset(self) -> int:
        return int(redis_replication(self.master_client)["master_repl_offset"])

    def sync_improv(self) -> None:
        target = int(self.peek_primary.info().last_sequence)
        self.wait_follower(target, "the follower catching up")

    def sync_redis(self) -> None:
        wait_for(self.replica_caught_up(self.master_offset()), "the replica catching up")

    def remote_gets(self) -> None:
        """A reader in machine b: from the follower there (colocated) and from the primary
        over the link; Redis: the replica's unix socket and the master over TCP."""
        import numpy as np

        payload = np.random.default_rng(2).integers(0, 256, GET_BYTES, dtype=np.uint8)
        object_id = self.primary_client().put(payload, "get_frame")
        self.sync_improv()
        spec = {"mode": "getter", "store": IMPROV, "ref": object_id.hex(), "size": GET_BYTES,
                "count": self.gets, "warmup": GET_WARMUP}
        cases = [(LINK, self.primary_address, False),
                 (COLOCATED, "unix://" + self.follower.socket_path, True)]
        for transport, address, colocated in cases:
            progress(f"{IMPROV}: get {GET_BYTES // MiB} MiB in machine b via {address}")
            self.add_latency(GET, transport, IMPROV, self.getter(
                {**spec, "address": address, "colocated": colocated}), via=address)
        if not self.with_redis:
            return
        self.master_client.set("get_frame", payload.tobytes())
        self.sync_redis()
        spec = {**spec, "store": REDIS, "ref": "get_frame", "colocated": False}
        redis_cases = [(LINK, f"{self.a.address}:{REDIS_PORT}"),
                       (COLOCATED, "unix://" + self.replica.socket_path)]
        for transport, address in redis_cases:
            progress(f"{REDIS}: GET {GET_BYTES // MiB} MiB in machine b via {address}")
            self.add_latency(GET, transport, REDIS,
                             self.getter({**spec, "address": address}), via=address)

    def getter(self, spec: dict[str, Any]) -> list[int]:
        worker = Worker(self.b, spec, self.stack)
        worker.ready()
        samples: list[int] = worker.result()["ns"]
        return samples

    def lag(self) -> None:
        """Frames at ``FRAME_HZ`` from machine a, seen in machine b; the stores take turns."""
        per_round = self.lag_frames // LAG_ROUNDS
        lags: dict[str, dict[str, list[int]]] = {}
        for round_index in range(LAG_ROUNDS):
            for store in self.stores():
                progress(f"{store}: {per_round + LAG_WARMUP} frames of {FRAME_BYTES // KiB} KiB"
                         f" at {FRAME_HZ:g} Hz, round {round_index + 1} of {LAG_ROUNDS}")
                measured = self.lag_round(store, f"lag{round_index}_", per_round + LAG_WARMUP)
                for key, values in measured.items():
                    lags.setdefault(store, {}).setdefault(key, []).extend(values[LAG_WARMUP:])
        for store, measured in lags.items():
            extra = {"from_put_start_p50_us": percentile(sorted(measured["put_start"]), 0.5),
                     "from_put_start_p99_us": percentile(sorted(measured["put_start"]), 0.99)}
            self.add_latency(LAG_EVENT, LINK, store, measured["event"], **extra)
            self.add_latency(LAG_FRAME, LINK, store, measured["frame"])

    def lag_round(self, store: str, prefix: str, count: int) -> dict[str, list[int]]:
        """One round: the reader's delays (ns) from the primary's event time to the event and
        to the frame, and from the put's start to the event."""
        improv = store == IMPROV
        primary, follower = self.pair(store)
        first_sequence = int(self.peek_primary.info().last_sequence) + 1 if improv else 0
        spec = {"store": store, "prefix": prefix, "count": count}
        reader = Worker(self.b, {**spec, "mode": "lag_reader",
                                 "socket": follower.socket_path}, self.stack)
        reader.ready()
        writer = Worker(self.a, {**spec, "mode": "lag_writer", "socket": primary.socket_path,
                                 "size": FRAME_BYTES, "hz": FRAME_HZ}, self.stack)
        writer.ready()
        written = writer.result(WORKER_TIMEOUT + count / FRAME_HZ)
        seen = reader.result()
        indexes = [int(name[len(prefix):].split("_")[0]) for name in seen["names"]]
        if indexes != list(range(count)):
            raise RuntimeError(f"{store}: the reader saw frames {indexes[:10]}... of {count}")
        if improv:
            event_ns = self.primary_event_times(prefix, first_sequence, count)
            if seen["sequences"] != list(range(first_sequence, first_sequence + count)):
                raise RuntimeError(f"{IMPROV}: the follower's sequences differ from the primary's")
        else:
            event_ns = written["replied_ns"]
        return {
            "event": [s - e for s, e in zip(seen["event_ns"], event_ns, strict=True)],
            "frame": [s - e for s, e in zip(seen["frame_ns"], event_ns, strict=True)],
            "put_start": [s - e for s, e in zip(seen["event_ns"], written["started_ns"],
                                                strict=True)],
        }

    def primary_event_times(self, prefix: str, first_sequence: int, count: int) -> list[int]:
        """The primary's Event.time (ns) of ``count`` events from ``first_sequence``, replayed."""
        request = pb.SubscribeRequest(prefix=prefix, since_sequence=first_sequence)
        times = []
        stream = self.peek_primary.stub.Subscribe(request, timeout=60)
        for response in stream:
            times.append(response.event.time.ToNanoseconds())
            if len(times) == count:
                break
        stream.cancel()
        return times

    def burst(self) -> None:
        """``BURST_OBJECTS`` small objects put by a process in machine a (improv-store: one
        put_many, colocated; Redis: pipelines of ``BURST_BATCH`` SETs on the unix socket);
        the time from the first put until the follower (replica) had them all. The stores
        take turns."""
        timed: dict[str, list[tuple[float, float, float, float]]] = {}
        for round_index in range(self.burst_rounds):
            for store in self.stores():
                progress(f"{store}: burst of {BURST_OBJECTS:,}, round {round_index + 1}")
                improv = store == IMPROV
                if improv:
                    self.sync_improv()
                else:
                    self.sync_redis()
                primary, follower = self.pair(store)
                spec = {"mode": "burst_writer", "store": store, "count": BURST_OBJECTS,
                        "size": BURST_OBJECT_BYTES, "batch": BURST_BATCH,
                        "prefix": f"burst{round_index}_", "socket": primary.socket_path}
                writer = Worker(self.a, spec, self.stack)
                writer.ready()
                cpu_before = cpu_seconds(primary), cpu_seconds(follower)
                written = writer.result()
                if improv:
                    target = int(self.peek_primary.info().last_sequence)
                    caught_up = self.wait_follower(target, "the follower's burst")
                else:
                    caught_up = wait_for(self.replica_caught_up(self.master_offset()),
                                         "the replica's burst")
                cpu = (cpu_seconds(primary) - cpu_before[0], cpu_seconds(follower) - cpu_before[1])
                started, put_done = written["started_ns"] / 1e9, written["done_ns"] / 1e9
                timed.setdefault(store, []).append((caught_up - started, put_done - started, *cpu))
        for store, rounds in timed.items():
            seconds = sorted(each[0] for each in rounds)[len(rounds) // 2]
            extra = {"rounds_s": [each[0] for each in rounds],
                     "put_s": [each[1] for each in rounds],
                     "primary_cpu_s": [each[2] for each in rounds],
                     "follower_cpu_s": [each[3] for each in rounds]}
            self.add(BURST, LINK, store, "items_per_s", BURST_OBJECTS / seconds, **extra)
            self.add(BURST, LINK, store, "ms", seconds * 1e3, **extra)

    def clear(self) -> None:
        """Empty both stores (and so their followers) before the backlog."""
        progress("replication: emptying the stores before the backlog")
        self.primary_client().delete_matching(everything=True)
        self.sync_improv()
        if self.with_redis:
            self.master_client.flushall()
            self.sync_redis()

    def fill_improv(self) -> tuple[int, float]:
        """The backlog on the primary, inline over its unix socket; its last sequence and the
        seconds the puts took."""
        import numpy as np

        client = self.primary_client()
        payload = np.random.default_rng(3).integers(0, 256, BACKLOG_OBJECT_BYTES, dtype=np.uint8)
        started = time.perf_counter()
        for index in range(self.backlog // BACKLOG_OBJECT_BYTES):
            client.put(payload, f"backlog_{index:05d}")
        seconds = time.perf_counter() - started
        # Its background commits done (untimed), so that the catch-up has the disk alone.
        wait_for(lambda: (info := self.peek_primary.info()).committed_sequence
                 >= info.last_sequence, "the primary's commits")
        return int(self.peek_primary.info().last_sequence), seconds

    def fill_redis(self) -> tuple[int, float]:
        payload = os.urandom(BACKLOG_OBJECT_BYTES)
        started = time.perf_counter()
        count = self.backlog // BACKLOG_OBJECT_BYTES
        for start in range(0, count, BACKLOG_PIPELINE):
            pipe = self.master_client.pipeline(transaction=False)
            for index in range(start, min(count, start + BACKLOG_PIPELINE)):
                pipe.set(f"backlog_{index:05d}", payload)
            pipe.execute()
        return self.master_offset(), time.perf_counter() - started

    def catch_up(self) -> None:
        """SIGSTOP the follower (replica), fill the primary (master), SIGCONT: bytes/s until
        the follower's last_sequence (the replica's offset) reaches the primary's; and the
        CPU time both servers took meanwhile."""
        what = CATCH_UP.format(size_text(self.backlog))
        for store in self.stores():
            progress(f"{store}: {what}")
            improv = store == IMPROV
            primary, follower = self.pair(store)
            full_before = 0 if improv else self.full_syncs()
            before = 0 if improv else self.master_offset()
            follower.process.send_signal(signal.SIGSTOP)
            try:
                target, fill_s = self.fill_improv() if improv else self.fill_redis()
                os.sync()  # the primary's data on disk first: its writeback is not timed
            finally:
                cpu_before = cpu_seconds(primary), cpu_seconds(follower)
                started = time.time()
                follower.process.send_signal(signal.SIGCONT)
            if improv:
                caught_up = self.wait_follower(target, f"{store}: the catch-up")
            else:
                caught_up = wait_for(self.replica_caught_up(target), f"{store}: the catch-up")
            seconds = caught_up - started
            extra: dict[str, Any] = {
                "primary_cpu_s": cpu_seconds(primary) - cpu_before[0],
                "follower_cpu_s": cpu_seconds(follower) - cpu_before[1]}
            if improv:
                extra["resyncs"] = self.peek_follower.info().replication.resyncs
            else:
                extra.update(stream_bytes=target - before,
                             sync_full=self.full_syncs() - full_before)
            self.add(what, LINK, store, "MB_per_s", self.backlog / seconds / 1e6,
                     seconds=seconds, bytes=self.backlog, fill_s=fill_s, **extra)

    def initial_sync(self) -> None:
        """A new follower (replica) of the primary (master) that holds the backlog, in an
        empty data dir, started after the old one stopped: bytes/s from its start until it
        has caught up (its start-up included), and the CPU time both servers took."""
        what = INITIAL.format(size_text(self.backlog))
        for store in self.stores():
            progress(f"{store}: {what}")
            improv = store == IMPROV
            primary, follower = self.pair(store)
            follower.stop()
            full_before = 0 if improv else self.full_syncs()
            target = (int(self.peek_primary.info().last_sequence) if improv
                      else self.master_offset())
            os.sync()  # the previous step's writes on disk first: their writeback is not timed
            primary_cpu = cpu_seconds(primary)
            started = time.time()
            if improv:
                fresh = self.improv(self.b, "follower2", follow=self.primary_address)
                with contextlib.closing(Peek(fresh.socket_path)) as peek:
                    seconds = self.wait_follower(target, f"{store}: the new follower's sync",
                                                 fresh, peek) - started
                    extra: dict[str, Any] = {"resyncs": peek.info().replication.resyncs,
                                             "history_events": target,
                                             "ready_s": fresh.ready_s}
            else:
                fresh = self.redis(self.b, "replica2", f"{self.a.address}:{REDIS_PORT}")
                with contextlib.closing(self.redis_client(fresh)) as client:
                    seconds = wait_for(self.replica_caught_up(target, client),
                                       f"{store}: the new replica's sync") - started
                extra = {"sync_full": self.full_syncs() - full_before}
            extra.update(primary_cpu_s=cpu_seconds(primary) - primary_cpu,
                         follower_cpu_s=cpu_seconds(fresh))
            self.add(what, LINK, store, "MB_per_s", self.backlog / seconds / 1e6,
                     seconds=seconds, bytes=self.backlog, **extra)
            fresh.stop()

    def stores(self) -> tuple[str, ...]:
        return (IMPROV, REDIS) if self.with_redis else (IMPROV,)

    def pair(self, store: str) -> tuple[Server, Server]:
        """The primary and the follower of ``store`` (Redis: the master and the replica)."""
        if store == IMPROV:
            return self.primary, self.follower
        return self.master, self.replica

    def full_syncs(self) -> int:
        return int(self.master_client.info("stats")["sync_full"])


def cpu_seconds(server: Server) -> float:
    """User + system CPU seconds the server's process has taken (/proc/PID/stat)."""
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_replication(args: argparse.Namespace, workdir: Path, results: Results,
                    with_redis: bool) -> str | None:
    """The section, on a lab of its own whose servers and namespaces are gone when it returns
    (or raises); the reason it could not run (None when it ran)."""
    try:
        import netlab
    except ImportError as exc:
        return f"scripts/netlab.py is not importable: {exc}"
    missing = netlab.unavailable()
    if missing:
        return missing
    with contextlib.ExitStack() as stack:
        Replication(args, workdir, results, stack, with_redis).run()
    return None


def replication_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the section does, for the JSON's settings."""
    sizes = Sizes.of(args)
    return {
        "link": f"veth between two network + IPC + /dev/shm namespaces, tbf {LINK_RATE}",
        "frame_bytes": FRAME_BYTES, "frame_hz": FRAME_HZ,
        "lag_frames": sizes.lag_frames, "lag_rounds": LAG_ROUNDS,
        "lag_warmup_frames": LAG_WARMUP,
        "burst_objects": BURST_OBJECTS, "burst_object_bytes": BURST_OBJECT_BYTES,
        "burst_rounds": sizes.burst_rounds,
        "backlog_bytes": sizes.backlog,
        "backlog_object_bytes": BACKLOG_OBJECT_BYTES,
        "get_bytes": GET_BYTES, "gets": sizes.gets, "get_warmup": GET_WARMUP,
        "improv": f"--durability async --memory {SERVER_MEMORY} --event-retention"
                  f" {EVENT_RETENTION}; primary --listen A:{IMPROV_PORT} --insecure, follower"
                  " --follow A:PORT",
        "redis": "no persistence; repl-diskless-sync yes, delay 0; client-output-buffer-limit"
                 " replica 0 0 0; replica --replicaof A 6379",
    }


def replication_legend(args: argparse.Namespace) -> str:
    """What the replication rows measure, printed under the table (after the section ran,
    so scripts/netlab.py is importable)."""
    import netlab

    sizes = Sizes.of(args)
    frames, backlog = sizes.lag_frames, size_text(sizes.backlog)
    return (
        f"Replication rows (\"{WORKLOAD_PREFIX}: ...\"): two machines on one (scripts/netlab.py:"
        " network, IPC and /dev/shm namespaces joined by a veth pair shaped with tc tbf rate"
        f" {LINK_RATE}, burst {netlab.TBF_BURST}: a lone 512 KiB frame crosses at once, the"
        " rate binds the backlog and back-to-back 1 MiB gets); machine a runs the"
        " improv-store primary and the Redis master, machine b the follower (--follow) and"
        " the replica (--replicaof); link = the data crossed the link. Lag: a process in a puts"
        f" {frames} frames of {FRAME_BYTES // KiB} KiB at {FRAME_HZ:g} Hz (after"
        f" {LAG_WARMUP} untimed, in {LAG_ROUNDS} rounds, the stores taking turns; improv-store"
        " colocated puts, Redis SET + PUBLISH pipelined), a process in b subscribed on the"
        " follower (Redis: SUBSCRIBE on the replica) records the event; lag = from the"
        " primary's event time (improv-store: its Event.time; Redis: when the master"
        " answered) until the event (\"to the event\"), and until the frame was in hand"
        " (\"to the frame\": a colocated get, Redis GET on the replica)."
        f" Burst: {BURST_OBJECTS:,} x {BURST_OBJECT_BYTES} B, one put_many vs pipelines of"
        f" {BURST_BATCH} SETs, from the first put until the follower's last_sequence reached"
        " the primary's (Redis: the replica's offset the master's); the median of"
        f" {sizes.burst_rounds} rounds."
        f" Catch-up: the follower (replica) stopped with SIGSTOP while {backlog} of 1 MiB"
        " objects is put on the primary (master), then SIGCONT: MB/s (1e6 bytes) of payload"
        " until caught up (Redis: streamed from the replica's output buffer, unlimited)."
        " Initial sync: a new follower with an empty data dir (a new replica: REPLICAOF, a"
        " diskless full sync) of the primary holding that backlog: MB/s from its start,"
        " process start-up included."
        f" Get: a process in b gets one {GET_BYTES // MiB} MiB object {sizes.gets}"
        " times (first and last byte read): colocated = from the follower in b (zero copy;"
        " Redis: the replica's unix socket), link = from the primary over TCP (Redis: the"
        " master over TCP)."
    )


def replication_details(results: Results) -> list[str]:
    """Lines under the table: follower-machine reads against primary reads, each round of the
    burst, the seconds, resyncs and CPU time of each sync, the lag from the put's start."""
    names = {IMPROV: IMPROV, REDIS: "Redis"}
    lines = []
    ratios = []
    for store in (IMPROV, REDIS):
        near = results.value(GET, COLOCATED, store, "p50_us")
        far = results.value(GET, LINK, store, "p50_us")
        if near and far:
            ratios.append(f"{names[store]} {near:,.0f} / {far:,.0f} µs = {near / far:.3g}")
    if ratios:
        lines.append("Replication: get p50 on the follower's machine, from the follower /"
                     f" from the primary over the link: {'; '.join(ratios)}.")
    for row in results.rows:
        if not row["workload"].startswith(f"{WORKLOAD_PREFIX}: ") or row["store"] not in names:
            continue
        if row["metric"] == "MB_per_s":
            parts = [f"{row['seconds']:.2f} s"]
            if "resyncs" in row:
                parts.append(f"resyncs {row['resyncs']}")
            if "sync_full" in row:
                parts.append(f"full syncs {row['sync_full']}")
            if "ready_s" in row:
                parts.append(f"ready after {row['ready_s']:.2f} s")
            if "follower_cpu_s" in row:
                parts.append(f"CPU s: follower (replica) {row['follower_cpu_s']:.2f}, primary"
                             f" (master) {row['primary_cpu_s']:.2f}")
            if "history_events" in row:
                parts.append(f"the primary's history: {row['history_events']:,} events")
            lines.append(f"Replication: {names[row['store']]} {row['workload']}:"
                         f" {', '.join(parts)}.")
        if row["workload"] == BURST and row["metric"] == "ms":
            rounds = ", ".join(
                f"{total:.2f} s (the puts {put:.2f} s; CPU s: follower {follower:.2f},"
                f" primary {primary:.2f})"
                for total, put, primary, follower in zip(
                    row["rounds_s"], row["put_s"], row["primary_cpu_s"], row["follower_cpu_s"],
                    strict=True))
            lines.append(f"Replication: {names[row['store']]} burst rounds: {rounds}.")
        if "from_put_start_p50_us" in row and row["metric"] == "p50_us":
            lines.append(f"Replication: {names[row['store']]} lag from the put's start to the"
                         f" event: p50 {row['from_put_start_p50_us']:,.0f} µs, p99"
                         f" {row['from_put_start_p99_us']:,.0f} µs.")
    return lines


def main() -> int:
    """``--worker SPEC``: one worker, run inside a machine by the driver."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", required=True, help="the worker's JSON spec")
    spec = json.loads(parser.parse_args().worker)
    emit(WORKERS[spec["mode"]](spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
