"""The soak workload: many client processes against one real server, some of them SIGKILLed.

Shared by ``scripts/soak`` (the benchmark run, 60 s and more) and ``tests/test_soak.py``
(a short run in CI), so both run and check exactly the same thing.

``run_soak`` starts a server (``--durability sync``: every acknowledged write is on disk,
so every object found afterwards must verify, also after a restart) and ``clients``
worker processes (spawned: gRPC does not survive fork). Worker ``slot`` owns the names
``soak/<slot>/...``; it puts small objects inline and large ones through shared memory
(and now and then one above the inline limit, which streams), gets them back (arrays as
zero-copy views it holds on to for a while: leases), deletes, lists, batches puts, and
follows the next slot's names with a subscriber that receives values. Slots differ in
transport: shared memory over the local lane, shared memory over gRPC Session streams,
shared memory for every size, and inline gRPC only.

Every payload is derived from its object's name, so anything stored can be verified
without shared state. While the workload runs, random workers are SIGKILLed (mid-create,
mid-get, holding leases, whatever they were doing) and replaced by a new process for the
same slot, which adopts the objects its predecessor left. Workers count operations in
shared memory without locks (a killed process cannot leave a lock held) and write
failures to files.

Afterwards the checks: the server reaps the dead clients' sessions, so no session, pin,
unsealed create or subscriber is left; the arena's used bytes equal the live objects'
sizes (each rounded up to the arena's 64-byte alignment; the arena is sized so that
every object stays resident); Info's object count and bytes match the listing; /dev/shm
holds only the segments Info reports; every object verifies; the server's anonymous
memory grew by less than ``rss_bound`` bytes; and after a clean restart the same objects
come back from disk and verify again.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from improv_store.client import ObjectID, StoreClient
from improv_store.service.arena import ALIGNMENT, SHM_DIR
from improv_store.service.launch import StoreProcess, launch
from improv_store.service.locality import LOCK_SUFFIX, TOKEN_SUFFIX, store_prefix

KiB = 1 << 10
MiB = 1 << 20
PREFIX = "soak/"
# Worker operations, counted per slot in shared memory; "events" are subscriber deliveries.
OPS = ("put", "put_many", "get", "get_many", "delete", "list", "events")
# (transfer, lane) by slot modulo 4.
TRANSPORTS = (("auto", True), ("auto", False), ("shm", True), ("inline", False))
CALL_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class SoakConfig:
    """What to run: how long, how many clients, how often one is killed, and the bounds."""

    duration: float = 60.0
    clients: int = 16
    kill_interval: float = 3.0  # mean seconds between SIGKILLs
    memory: int = 1 << 30  # the arena: large enough that nothing is evicted
    max_live: int = 24  # objects a slot keeps before deleting its oldest
    hold_seconds: float = 0.5  # longest a worker holds a zero-copy view
    rss_bound: int = 512 * MiB  # allowed growth of the server's anonymous memory
    seed: int = 1


@dataclass
class SoakReport:
    """What happened and what the checks found; ``violations`` empty means it passed."""

    config: SoakConfig
    seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)
    clients_started: int = 0
    clients_killed: int = 0
    objects: int = 0
    object_bytes: int = 0
    objects_verified: int = 0
    objects_verified_after_restart: int = 0
    arena_used: int = 0
    arena_segments: int = 0
    settle_seconds: float = 0.0
    rss_before: dict[str, int] = field(default_factory=dict)
    rss_after: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- payloads, names --------------------------------------------------------------------------


def payload(name: str, size: int) -> bytes:
    """The bytes an object of this name holds: derived from the name, checkable anywhere."""
    seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).bytes(size)


def object_name(slot: int, generation: int, counter: int, kind: str, size: int) -> str:
    """``soak/<slot>/<generation>-<counter>-<kind><size>``; kind "a" is a uint8 array."""
    return f"{PREFIX}{slot:02d}/{generation}-{counter}-{kind}{size}"


def parse_name(name: str) -> tuple[str, int]:
    """(kind, size) from an object name; ValueError for a name the workload never makes."""
    if not name.startswith(PREFIX):
        raise ValueError(f"not a soak object: {name!r}")
    last = name.rsplit("-", 1)[-1]
    kind, size = last[:1], int(last[1:])
    if kind not in ("a", "b"):
        raise ValueError(f"unknown kind in {name!r}")
    return kind, size


def value_for(name: str) -> bytes | np.ndarray:
    """The object to put under ``name``: bytes, or (kind "a") a uint8 array of them."""
    kind, size = parse_name(name)
    data = payload(name, size)
    return np.frombuffer(data, dtype=np.uint8) if kind == "a" else data


def matches(name: str, value: Any) -> bool:
    """Whether a value read back is what was put under ``name``."""
    kind, size = parse_name(name)
    if kind == "a":
        return isinstance(value, np.ndarray) and value.tobytes() == payload(name, size)
    return isinstance(value, bytes) and value == payload(name, size)


def random_size(rng: random.Random) -> int:
    """Mostly small (inline) or large (shared memory); now and then above the inline limit."""
    roll = rng.random()
    if roll < 0.5:
        return int(16 * 2 ** (rng.random() * 10))  # 16 B .. 16 KiB
    if roll < 0.98:
        return int(64 * KiB * 2 ** (rng.random() * 4))  # 64 KiB .. 1 MiB
    return rng.randint(4 * MiB, 6 * MiB)  # PutStream / GetStream for inline clients


# -- the worker process -----------------------------------------------------------------------


@dataclass
class Shared:
    """State shared with workers without locks: counters per slot, flags, the error dir."""

    counters: Any  # RawArray of int64, clients x len(OPS)
    ready: Any  # RawArray of int8 per slot: the current worker is running
    stop: Any  # RawValue int8: set to end the workload
    error_dir: str

    def count(self, slot: int, op: str) -> None:
        self.counters[slot * len(OPS) + OPS.index(op)] += 1


class Worker:
    """One client process's workload for one slot (one generation of it)."""

    def __init__(
        self,
        address: str,
        slot: int,
        generation: int,
        clients: int,
        config: SoakConfig,
        shared: Shared,
    ) -> None:
        self.slot = slot
        self.generation = generation
        self.config = config
        self.shared = shared
        self.rng = random.Random(config.seed * 1_000_003 + slot * 1009 + generation)
        transfer, lane = TRANSPORTS[slot % len(TRANSPORTS)]
        self.client = StoreClient(address, timeout=CALL_TIMEOUT, transfer=transfer, lane=lane)
        self.prefix = f"{PREFIX}{slot:02d}/"
        self.watched = f"{PREFIX}{(slot + 1) % clients:02d}/"
        # Objects of this slot, oldest first: whatever a killed predecessor left is ours now.
        self.live: dict[str, ObjectID] = {
            info.name: info.id for info in self.client.list(self.prefix)
        }
        self.held: deque[tuple[float, Any]] = deque()
        self.counter = 0
        self.failure: list[str] = []

    def run(self) -> None:
        subscription = self.client.subscribe(self.watched, values=True)
        follower = threading.Thread(target=self._follow, args=(subscription,), daemon=True)
        follower.start()
        self.shared.ready[self.slot] = 1
        operations = (
            (self.put, 30),
            (self.put_many, 4),
            (self.get, 35),
            (self.get_many, 6),
            (self.delete, 15),
            (self.list, 3),
        )
        actions, weights = zip(*operations, strict=True)
        while not self.shared.stop.value and not self.failure:
            self.rng.choices(actions, weights)[0]()
            self._drop_expired_views()
        subscription.close()
        follower.join(10)
        self.held.clear()
        self.client.close()
        if self.failure:
            raise AssertionError(self.failure[0])

    def _new_name(self, size: int | None = None) -> str:
        self.counter += 1
        size = random_size(self.rng) if size is None else size
        kind = self.rng.choice("ab")
        return object_name(self.slot, self.generation, self.counter, kind, size)

    def _remember(self, name: str, object_id: ObjectID) -> None:
        self.live[name] = object_id
        while len(self.live) > self.config.max_live:
            self._delete(next(iter(self.live)))

    def _delete(self, name: str) -> None:
        object_id = self.live.pop(name)
        deleted = self.client.delete(object_id)
        if deleted != [object_id]:
            raise AssertionError(f"delete {name}: deleted {deleted}")
        self.shared.count(self.slot, "delete")

    def put(self) -> None:
        name = self._new_name()
        self._remember(name, self.client.put(value_for(name), name))
        self.shared.count(self.slot, "put")

    def put_many(self) -> None:
        names = [self._new_name(int(16 * 2 ** (self.rng.random() * 10))) for _ in range(8)]
        ids = self.client.put_many([value_for(name) for name in names], names)
        for name, object_id in zip(names, ids, strict=True):
            self._remember(name, object_id)
        self.shared.count(self.slot, "put_many")

    def _check(self, name: str, value: Any) -> None:
        if not matches(name, value):
            raise AssertionError(f"{name} read back with other contents")

    def get(self) -> None:
        if not self.live:
            self.put()
            return
        name = self.rng.choice(list(self.live))
        value = self.client.get(self.live[name])
        self._check(name, value)
        if isinstance(value, np.ndarray) and self.client.colocated:
            # Likely a zero-copy view (large, or any size with shm): hold it, and its lease.
            self.held.append(
                (time.monotonic() + self.rng.random() * self.config.hold_seconds, value)
            )
        self.shared.count(self.slot, "get")

    def get_many(self) -> None:
        names = self.rng.sample(list(self.live), min(len(self.live), 6))
        for name, value in zip(
            names, self.client.get_many([self.live[n] for n in names]), strict=True
        ):
            self._check(name, value)
        self.shared.count(self.slot, "get_many")

    def delete(self) -> None:
        if self.live:
            self._delete(self.rng.choice(list(self.live)))

    def list(self) -> None:
        listed = {info.id for info in self.client.list(self.prefix)}
        missing = [name for name, object_id in self.live.items() if object_id not in listed]
        if missing:
            raise AssertionError(f"List of {self.prefix} lacks {missing[:3]}")
        self.shared.count(self.slot, "list")

    def _drop_expired_views(self) -> None:
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            _, view = self.held.popleft()
            if self.rng.random() < 0.5:
                self.client.release(view)  # at once, as Plasma's release; else when garbage

    def _follow(self, subscription: Any) -> None:
        """Verify every value the neighbour slot's subscription delivers."""
        try:
            for event in subscription:
                if event.value is not None:
                    self._check(event.object.name, event.value)
                self.shared.count(self.slot, "events")
        except Exception:
            if not self.shared.stop.value:
                self.failure.append(f"subscriber: {traceback.format_exc()}")


