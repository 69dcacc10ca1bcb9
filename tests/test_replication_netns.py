"""Two machines on one: a primary and its followers in network, IPC and /dev/shm namespaces.

Issue 20's end-to-end test, with real processes on a real (veth, tbf-shaped,
1 Gbit/s) link: the primary runs in machine ``a``, its follower in machine
``b`` (its own /dev/shm, so nothing there is colocated with the primary), a
follower of that follower back in ``a``; token and TLS on every TCP hop. A
writer in ``a`` streams 512 KiB frames at 30 Hz with replaces and deletes; a
reader in ``b`` colocated with the follower checks bytes, checksums, IDs and
event order against the primary's own events, and reports the replication lag.
Then the follower is SIGKILLed mid-stream, the link is cut for longer than the
primary retains history, and the primary is killed and the follower promoted.

It needs root (scripts/netlab.py); where namespaces cannot be made it fails,
saying why, rather than skips. The workers (writer, reader, probe) are this
file run as a program inside a machine: ``python tests/test_replication_netns.py ROLE JSON``.
The lag figures go to the test's log (INFO) and to ``replication-netns.json`` in
pytest's base temporary directory; nothing asserts on timing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography import x509
from test_access import _authority, _leaf

from improv_store.client import (
    HistoryUnavailable,
    StoreClient,
    StoreError,
    StoreReset,
    StoreUnavailable,
)
from improv_store.client.shm import exporter_of
from improv_store.protocol import PRIMARY_TRAILER
from improv_store.service.launch import wait_until_serving
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import netlab

TOKEN = "netns-replication-token"
SERVER_NAME = "store.netlab.test"  # the certificates' DNS name, which followers verify
PORT = 50051
FRAME_BYTES = 512 << 10
FRAMES = 300
HZ = 30.0
RETENTION = 200  # the primary's --event-retention: the cut outlasts it
START_TIMEOUT = 30.0
CATCH_UP_TIMEOUT = 60.0
NOTICE_TIMEOUT = 30.0  # for a follower to notice that its primary is gone or changed
CALL_TIMEOUT = 10.0
METADATA = (("authorization", f"Bearer {TOKEN}"),)
log = logging.getLogger(__name__)

# -- workers: run inside a machine ---------------------------------------------------------


def digest(value: Any) -> str:
    """SHA-256 of an array's or bytes' contents."""
    return hashlib.sha256(memoryview(value).cast("B")).hexdigest()


def frame(index: int) -> np.ndarray:
    """Frame ``index``: 512 KiB that differ from every other frame's."""
    return np.random.default_rng(index).integers(0, 256, FRAME_BYTES, dtype=np.uint8)


def _write(args: dict[str, Any]) -> None:
    """Frames at ``hz`` (a replace of "state" every ``replace_every``, the frame 20 back
    deleted every ``delete_every``), then ``small`` small objects and deletes by name.
    One JSON line per write: what was written, its ID and contents' digest."""
    client = StoreClient(
        args["address"], tls_ca=args["ca"], tls_server_name=SERVER_NAME,
        token_file=args["token_file"], timeout=CALL_TIMEOUT,
    )
    with client, open(args["out"], "a") as out:

        def note(op: str, ids: list[Any], name: str, sha: str = "") -> None:
            record = {"op": op, "ids": [oid.hex() for oid in ids], "name": name, "sha": sha}
            out.write(json.dumps(record) + "\n")
            out.flush()

        tick = time.monotonic()
        for index in range(args["start"], args["start"] + args.get("frames", 0)):
            data = frame(index)
            name = f"frame/{index:04d}"
            note("put", [client.put(data, name)], name, digest(data))
            if index % 10 == 0:
                state = np.full(100 << 10, index % 256, dtype=np.uint8)
                note("replace", [client.replace("state", state)], "state", digest(state))
            if index % 25 == 0 and index >= 20:
                old = f"frame/{index - 20:04d}"
                note("delete", client.delete(old), old)
            tick += 1 / args.get("hz", HZ)
            time.sleep(max(0.0, tick - time.monotonic()))
        small = [f"small/{args['start']}/{k}" for k in range(args.get("small", 0))]
        blobs = [k.to_bytes(4, "little") * 64 for k in range(len(small))]
        for name, oid, blob in zip(small, client.put_many(blobs, small), blobs, strict=True):
            note("put", [oid], name, digest(blob))
        for name in args.get("delete", []):
            note("delete", client.delete(name), name)


