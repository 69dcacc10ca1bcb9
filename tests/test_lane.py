"""The local lane: the same calls over a plain unix socket, with the same answers."""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest

from improv_store.client import ObjectNotFound, StoreClient, Subscription
from improv_store.client.lane import LaneSubscription
from improv_store.client.transport import LaneTransport
from improv_store.protocol import OLDEST_SEQUENCE_TRAILER, ONE_WAY, read_lane_error
from improv_store.v1 import store_pb2 as pb

HEADER = struct.Struct("<IB")
Code = grpc.StatusCode
_CODES = {code.value[0]: code for code in Code}


class RawLane:
    """A lane connection that sends whatever bytes a test wants.

    Opened (LANE_METHOD_OPEN with ``token``) unless ``open_session`` is False.
    """

    def __init__(self, path: str, token: str = "", *, open_session: bool = True) -> None:
        self.socket = socket.socket(socket.AF_UNIX)
        self.socket.settimeout(10)
        self.socket.connect(path)
        self.session_id = ""
        if open_session:
            status, body = self.open(token)
            assert status == Code.OK, body
            self.session_id = pb.SessionResponse.FromString(body).session_id

    def open(self, token: str) -> tuple[grpc.StatusCode, bytes]:
        return self.call(pb.LANE_METHOD_OPEN, pb.LaneOpenRequest(token=token).SerializeToString())

    def read(self) -> tuple[grpc.StatusCode, bytes]:
        length, status = HEADER.unpack(self._exactly(HEADER.size))
        return _CODES[status], self._exactly(length - 1)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.socket.recv(size - len(data))
            if not chunk:
                raise ConnectionResetError("closed")
            data += chunk
        return data

    def send(self, method: int, body: bytes) -> None:
        self.socket.sendall(HEADER.pack(len(body) + 1, method) + body)

    def call(self, method: int, body: bytes) -> tuple[grpc.StatusCode, bytes]:
        self.send(method, body)
        return self.read()

    def subscribe(self, request: pb.SubscribeRequest | bytes) -> None:
        """Turn this connection into a subscription (LANE_METHOD_SUBSCRIBE)."""
        body = request if isinstance(request, bytes) else request.SerializeToString()
        self.send(pb.LANE_METHOD_SUBSCRIBE, body)

    def next_event(self) -> pb.Event:
        """The next event of this subscription, which must not have ended."""
        status, body = self.read()
        assert status == Code.OK, (status, body)
        return pb.SubscribeResponse.FromString(body).event

    def events(self) -> tuple[list[pb.Event], tuple[grpc.StatusCode, str]]:
        """A subscription's events up to the frame that ends it, and that frame's status
        and message."""
        events, status, error = self.ending()
        return events, (status, error.message)

    def ending(self) -> tuple[list[pb.Event], grpc.StatusCode, pb.LaneError]:
        """A subscription's events up to the frame that ends it, that frame's status, and
        its LaneError (message and trailer values)."""
        events = []
        while (frame := self.read())[0] == Code.OK:
            events.append(pb.SubscribeResponse.FromString(frame[1]).event)
        return events, frame[0], read_lane_error(frame[1])

    def hung_up(self) -> bool:
        try:
            return self.socket.recv(1) == b""
        except ConnectionResetError:
            return True


def subscription_path(subscription: Subscription) -> str:
    """Which way a Python subscription runs: "lane" or "grpc"."""
    return "lane" if isinstance(subscription._stream, LaneSubscription) else "grpc"


def lane_in_use(store: StoreClient) -> str:
    """The lane socket ``store`` makes its calls over, "" when it uses gRPC alone."""
    transport = store._route().transport
    return transport.path if isinstance(transport, LaneTransport) else ""


def lane_path(server: Any) -> str:
    with server.client(transfer="inline") as store:
        return store._grpc.call("Info", pb.InfoRequest()).lane_socket