def worker_main(
    address: str, slot: int, generation: int, clients: int, config: SoakConfig, shared: Shared
) -> None:
    """Entry point of a worker process; a failure is written to the error directory."""
    try:
        Worker(address, slot, generation, clients, config, shared).run()
    except BaseException:
        path = Path(shared.error_dir) / f"slot{slot:02d}-gen{generation}.txt"
        path.write_text(traceback.format_exc())
        raise


# -- the run ----------------------------------------------------------------------------------


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssShmem of a process, in bytes (RssShmem is its mapped arena)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            values[key] = int(rest.split()[0]) * KiB
    return values


class Workers:
    """The worker processes by slot: start, SIGKILL and replace, stop."""

    def __init__(self, address: str, config: SoakConfig, shared: Shared) -> None:
        self._ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork
        self._address = address
        self._config = config
        self._shared = shared
        self.processes: list[Any] = [None] * config.clients
        self.generations = [0] * config.clients
        self.started = 0
        self.killed = 0

    def start(self, slot: int) -> None:
        self._shared.ready[slot] = 0
        process = self._ctx.Process(
            target=worker_main,
            args=(
                self._address,
                slot,
                self.generations[slot],
                self._config.clients,
                self._config,
                self._shared,
            ),
            name=f"soak-{slot:02d}",
            daemon=True,
        )
        process.start()
        self.processes[slot] = process
        self.started += 1

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(self._shared.ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start within {START_TIMEOUT} s")
            dead = [p.name for p in self.processes if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"workers exited while starting: {dead}")
            time.sleep(0.1)

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a random running worker and start its slot's next generation."""
        slot = rng.randrange(len(self.processes))
        process = self.processes[slot]
        if process.exitcode is not None:
            return
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        self.killed += 1
        self.generations[slot] += 1
        self.start(slot)

    def stop(self) -> list[str]:
        """Ask every worker to finish and wait; return the slots that did not."""
        self._shared.stop.value = 1
        deadline = time.monotonic() + STOP_TIMEOUT
        stuck = []
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.exitcode is None:
                stuck.append(process.name)
                process.kill()
                process.join(10)
        return stuck


def _listing(client: StoreClient) -> list[Any]:
    return list(client.list(PREFIX))


def _settle(client: StoreClient) -> tuple[Any, float]:
    """Wait for the server to reap the dead clients; return the Info and how long it took."""
    started = time.monotonic()
    while True:
        info = client.info()
        reaped = (info.sessions, info.arena_pinned, info.subscriber_count) == (0, 0, 0)
        if reaped and info.committed_sequence == info.last_sequence:
            return info, time.monotonic() - started
        if time.monotonic() - started > SETTLE_TIMEOUT:
            return info, time.monotonic() - started
        time.sleep(0.1)


def _verify(client: StoreClient, objects: list[Any], violations: list[str], when: str) -> int:
    """Read every object back and compare it with what its name says; count the good ones."""
    verified = 0
    for info in objects:
        try:
            _, size = parse_name(info.name)
        except ValueError as exc:
            violations.append(f"{when}: {exc}")
            continue
        if info.size != size:
            violations.append(f"{when}: {info.name} has {info.size} bytes, not {size}")
        elif not matches(info.name, client.get(info.id)):
            violations.append(f"{when}: {info.name} does not verify")
        else:
            verified += 1
    return verified


def _aligned(size: int) -> int:
    return -(-max(size, 1) // ALIGNMENT) * ALIGNMENT


def check_quiet_server(client: StoreClient, data_dir: str, report: SoakReport) -> list[Any]:
    """The checks on the server once the workload has ended; returns the listed objects."""
    violations = report.violations
    info, report.settle_seconds = _settle(client)
    leftover = {
        "sessions": info.sessions,
        "pinned bytes": info.arena_pinned,
        "subscribers": info.subscriber_count,
    }
    for what, count in leftover.items():
        if count:
            violations.append(f"{count} {what} left {SETTLE_TIMEOUT:.0f} s after the workload")
    if info.committed_sequence != info.last_sequence:
        violations.append(f"committed {info.committed_sequence} of {info.last_sequence}")
    objects = _listing(client)
    report.objects = len(objects)
    report.object_bytes = sum(o.size for o in objects)
    report.arena_used, report.arena_segments = info.arena_used, info.segments
    if (info.object_count, info.total_bytes) != (report.objects, report.object_bytes):
        violations.append(
            f"Info counts {info.object_count} objects of {info.total_bytes} bytes;"
            f" the listing {report.objects} of {report.object_bytes}"
        )
    expected_used = sum(_aligned(o.size) for o in objects)
    if info.resident_objects != report.objects or info.arena_used != expected_used:
        violations.append(
            f"arena uses {info.arena_used} bytes for {info.resident_objects} resident objects;"
            f" the {report.objects} live objects take {expected_used} ({ALIGNMENT}-byte aligned)"
        )
    prefix = store_prefix(data_dir)
    segments = {n for n in os.listdir(SHM_DIR) if n.startswith(prefix)} - {
        prefix + TOKEN_SUFFIX,
        prefix + LOCK_SUFFIX,
        info.object_index,
    }
    if len(segments) != info.segments:
        violations.append(
            f"/dev/shm holds {len(segments)} segments, Info reports"
            f" {info.segments}: {sorted(segments)}"
        )
    report.objects_verified = _verify(client, objects, violations, "live")
    return objects


@contextlib.contextmanager
def _server(
    workdir: Path, config: SoakConfig, data_dir: str, violations: list[str]
) -> Iterator[StoreProcess]:
    """A server on ``data_dir``; on exit it is stopped (SIGTERM, which must end it cleanly)
    and its shared memory removed if it was not."""
    log_path = workdir / "server.log"
    logged_before = log_path.stat().st_size if log_path.exists() else 0
    server = launch(
        str(workdir / "store.sock"),
        config.memory,
        data_dir=data_dir,
        durability="sync",
        log_path=str(log_path),
    )
    try:
        yield server
    finally:
        exit_code = server.stop()
        if exit_code != 0:
            violations.append(f"the server exited with {exit_code}")
        for name in os.listdir(SHM_DIR):
            if name.startswith(store_prefix(data_dir)):
                violations.append(f"the stopped server left /dev/shm/{name}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SHM_DIR, name))
        log = log_path.read_bytes()[logged_before:].decode(errors="replace")
        if "Traceback" in log:
            violations.append(
                f"the server logged a traceback: {log[log.index('Traceback') :][:3000]}"
            )


def run_soak(config: SoakConfig, workdir: str | None = None) -> SoakReport:
    """Run the workload and every check; see the module docstring."""
    report = SoakReport(config=config)
    base = Path(workdir or tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    data_dir = str(base / "data")
    error_dir = base / "errors"
    error_dir.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    shared = Shared(
        counters=ctx.RawArray("q", config.clients * len(OPS)),
        ready=ctx.RawArray("b", config.clients),
        stop=ctx.RawValue("b", 0),
        error_dir=str(error_dir),
    )
    rng = random.Random(config.seed)
    try:
        with _server(base, config, data_dir, report.violations) as server:
            address = "unix://" + os.path.abspath(server.store_loc)
            report.rss_before = memory_of(server.pid)
            workers = Workers(address, config, shared)
            try:
                for slot in range(config.clients):
                    workers.start(slot)
                workers.wait_ready()
                started = time.monotonic()
                end = started + config.duration
                while (now := time.monotonic()) < end:
                    time.sleep(min(end - now, rng.expovariate(1 / config.kill_interval)))
                    if time.monotonic() < end:
                        workers.kill_one(rng)
                report.seconds = time.monotonic() - started
            finally:
                stuck = workers.stop()
            report.clients_started, report.clients_killed = workers.started, workers.killed
            report.violations += [f"worker {name} did not stop" for name in stuck]
            with StoreClient(address, timeout=CALL_TIMEOUT, transfer="inline") as client:
                objects = check_quiet_server(client, data_dir, report)
            report.rss_after = memory_of(server.pid)
        growth = report.rss_after["RssAnon"] - report.rss_before["RssAnon"]
        if growth > config.rss_bound:
            report.violations.append(
                f"server anonymous memory grew by {growth / MiB:.0f} MiB, more than"
                f" {config.rss_bound / MiB:.0f} MiB"
            )
        with _server(base, config, data_dir, report.violations) as server:
            address = "unix://" + os.path.abspath(server.store_loc)
            with StoreClient(address, timeout=CALL_TIMEOUT, transfer="inline") as client:
                again = _listing(client)
                before = {(o.id, o.size, o.crc32c) for o in objects}
                if {(o.id, o.size, o.crc32c) for o in again} != before:
                    report.violations.append(
                        f"after a restart {len(again)} objects, before it {len(objects)}"
                    )
                report.objects_verified_after_restart = _verify(
                    client, again, report.violations, "after restart"
                )
    finally:
        report.ops = {
            op: sum(shared.counters[slot * len(OPS) + index] for slot in range(config.clients))
            for index, op in enumerate(OPS)
        }
        for path in sorted(error_dir.glob("*.txt")):
            report.violations.append(f"{path.stem} failed: {path.read_text()[-2000:]}")
        if workdir is None and not report.violations:
            shutil.rmtree(base, ignore_errors=True)
    return report