def _event_record(event: Any) -> dict[str, Any]:
    return {
        "sequence": event.sequence, "type": event.type, "id": event.object.id.hex(),
        "name": event.object.name, "crc32c": event.object.crc32c,
        "replaced": [oid.hex() for oid in event.replaced], "time": event.time.timestamp(),
    }


def _read(args: dict[str, Any]) -> None:
    """Subscribe to the follower from sequence 1 with values, over its unix socket, and
    write a JSON line per event: what it says, when it was seen, the value's digest and
    whether it was a view of the follower's shared memory. Across a follower restart it
    resumes where it stopped (waiting while the restarted follower is behind that point);
    history gone (after a resync) or a new store_id (after a promotion) are written down
    as such and it goes on from what the store offers."""
    since: int | None = 1
    store_id: str | None = None
    with open(args["out"], "a") as out:

        def note(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        while True:
            try:
                with StoreClient(args["address"], token_file=args["token_file"],
                                 timeout=CALL_TIMEOUT) as client:
                    subscription = client.subscribe(since=since, store_id=store_id, values=True)
                    note({"open": since, "colocated": client.colocated})
                    store_id = subscription.store_id
                    for event in subscription:
                        record = _event_record(event)
                        record["seen"] = time.time()
                        if event.value is not None:
                            record["sha"] = digest(event.value)
                            record["view"] = exporter_of(event.value) is not None
                            client.release(event.value)
                        note(record)
                        since = event.sequence + 1
            except StoreUnavailable as exc:
                note({"error": str(exc)})
                time.sleep(0.1)
            except HistoryUnavailable as exc:
                if since is not None and (exc.oldest_sequence or 0) <= since:
                    # Not issued yet: a follower SIGKILLed before committing what it had
                    # shown is behind until it fetches those events again.
                    note({"ahead": str(exc)})
                    time.sleep(0.1)
                    continue
                note({"gap": str(exc)})
                since = store_id = None
            except StoreReset as exc:
                note({"reset": str(exc)})
                store_id = None


def _probe(args: dict[str, Any]) -> None:
    """Put and get back one frame at ``address``; print whether payloads moved through
    shared memory and what came back."""
    client = StoreClient(
        args["address"], tls_ca=args.get("ca"), tls_server_name=SERVER_NAME,
        token_file=args["token_file"], timeout=CALL_TIMEOUT,
    )
    with client:
        oid = client.put(frame(args["index"]), f"probe/{args['index']}")
        value = client.get(oid)
        result = {"colocated": client.colocated, "view": exporter_of(value) is not None,
                  "sha": digest(value), "shm": sorted(os.listdir("/dev/shm"))}
    sys.stdout.write(json.dumps(result) + "\n")


WORKERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "write": _write, "read": _read, "probe": _probe,
}