def test_colocated_clients_use_the_lane(server: Any) -> None:
    """The lane sits beside the socket, owner-only, and a colocated client takes it, for
    its subscriptions too (a connection each, which is no session); an inline one does not."""
    path = lane_path(server)
    assert path == server.socket_path + ".lane"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with server.client() as store:
        object_id = store.put(np.arange(10))
        assert store.colocated and lane_in_use(store) == path
        assert (store.get(object_id) == np.arange(10)).all()
        assert store.info().sessions == 1  # the lane connection is the session
        with store.subscribe(since=1) as subscription:
            assert subscription_path(subscription) == "lane"
            assert next(iter(subscription)).object.id == object_id
            assert store.info().sessions == 1
    with server.client(transfer="inline") as store, store.subscribe() as subscription:
        assert subscription_path(subscription) == "grpc"
    with server.client() as store, server.client(transfer="inline") as observer:
        ids = store.put_many([b"first", b"call"])  # a batch as the first call: lane too
        assert observer.info().sessions == 1
        assert store.get_many(ids) == [b"first", b"call"]


def test_a_waiting_get_does_not_hold_up_the_clients_other_calls(server: Any) -> None:
    """The lane carries one call at a time, so a get that waits for its object goes by gRPC
    (with the lane's session, for a value in shared memory) and other threads go on."""
    with server.client() as store:
        assert store.colocated and lane_in_use(store)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(store.get("late", timeout=30)))
        waiter.start()
        for i in range(20):  # while the get waits
            store.put(b"meanwhile", name=f"other/{i}")
        assert waiter.is_alive() and not got
        store.put(np.arange(5), name="late")
        waiter.join(30)
    assert (got[0] == np.arange(5)).all()


def test_a_client_dropped_without_close_lets_its_lane_go(server: Any) -> None:
    """As a Plasma client did when collected: no thread or session is left behind, but a
    value read in place keeps its lane (and so its lease) until the value goes."""
    with server.client() as writer:
        frame_id = writer.put(np.arange(1 << 16, dtype="<u8"))
    for _ in range(5):
        client = server.client()
        client.put(b"x")
        del client
    client = server.client()
    frame = client.get(frame_id)
    del client
    gc.collect()

    def left(expected: tuple[int, int]) -> tuple[int, int]:
        """Open sessions, and lane threads in this process: ``expected`` once they reach
        it (the server sees a hang-up, a lane thread its next tick), else what is left."""
        deadline = time.monotonic() + 10
        while True:
            with server.client(transfer="inline") as observer:
                sessions = observer.info().sessions
            lanes = sum(t.name == "improv-store-lane" for t in threading.enumerate())
            if (sessions, lanes) == expected or time.monotonic() > deadline:
                return sessions, lanes
            time.sleep(0.05)

    assert left((1, 1)) == (1, 1)  # the frame's lane
    assert (frame == np.arange(1 << 16, dtype="<u8")).all()
    del frame
    gc.collect()
    assert left((0, 0)) == (0, 0)