# -- the lab and what runs in it -----------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The TLS certificate every store serves (for both machines' addresses and
    SERVER_NAME), its CA, and the token file they all take and send."""

    ca: str
    cert: str
    key: str
    token_file: str


def make_credentials(directory: Path, addresses: list[str]) -> Credentials:
    """A CA and a server certificate it signed for SERVER_NAME and the machines' addresses
    (made as tests/test_access.py makes its own), and a token."""
    ca_name, ca_key, ca = _authority(directory, "ca")
    sans: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME)]
    sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    cert, key = _leaf(directory, SERVER_NAME, (ca_name, ca_key), sans)
    token = directory / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return Credentials(ca=ca, cert=cert, key=key, token_file=str(token))


@dataclass
class Store:
    """An ``improv-store serve`` in a machine: how to reach and restart it."""

    label: str
    machine: netlab.Machine
    argv: list[str]
    socket: str
    address: str  # host:port on the link
    data_dir: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client(self) -> StoreClient:
        """A client from the test process: over the unix socket, which reaches into the
        machine (the filesystem is shared), but not colocated (its /dev/shm is not)."""
        return StoreClient("unix://" + self.socket, token=TOKEN, timeout=CALL_TIMEOUT)

    def stub(self) -> tuple[grpc.Channel, store_pb2_grpc.StoreServiceStub]:
        channel = grpc.insecure_channel("unix://" + self.socket)
        return channel, store_pb2_grpc.StoreServiceStub(channel)

    def info(self) -> pb.InfoResponse:
        """The raw Info, replication fields included."""
        channel, stub = self.stub()
        with channel:
            return stub.Info(pb.InfoRequest(), metadata=METADATA, timeout=CALL_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(CALL_TIMEOUT)

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.label} ({self.log_path}) ---\n" + "\n".join(text[-lines:])


class Fleet:
    """The stores and workers one test starts in the lab; all stopped (by PID) at the end."""

    def __init__(self, lab: netlab.Lab, directory: Path, credentials: Credentials) -> None:
        self.lab = lab
        self.directory = directory
        self.credentials = credentials
        self.stores: list[Store] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def serve(self, machine: netlab.Machine, label: str, *flags: str, port: int = PORT) -> Store:
        """Start a store (TLS and token on) in ``machine`` and wait until it serves."""
        socket = str(self.directory / f"{label}.sock")
        data_dir = str(self.directory / f"{label}.data")
        creds = self.credentials
        argv = [
            sys.executable, "-m", "improv_store.service", "--socket", socket,
            "--listen", f"{machine.address}:{port}", "--data-dir", data_dir,
            "--tls-cert", creds.cert, "--tls-key", creds.key, "--token-file", creds.token_file,
            "--memory", "1G", *flags,
        ]
        store = Store(label, machine, argv, socket, f"{machine.address}:{port}", data_dir,
                      self.directory / f"{label}.log")
        self.stores.append(store)
        self.start(store)
        return store

    def start(self, store: Store) -> None:
        """(Re)start ``store`` on its data, socket and address."""
        with open(store.log_path, "ab") as log_file:
            store.process = store.machine.popen(
                store.argv, stdout=log_file, stderr=subprocess.STDOUT
            )
        wait_until_serving(store.process, "unix://" + store.socket, START_TIMEOUT,
                           store.log_tail)

    def follow_flags(self, primary: Store) -> list[str]:
        creds = self.credentials
        return [
            "--follow", primary.address, "--follow-tls-ca", creds.ca,
            "--follow-tls-server-name", SERVER_NAME, "--follow-token-file", creds.token_file,
        ]

    def worker(self, machine: netlab.Machine, role: str, **args: Any) -> subprocess.Popen[bytes]:
        """Start this file as ``role`` in ``machine``."""
        argv = [sys.executable, __file__, role, json.dumps(args)]
        with open(self.directory / f"{role}-{len(self.workers)}.log", "wb") as log_file:
            process = machine.popen(argv, stdout=subprocess.PIPE, stderr=log_file)
        self.workers.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(store.log_tail() for store in self.stores)

    def stop(self) -> None:
        processes = [*self.workers, *(store.process for store in self.stores)]
        for process in processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            if process is None:
                continue
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stdout is not None:
                process.stdout.close()


class Recorder(threading.Thread):
    """The primary's own events, subscribed to from sequence 1 by the test process."""

    def __init__(self, primary: Store) -> None:
        super().__init__(daemon=True)
        self.client = primary.client()
        self.subscription = self.client.subscribe(since=1)
        self.events: list[dict[str, Any]] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for event in self.subscription:
                self.events.append(_event_record(event))
        except StoreError as exc:  # the primary was killed
            self.error = exc

    def close(self) -> None:
        self.subscription.close()
        self.client.close()


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a worker wrote so far (a line being written is left for later)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines]