def test_raw_lane_calls_and_statuses(server: Any) -> None:
    """Same messages, same statuses: Put, Get, NOT_FOUND, bad payloads, unknown methods."""
    lane = RawLane(lane_path(server))
    put = pb.PutRequest(spec=pb.ObjectSpec(name="raw"), data=b"over the lane")
    status, body = lane.call(pb.LANE_METHOD_PUT, put.SerializeToString())
    assert status == Code.OK
    object_id = pb.PutResponse.FromString(body).meta.id
    get = pb.GetRequest(ref=pb.ObjectRef(id=object_id))
    status, body = lane.call(pb.LANE_METHOD_GET, get.SerializeToString())
    assert status == Code.OK and pb.GetResponse.FromString(body).data == b"over the lane"

    missing = pb.GetRequest(ref=pb.ObjectRef(name="missing")).SerializeToString()
    status, body = lane.call(pb.LANE_METHOD_GET, missing)
    assert status == Code.NOT_FOUND
    assert read_lane_error(body).message == "no object named 'missing'"
    bad_id = pb.GetRequest(ref=pb.ObjectRef(id=b"short")).SerializeToString()
    assert lane.call(pb.LANE_METHOD_GET, bad_id)[0] == Code.INVALID_ARGUMENT
    assert lane.call(pb.LANE_METHOD_PUT, b"\xff\xff\xff garbage")[0] == Code.INVALID_ARGUMENT
    assert lane.call(99, b"")[0] == Code.UNIMPLEMENTED
    assert lane.call(pb.LANE_METHOD_UNSPECIFIED, b"")[0] == Code.UNIMPLEMENTED
    shm_get = pb.GetRequest(ref=pb.ObjectRef(id=object_id), transfer=pb.TRANSFER_SHM,
                            session_id=lane.session_id)
    status, body = lane.call(pb.LANE_METHOD_GET, shm_get.SerializeToString())
    assert status == Code.OK and pb.GetResponse.FromString(body).handle.length == 13
    with server.client() as store:
        assert store.get("raw") == b"over the lane"


@pytest.mark.parametrize("frame", [
    HEADER.pack(0, pb.LANE_METHOD_GET),  # no method byte
    HEADER.pack(1 << 30, pb.LANE_METHOD_PUT),  # beyond the message limit
])
def test_malformed_frames_end_only_that_connection(server: Any, frame: bytes) -> None:
    """A frame the server cannot accept ends that connection; everyone else goes on."""
    with server.client() as bystander:
        kept = bystander.put(np.ones(1 << 17))
        lane = RawLane(lane_path(server))
        lane.socket.sendall(frame)
        status, _ = lane.read()
        assert status == Code.RESOURCE_EXHAUSTED
        assert lane.hung_up()
        assert (bystander.get(kept) == 1).all()
    truncated = RawLane(lane_path(server))
    truncated.socket.sendall(HEADER.pack(100, pb.LANE_METHOD_PUT) + b"short")
    truncated.socket.close()
    with server.client() as store:
        assert store.info().object_count == 1


def hold_view_and_create_then_wait(address: str, ready: Any) -> None:
    """Child: take a lease and an unsealed create over the lane, then hang until killed."""
    store = StoreClient(address)
    frame = store.get("frame")
    creation = store.create((1 << 20,), "uint8", name="never")
    buffer = creation.__enter__()
    buffer[:] = 1
    ready.send((int(frame.sum()), lane_in_use(store)))
    time.sleep(600)


def test_sigkilled_lane_client_gives_everything_back(server: Any) -> None:
    """A lane client killed with SIGKILL holding a lease and a create: both are freed."""
    import multiprocessing

    with server.client() as store:
        store.put(np.ones(1 << 20, np.uint8), name="frame")
        gc.collect()
        baseline = store.info()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=hold_view_and_create_then_wait,
                                  args=(server.unix_address, child))
        process.start()
        total, path = parent.recv()
        assert total == 1 << 20 and path.endswith(".lane")
        busy = store.info()
        assert busy.arena_pinned >= 2 << 20 and busy.sessions == baseline.sessions + 1
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = store.info()
            if (info.arena_pinned, info.arena_used, info.sessions) == (
                baseline.arena_pinned, baseline.arena_used, baseline.sessions
            ):
                break
            time.sleep(0.05)
        assert (info.arena_pinned, info.arena_used, info.sessions) == (
            baseline.arena_pinned, baseline.arena_used, baseline.sessions
        )
        with pytest.raises(ObjectNotFound):
            store.stat("never")


def test_lane_off_on_either_side(start_server: Any) -> None:
    """--lane off on the server, or lane=False on the client: calls go through gRPC sessions."""
    server = start_server("--lane", "off")
    assert lane_path(server) == ""
    assert not os.path.exists(server.socket_path + ".lane")
    with server.client() as store:
        assert store.colocated and lane_in_use(store) == ""
        assert (store.get(store.put(np.arange(5))) == np.arange(5)).all()
        with store.subscribe() as subscription:
            assert subscription_path(subscription) == "grpc"
    other = start_server()
    with other.client(lane=False) as store:
        assert store.colocated and lane_in_use(store) == ""
        assert store.get(store.put(b"x" * 100_000)) == b"x" * 100_000
        with store.subscribe() as subscription:
            assert subscription_path(subscription) == "grpc"