def wait_for(condition: Callable[[], Any], what: str, fleet: Fleet,
             timeout: float = CATCH_UP_TIMEOUT) -> float:
    """Poll ``condition`` until true; return the seconds it took, or fail saying ``what``
    did not happen, with the stores' logs."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout} s\n{fleet.logs()}", pytrace=False)
        time.sleep(0.05)
    return time.monotonic() - start


def objects(store: Store) -> dict[str, tuple[str, int, int, int]]:
    """Every object in ``store``: ID -> (name, size, checksum, sequence)."""
    with store.client() as client:
        return {info.id.hex(): (info.name, info.size, info.crc32c, info.sequence)
                for info in client.list()}


def converged(store: Store, source: Store) -> bool:
    """Whether ``store`` holds exactly ``source``'s objects, at ``source``'s sequence."""
    try:
        if store.info().last_sequence != source.info().last_sequence:
            return False
        return objects(store) == objects(source)
    except (grpc.RpcError, StoreError):
        return False


def event_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between the primary's event and the follower's."""
    return (record["sequence"], record["type"], record["id"], record["name"],
            record["crc32c"], tuple(record["replaced"]))


def history(store: Store, through: int) -> list[tuple[Any, ...]]:
    """``store``'s own events from sequence 1 through ``through`` (it must have issued it)."""
    with store.client() as client, client.subscribe(since=1) as subscription:
        events = []
        for event in subscription:
            events.append(event_key(_event_record(event)))
            if event.sequence >= through:
                break
    return events


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[netlab.Lab]:
    reason = netlab.unavailable()
    if reason is not None:
        pytest.fail(f"the two-machine test needs network namespaces: {reason}", pytrace=False)
    with netlab.Lab("isrepl") as made:
        yield made


@pytest.fixture(scope="module")
def directory() -> Iterator[Path]:
    """Sockets, data, certificates and logs, in /tmp (shared by the machines; short paths
    for sockets)."""
    path = Path(tempfile.mkdtemp(prefix="is-netns-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def credentials(lab: netlab.Lab, directory: Path) -> Credentials:
    return make_credentials(directory, [lab.a.address, lab.b.address])


@pytest.fixture
def fleet(
    lab: netlab.Lab, directory: Path, credentials: Credentials, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    own = directory / request.node.name
    own.mkdir()
    made = Fleet(lab, own, credentials)
    try:
        yield made
    finally:
        made.stop()


# -- tests ---------------------------------------------------------------------------------


def test_machines_are_apart(fleet: Fleet) -> None:
    """The premise: a client in ``b`` reaches the primary in ``a`` over the link with TLS and
    the token but is not colocated; one in ``a`` is (zero copy); ``b``'s /dev/shm is empty."""
    lab, creds = fleet.lab, fleet.credentials
    primary = fleet.serve(lab.a, "primary")
    results: dict[str, dict[str, Any]] = {}
    for label, machine, address in (
        ("remote", lab.b, primary.address),
        ("local", lab.a, "unix://" + primary.socket),
    ):
        process = fleet.worker(machine, "probe", address=address, ca=creds.ca,
                               token_file=creds.token_file, index=len(results))
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, (label, output, fleet.logs())
        results[label] = json.loads(output)
    remote, local = results["remote"], results["local"]
    assert not remote["colocated"] and not remote["view"], remote
    assert remote["sha"] == digest(frame(0))
    assert remote["shm"] == [], "machine b sees /dev/shm files it should not"
    assert local["colocated"] and local["view"], local
    assert local["sha"] == digest(frame(1))
    assert any(name.endswith("token") for name in local["shm"]), local["shm"]
    assert not set(local["shm"]) & set(os.listdir("/dev/shm")), "a's /dev/shm is the host's"


@pytest.mark.timeout(300)
def test_follower_in_another_machine(
    fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Issue 20's two machines on one: replay, lag, SIGKILL, cut and resync, promotion, chain."""
    lab, creds = fleet.lab, fleet.credentials
    began = time.monotonic()
    report: dict[str, Any] = {"frames": FRAMES, "frame_bytes": FRAME_BYTES, "hz": HZ}
    report_path = tmp_path_factory.getbasetemp() / "replication-netns.json"

    def save(**figures: Any) -> None:
        """Add to the report (written at once: a later failure keeps what was measured)."""
        report.update(figures, test_seconds=round(time.monotonic() - began, 1))
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        log.info("replication over a 1 Gbit/s veth link (%s): %s", report_path, report)

    primary = fleet.serve(lab.a, "primary", "--event-retention", str(RETENTION))
    recorder = Recorder(primary)
    recorder.start()
    follower = fleet.serve(lab.b, "follower", *fleet.follow_flags(primary))
    chained = fleet.serve(lab.a, "chained", *fleet.follow_flags(follower), port=PORT + 1)
    reads = fleet.directory / "reads.jsonl"
    writes = fleet.directory / "writes.jsonl"
    fleet.worker(lab.b, "read", address="unix://" + follower.socket,
                 token_file=creds.token_file, out=str(reads))
    writer_args = {"address": primary.address, "ca": creds.ca,
                   "token_file": creds.token_file, "out": str(writes)}

    def write(**args: Any) -> subprocess.Popen[bytes]:
        return fleet.worker(lab.a, "write", **writer_args, **args)

    def seen() -> list[dict[str, Any]]:
        return [record for record in records(reads) if "sequence" in record]

    def read_up_to(sequence: int) -> bool:
        events = seen()
        return bool(events) and events[-1]["sequence"] >= sequence

    def primary_events() -> dict[int, dict[str, Any]]:
        return {event["sequence"]: event for event in list(recorder.events)}

    # 1. Frames at 30 Hz, with replaces and deletes: the reader in b sees all, in order.
    assert follower.info().store_id == primary.info().store_id
    wait_for(lambda: any("open" in record for record in records(reads)),
             "the reader subscribed", fleet, START_TIMEOUT)
    writer = write(start=0, frames=FRAMES)
    assert writer.wait(FRAMES / HZ + 60) == 0, fleet.logs()
    streamed = primary.info().last_sequence
    wait_for(lambda: read_up_to(streamed), "the reader in b saw the stream", fleet)
    on_primary = primary_events()
    lags = [
        (event["seen"] - on_primary[event["sequence"]]["time"]) * 1e3
        for event in seen() if event["sequence"] <= streamed
    ]
    save(events=len(lags), lag_ms={"p50": round(percentile(lags, 0.5), 2),
                                   "p99": round(percentile(lags, 0.99), 2),
                                   "max": round(max(lags), 2)})

    # 2. SIGKILL the follower mid-stream and restart it: no gap, no duplicate.
    writer = write(start=FRAMES, frames=90)
    wait_for(lambda: read_up_to(streamed + 30), "the follower streamed again", fleet)
    follower.kill()
    fleet.start(follower)
    assert writer.wait(60) == 0, fleet.logs()
    resumed = primary.info().last_sequence
    wait_for(lambda: read_up_to(resumed), "the reader saw everything after the restart",
             fleet)
    on_primary = primary_events()
    events = [event for event in seen() if event["sequence"] <= resumed]
    assert [event["sequence"] for event in events] == list(range(1, resumed + 1))
    assert [event_key(event) for event in events] == [
        event_key(on_primary[sequence]) for sequence in range(1, resumed + 1)
    ]
    opened = [record for record in records(reads) if "open" in record]
    assert opened and all(record["colocated"] for record in opened), opened
    written = {record["ids"][0]: record["sha"] for record in records(writes)
               if record["op"] != "delete"}
    valued = [event for event in events if "sha" in event]
    assert valued, "the reader got no values"
    assert all(event["sha"] == written[event["id"]] for event in valued)
    views = sum(event["view"] for event in valued if event["name"].startswith("frame/"))
    assert views == sum(1 for event in valued if event["name"].startswith("frame/"))
    wait_for(lambda: converged(follower, primary), "the follower converged", fleet)
    wait_for(lambda: converged(chained, primary), "the chained follower converged", fleet)
    expected = [event_key(on_primary[sequence]) for sequence in range(1, resumed + 1)]
    assert history(follower, resumed) == expected
    assert history(chained, resumed) == expected

    # 3. Cut the link while the primary writes more than it retains: a resync after mend.
    resyncs = follower.info().replication.resyncs
    lab.cut()
    cut_at = time.monotonic()
    writer = write(start=FRAMES + 90, small=RETENTION + 100,
                   delete=[f"frame/{index:04d}" for index in range(100, 105)])
    assert writer.wait(60) == 0, fleet.logs()
    # Trimmed as the primary commits (in the background: async).
    wait_for(lambda: primary.info().oldest_sequence > resumed + 1,
             "the primary trimmed the history the follower needs", fleet)

    def noticed() -> bool:
        replication = follower.info().replication
        return replication.state != pb.REPLICATION_STATE_STREAMING or bool(
            replication.last_error)

    wait_for(noticed, "the follower noticed the cut link", fleet, NOTICE_TIMEOUT)
    cut_seconds = time.monotonic() - cut_at
    lab.mend()
    resync_seconds = wait_for(
        lambda: follower.info().replication.resyncs > resyncs and converged(follower, primary),
        "the follower resynced and converged after the cut", fleet,
    )
    wait_for(lambda: converged(chained, primary), "the chained follower converged again",
             fleet)
    save(cut_seconds_until_noticed=round(cut_seconds, 2),
         resync_seconds_after_mend=round(resync_seconds, 2))
    wait_for(lambda: follower.info().replication.state == pb.REPLICATION_STATE_STREAMING,
             "the follower streams again", fleet)

    # 4. Kill the primary: the follower serves reads, refuses writes; promoted, it writes.
    before = objects(follower)
    primary.kill()
    recorder.join(CALL_TIMEOUT)
    recorder.close()
    a_frame = next(oid for oid, meta in before.items() if meta[0] == "frame/0299")
    with follower.client() as client:
        assert digest(client.get(bytes.fromhex(a_frame))) == digest(frame(299))
        with pytest.raises(StoreError) as refused:
            client.put(b"refused", "refused")
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    channel, stub = follower.stub()
    with channel:
        with pytest.raises(grpc.RpcError) as raw_refusal:
            stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name="refused"), data=b"x"),
                     metadata=METADATA, timeout=CALL_TIMEOUT)
        assert raw_refusal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        trailers = dict(raw_refusal.value.trailing_metadata() or ())
        assert trailers.get(PRIMARY_TRAILER) == primary.address, trailers
        old_id = follower.info().store_id
        promoted = stub.Promote(pb.PromoteRequest(), metadata=METADATA, timeout=CALL_TIMEOUT)
    info = follower.info()
    assert promoted.store_id == info.store_id != old_id
    assert info.replication.role == pb.ROLE_PRIMARY
    with follower.client() as client:
        new_id = client.put(b"after promotion", "promoted")
        assert client.get(new_id) == b"after promotion"
        assert client.stat(new_id).sequence == promoted.last_sequence + 1
    wait_for(lambda: read_up_to(promoted.last_sequence + 1), "the reader saw the new write",
             fleet)
    wait_for(lambda: converged(chained, follower), "the chained follower converged on the"
             " promoted store", fleet)
    wait_for(lambda: chained.info().store_id == info.store_id, "the chained follower took"
             " the promoted store's store_id", fleet, NOTICE_TIMEOUT)

    save()

if __name__ == "__main__":
    WORKERS[sys.argv[1]](json.loads(sys.argv[2]))