def test_server_restart_reconnects_the_lane(start_server: Any) -> None:
    """After the server restarts, the same client's next call opens a new lane: a get,
    which retries with a new session, and a put, which sees the old lane is gone."""
    server = start_server(durability="sync")
    with server.client() as store:
        object_id = store.put(np.arange(100_000))
        assert server.stop() == 0
        restarted = start_server(durability="sync", data_dir=server.data_dir,
                                 socket_path=server.socket_path)
        assert restarted.process.poll() is None
        assert (store.get(object_id) == np.arange(100_000)).all()
        assert restarted.stop() == 0  # and again: now a put (no retry) comes first
        again = start_server(durability="sync", data_dir=server.data_dir,
                             socket_path=server.socket_path)
        assert again.process.poll() is None
        store.put(b"a put is the first call after this restart")


def test_lane_calls_are_counted_in_metrics(start_server: Any) -> None:
    """Operators see lane calls with the gRPC ones."""
    server = start_server()
    with server.client() as store:
        store.put(np.zeros(100_000))
        store.put(np.zeros(100_000))
        before = store.info().requests
        for _ in range(5):
            store.put(1)
        assert store.info().requests >= before + 5
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "improv-store"), "info",
         "--address", server.unix_address], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "requests:" in result.stdout


def test_lane_requires_the_token_and_the_opening_frame(start_server: Any, tmp_path: Any) -> None:
    """With --token-file, a lane connection opens only with the token (none or a wrong one
    is UNAUTHENTICATED and the server hangs up); without an opening frame it is refused too.
    A client given the token uses the lane (and the object index) as usual."""
    token_file = tmp_path / "token"
    token_file.write_text("lane-secret\n")
    token_file.chmod(0o600)
    server = start_server("--token-file", str(token_file))
    with server.client(token="lane-secret") as store:
        object_id = store.put(b"behind the token")
        path = lane_in_use(store)
        assert store.get(object_id) == b"behind the token"
        assert store.info().sessions == 1
    for token in ("", "wrong-secret"):
        refused = RawLane(path, open_session=False)
        assert refused.open(token)[0] == Code.UNAUTHENTICATED
        assert refused.hung_up()
    skipped = RawLane(path, open_session=False)
    put = pb.PutRequest(data=b"no opening").SerializeToString()
    assert skipped.call(pb.LANE_METHOD_PUT, put)[0] == Code.INVALID_ARGUMENT
    lane = RawLane(path, token="lane-secret")
    assert lane.call(pb.LANE_METHOD_INFO, b"")[0] == Code.OK


def wait_until(condition: Any, what: str, timeout: float = 20.0) -> None:
    """Poll until ``condition()`` holds (a bound against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_raw_lane_subscription(server: Any) -> None:
    """LANE_METHOD_SUBSCRIBE on a raw connection: replayed then live events, one frame each,
    filtered by prefix; the connection is no session; hanging up frees the subscriber."""
    with server.client(transfer="inline") as store:
        first = store.put(b"one", "raw/a")
        store.put(b"other", "elsewhere")
        baseline = store.info().sessions
        lane = RawLane(lane_path(server))
        lane.subscribe(pb.SubscribeRequest(prefix="raw/", since_sequence=1))
        replayed = lane.next_event()
        assert (replayed.sequence, replayed.meta.id) == (1, first.binary())
        wait_until(lambda: store.info().subscriber_count == 1, "the subscriber registered")
        assert store.info().sessions == baseline  # its session ended with LANE_METHOD_SUBSCRIBE
        live = store.put(b"two", "raw/b")
        event = lane.next_event()
        assert (event.sequence, event.meta.id, event.type) == (3, live.binary(), pb.EVENT_TYPE_PUT)
        lane.socket.close()
        wait_until(lambda: store.info().subscriber_count == 0, "the subscriber left")


@pytest.mark.parametrize("request_body,code", [
    (b"\xff\xff\xff garbage", Code.INVALID_ARGUMENT),
    (pb.SubscribeRequest(prefix="p" * 300).SerializeToString(), Code.INVALID_ARGUMENT),
    (pb.SubscribeRequest(transfer=pb.TRANSFER_SHM, session_id="bogus").SerializeToString(),
     Code.FAILED_PRECONDITION),
], ids=["malformed", "long prefix", "no such session"])
def test_raw_lane_subscription_refused(server: Any, request_body: bytes, code: Any) -> None:
    """A SubscribeRequest the server refuses is one frame with the status (as on gRPC), then
    the server hangs up; nothing is registered, and the server goes on serving."""
    lane = RawLane(lane_path(server))
    lane.subscribe(request_body)
    events, (status, message) = lane.events()
    assert (events, status) == ([], code), message
    assert message
    assert lane.hung_up()
    with server.client() as store:
        assert store.info().subscriber_count == 0
        with store.subscribe(since=store.info().last_sequence + 1) as subscription:
            object_id = store.put(b"still serving", "after")
            assert next(iter(subscription)).object.id == object_id


def test_raw_lane_subscription_carries_trailer_values(start_server: Any) -> None:
    """History that retention dropped: the frame that refuses the subscription says
    OUT_OF_RANGE, and its LaneError names the oldest sequence retained, as the gRPC
    trailer does; subscribing from there replays it."""
    server = start_server("--event-retention", "3", durability="none")
    with server.client(transfer="inline") as store:
        for index in range(6):
            store.put(b"x", f"n{index}")
        oldest = store.info().oldest_sequence
    assert oldest == 4
    refused = RawLane(lane_path(server))
    refused.subscribe(pb.SubscribeRequest(since_sequence=1))
    events, status, error = refused.ending()
    assert (events, status) == ([], Code.OUT_OF_RANGE), error
    assert dict(error.trailing_metadata) == {OLDEST_SEQUENCE_TRAILER: str(oldest)}
    assert "no longer retained" in error.message
    assert refused.hung_up()
    replay = RawLane(lane_path(server))
    replay.subscribe(pb.SubscribeRequest(since_sequence=oldest))
    assert [replay.next_event().sequence for _ in range(3)] == [4, 5, 6]


def answered(lane: RawLane) -> bool:
    """Whether an answer is waiting on ``lane`` (without reading it)."""
    return bool(select.select([lane.socket], [], [], 0)[0])


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_a_waiting_call_holds_up_no_other_connection(start_server: Any, durability: str) -> None:
    """One thread serves every lane connection: a Get that waits for its object runs
    elsewhere, so other connections' puts, gets, deletes and creates go on meanwhile;
    it is answered when the object arrives."""
    server = start_server(durability=durability)
    waiting, busy = RawLane(lane_path(server)), RawLane(lane_path(server))
    wait = pb.GetRequest(ref=pb.ObjectRef(name="later"))
    wait.wait.FromSeconds(30)
    waiting.send(pb.LANE_METHOD_GET, wait.SerializeToString())
    for i in range(20):
        put = pb.PutRequest(spec=pb.ObjectSpec(name=f"other{i}"), data=bytes([i]) * 100)
        status, body = busy.call(pb.LANE_METHOD_PUT, put.SerializeToString())
        assert status == Code.OK, body
        get = pb.GetRequest(ref=pb.ObjectRef(name=f"other{i}"))
        status, body = busy.call(pb.LANE_METHOD_GET, get.SerializeToString())
        assert status == Code.OK and pb.GetResponse.FromString(body).data == bytes([i]) * 100
    delete = pb.DeleteRequest(ref=pb.ObjectRef(name="other0"))
    assert busy.call(pb.LANE_METHOD_DELETE, delete.SerializeToString())[0] == Code.OK
    assert not answered(waiting)
    put = pb.PutRequest(spec=pb.ObjectSpec(name="later"), data=b"at last")
    assert busy.call(pb.LANE_METHOD_PUT, put.SerializeToString())[0] == Code.OK
    status, body = waiting.read()
    assert status == Code.OK and pb.GetResponse.FromString(body).data == b"at last"
    # The connection that waited goes on as before.
    assert waiting.call(pb.LANE_METHOD_INFO, b"")[0] == Code.OK


def test_frames_in_pieces_and_back_to_back(server: Any) -> None:
    """A frame that arrives a few bytes at a time is answered once whole; a one-way frame
    and a call sent together are both handled, in order, and only the call answered."""
    lane = RawLane(lane_path(server))
    put = pb.PutRequest(spec=pb.ObjectSpec(name="pieces"), data=b"p" * 5000)
    frame = HEADER.pack(len(put.SerializeToString()) + 1, pb.LANE_METHOD_PUT)
    frame += put.SerializeToString()
    for start in range(0, len(frame), 1000):
        assert not answered(lane)
        lane.socket.sendall(frame[start:start + 1000])
        time.sleep(0.01)
    status, body = lane.read()
    assert status == Code.OK
    object_id = pb.PutResponse.FromString(body).meta.id

    get = pb.GetRequest(ref=pb.ObjectRef(id=object_id), transfer=pb.TRANSFER_SHM,
                        session_id=lane.session_id)
    status, body = lane.call(pb.LANE_METHOD_GET, get.SerializeToString())
    lease_id = pb.GetResponse.FromString(body).handle.lease_id
    assert status == Code.OK and lease_id
    with server.client() as store:
        pinned = store.info().arena_pinned
        assert pinned > 0
        release = pb.ReleaseRequest(session_id=lane.session_id, lease_ids=[lease_id])
        info = pb.InfoRequest()
        lane.socket.sendall(
            HEADER.pack(len(release.SerializeToString()) + 1, pb.LANE_METHOD_RELEASE | ONE_WAY)
            + release.SerializeToString()
            + HEADER.pack(len(info.SerializeToString()) + 1, pb.LANE_METHOD_INFO)
        )
        status, body = lane.read()
        assert status == Code.OK and pb.InfoResponse.FromString(body).version
        assert store.info().arena_pinned < pinned
        assert not answered(lane)


def test_a_client_that_reads_nothing_holds_up_no_one(server: Any) -> None:
    """A client that sends calls whose answers overflow its socket and reads none of them:
    the rest of each answer waits on a worker thread, not on the thread that serves every
    connection, so another client's calls go on; the slow client's answers all arrive,
    in order, once it reads."""
    with server.client() as store:
        store.put(bytes(range(256)) * 240, name="sixty")  # 60 KiB: answered inline
    slow, other = RawLane(lane_path(server)), RawLane(lane_path(server))
    get = pb.GetRequest(ref=pb.ObjectRef(name="sixty")).SerializeToString()
    for _ in range(40):  # 2.4 MB of answers, far more than a socket buffer holds
        slow.send(pb.LANE_METHOD_GET, get)
    for i in range(20):
        put = pb.PutRequest(spec=pb.ObjectSpec(name=f"other{i}"), data=b"x" * 100)
        assert other.call(pb.LANE_METHOD_PUT, put.SerializeToString())[0] == Code.OK
    time.sleep(0.5)  # the slow client still reads nothing
    assert other.call(pb.LANE_METHOD_INFO, b"")[0] == Code.OK
    for _ in range(40):
        status, body = slow.read()
        assert status == Code.OK
        assert pb.GetResponse.FromString(body).data == bytes(range(256)) * 240
    assert slow.call(pb.LANE_METHOD_INFO, b"")[0] == Code.OK
