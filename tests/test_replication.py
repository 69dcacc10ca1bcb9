"""Followers (``serve --follow``): a store that replays its primary under the primary's IDs,
sequence numbers and identity; restarts and crashes without a gap or a repeat; snapshot
resyncs when history is gone or the primary started over; promotion; chains.

Real servers on temporary sockets with real LMDB; writers in separate processes where a
follower must keep up with them. The two-machine version (network and IPC namespaces,
TLS and a token) is tests/test_replication_netns.py.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, free_port
from test_access import Pki, pki  # noqa: F401  (the fixture)

from improv_store.client import NotPrimaryError, StoreClient
from improv_store.protocol import PRIMARY_TRAILER, SHM_DIR
from improv_store.service.locality import store_prefix
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

Start = Callable[..., ServerProcess]
CONVERGE_TIMEOUT = 60.0


def stub(server: ServerProcess) -> store_pb2_grpc.StoreServiceStub:
    channel = grpc.insecure_channel(server.unix_address)
    return store_pb2_grpc.StoreServiceStub(channel)


def info(server: ServerProcess) -> pb.InfoResponse:
    return stub(server).Info(pb.InfoRequest(), timeout=10)


def history(server: ServerProcess, since: int = 1) -> list[tuple[Any, ...]]:
    """Every retained event from ``since`` to the store's last sequence, as plain tuples."""
    last = info(server).last_sequence
    if last < since:
        return []
    found = []
    call = stub(server).Subscribe(pb.SubscribeRequest(since_sequence=since), timeout=30)
    for response in call:
        event = response.event
        found.append((event.sequence, event.type, event.meta.id, event.meta.crc32c,
                      tuple(event.replaced_ids)))
        if event.sequence >= last:
            call.cancel()
            break
    return found


def objects(server: ServerProcess) -> dict[bytes, tuple[Any, ...]]:
    """Every stored object's identity: name, size, checksum, sequence, creation time."""
    held = {}
    token = ""
    while True:
        page = stub(server).List(pb.ListRequest(page_size=1000, page_token=token), timeout=30)
        for meta in page.objects:
            held[meta.id] = (meta.name, meta.size, meta.crc32c, meta.sequence,
                             meta.create_time.ToNanoseconds(), dict(meta.labels))
        token = page.next_page_token
        if not token:
            return held


def converge(primary: ServerProcess, follower: ServerProcess,
             timeout: float = CONVERGE_TIMEOUT) -> pb.InfoResponse:
    """Wait until the follower has applied the primary's last change and streams on."""
    deadline = time.monotonic() + timeout
    while True:
        target = info(primary).last_sequence
        state = info(follower)
        replication = state.replication
        if (replication.applied_sequence >= target
                and replication.state == pb.REPLICATION_STATE_STREAMING):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"follower at {replication.applied_sequence} of {target}"
                        f" ({pb.ReplicationState.Name(replication.state)},"
                        f" {replication.last_error!r}):\n{follower.log()[-3000:]}")
        time.sleep(0.05)


def assert_same(primary: ServerProcess, follower: ServerProcess) -> None:
    assert objects(follower) == objects(primary)
    assert info(follower).store_id == info(primary).store_id


def follow(start: Start, primary: ServerProcess, *extra: str, **kwargs: Any) -> ServerProcess:
    return start("--follow", primary.unix_address, *extra, **kwargs)


def fill(client: StoreClient, count: int, name: str = "obj", size: int = 1000) -> list[Any]:
    return [client.put(np.full(size // 8, index, dtype="<f8"), name=f"{name}{index % 7}")
            for index in range(count)]


WRITER = """
import sys, time
import numpy as np
from improv_store.client import StoreClient
address, seconds, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
with StoreClient(address) as store:
    end = time.monotonic() + seconds
    index = 0
    while time.monotonic() < end:
        oid = store.put(np.full(size // 8, index, dtype="<f8"), name=f"w{index % 5}")
        if index % 3 == 2:
            store.delete(oid)
        if index % 10 == 9:
            store.replace(f"w{index % 5}", np.arange(16))
        index += 1
    print(index)
"""


def writer(primary: ServerProcess, seconds: float, size: int = 4096) -> subprocess.Popen:
    """A separate process writing (puts, deletes, replaces) to the primary for ``seconds``."""
    return subprocess.Popen([sys.executable, "-c", WRITER, primary.unix_address, str(seconds),
                             str(size)], stdout=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> int:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return int(out)


# -- copying --------------------------------------------------------------------------


def test_follower_replays_history_then_follows_live(start_server: Start) -> None:
    primary = start_server()
    with primary.client() as store:
        ids = fill(store, 40)
        small_bytes = store.put(b"raw bytes", name="raw")
        labelled = store.put(np.arange(10), name="lab", labels={"a": "1", "b": "2"})
        streamed = store.put(np.random.default_rng(1).random(3 << 20))  # 24 MiB: GetStream
        empty = store.put(b"", name="empty")
        store.replace("obj0", np.zeros(4))
        store.delete(ids[3])
        store.delete_matching("obj5")
        follower = follow(start_server, primary)
        converge(primary, follower)
        for index in range(30):  # live, after the follower caught up
            store.put(np.full(64, index), name="live")
        store.replace("live", np.ones(8))
        converge(primary, follower)
        assert_same(primary, follower)
        assert history(follower) == history(primary)
        with follower.client() as reader:
            assert reader.colocated
            assert reader.get(small_bytes) == b"raw bytes"
            assert reader.get(empty) == b""
            view = reader.get(streamed)
            assert not view.flags.writeable and not view.flags.owndata  # in shared memory
            np.testing.assert_array_equal(view, store.get(streamed))
            np.testing.assert_array_equal(reader.get("live"), np.ones(8))
            np.testing.assert_array_equal(reader.get(labelled), np.arange(10))
    state = info(follower)
    assert state.replication.role == pb.ROLE_FOLLOWER
    assert state.replication.primary == primary.unix_address
    assert state.replication.lag_events == 0
    assert state.replication.resyncs == 0
    assert info(primary).replication.role == pb.ROLE_PRIMARY


def test_follower_refuses_writes_naming_its_primary(start_server: Start) -> None:
    primary = start_server()
    with primary.client() as store:
        kept = store.put(b"x", name="kept")
    follower = follow(start_server, primary)
    converge(primary, follower)
    with follower.client() as client:
        attempts = [
            lambda: client.put(b"y"),
            lambda: client.put(np.zeros(1 << 20)),  # colocated: Create / Seal
            lambda: client.put(np.zeros(3 << 20)),  # large
            lambda: client.put_many([b"a", b"b"]),
            lambda: client.replace("kept", b"z"),
            lambda: client.delete(kept),
            lambda: client.delete_matching("k"),
        ]
        for attempt in attempts:
            with pytest.raises(NotPrimaryError) as refused:
                attempt()
            assert refused.value.primary == primary.unix_address
        assert client.get("kept") == b"x"
    with pytest.raises(grpc.RpcError) as raw:
        stub(follower).Put(pb.PutRequest(data=b"q"), timeout=10)
    assert raw.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (PRIMARY_TRAILER, primary.unix_address) in raw.value.trailing_metadata()
    assert objects(follower) == objects(primary)


def test_many_small_and_one_large_object_arrive_intact(start_server: Start) -> None:
    primary = start_server("--memory", "512M")
    follower = follow(start_server, primary, "--memory", "512M")
    with primary.client() as store:
        for start in range(0, 5000, 500):
            store.put_many([np.full(16, index) for index in range(start, start + 500)])
        big = store.put(np.random.default_rng(2).integers(0, 255, 96 << 20, dtype=np.uint8))
        converge(primary, follower)
        with follower.client() as reader:
            np.testing.assert_array_equal(reader.get(big), store.get(big))
    assert objects(follower) == objects(primary)


# -- restarts and crashes ------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_follower_restarted_mid_stream_has_no_gap_and_no_repeat(
    start_server: Start, stop: str
) -> None:
    primary = start_server()
    follower = follow(start_server, primary)
    busy = writer(primary, seconds=4)
    time.sleep(1.5)
    if stop == "sigkill":
        follower.kill()
    else:
        assert follower.stop() == 0
    time.sleep(0.5)
    restarted = follow(start_server, primary, data_dir=follower.data_dir,
                       socket_path=follower.socket_path)
    finish(busy)
    converge(primary, restarted)
    assert history(restarted) == history(primary)  # every sequence once, in order
    assert_same(primary, restarted)
    assert info(restarted).replication.resyncs == 0


def test_a_subscriber_resumes_on_a_follower_that_lost_uncommitted_events(
    start_server: Start,
) -> None:
    """A follower that crashed before committing what its subscribers saw applies it again;
    a subscriber resuming past its last committed sequence waits for those events instead
    of hearing the sequence was never issued."""
    primary = start_server()
    follower = follow(start_server, primary, "--commit-interval", "3600")
    with primary.client() as store:
        fill(store, 30)
    seen = converge(primary, follower).last_sequence
    follower.kill()
    restarted = follow(start_server, primary, "--commit-interval", "3600",
                       data_dir=follower.data_dir, socket_path=follower.socket_path)
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while True:  # UNAVAILABLE until it has reached its primary, then the events come
        try:
            call = stub(restarted).Subscribe(pb.SubscribeRequest(since_sequence=seen - 2),
                                             timeout=30)
            sequences = [next(call).event.sequence for _ in range(3)]
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert time.monotonic() < deadline
            time.sleep(0.05)
    call.cancel()
    assert sequences == [seen - 2, seen - 1, seen]
    with pytest.raises(grpc.RpcError) as never:
        next(stub(restarted).Subscribe(pb.SubscribeRequest(since_sequence=seen + 100),
                                       timeout=10))
    assert never.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_primary_crash_that_loses_applied_changes_makes_the_follower_resync(
    start_server: Start,
) -> None:
    """An async primary killed before its commit loses changes its follower applied; on
    its return the follower finds its last event missing there and copies a snapshot."""
    primary = start_server("--commit-interval", "3600")
    with primary.client() as store:
        fill(store, 5)  # never committed: the interval is an hour
    follower = follow(start_server, primary)
    converge(primary, follower)
    primary.kill()
    back = start_server("--commit-interval", "3600", data_dir=primary.data_dir,
                        socket_path=primary.socket_path)
    # Noticed with no new write: the primary does not replay the last event applied here.
    deadline = time.monotonic() + 30
    while info(follower).replication.resyncs == 0:
        assert time.monotonic() < deadline, follower.log()[-3000:]
        time.sleep(0.1)
    assert converge(back, follower).replication.last_error == ""
    assert objects(follower) == objects(back) == {}
    with back.client() as store:
        store.put(b"after the crash", name="after")
    converge(back, follower)
    assert_same(back, follower)
    assert info(follower).replication.resyncs == 1


# -- resync ---------------------------------------------------------------------------------


def test_follower_away_longer_than_history_resyncs_and_converges(start_server: Start) -> None:
    primary = start_server("--event-retention", "20")
    with primary.client() as store:
        ids = fill(store, 30)
        follower = follow(start_server, primary)
        converge(primary, follower)
        assert follower.stop() == 0
        store.delete(ids[-1])
        store.replace("obj2", np.arange(3))
        fill(store, 60, name="new")
        restarted = follow(start_server, primary, data_dir=follower.data_dir,
                           socket_path=follower.socket_path)
        state = converge(primary, restarted)
    assert state.replication.resyncs == 1
    assert_same(primary, restarted)
    # History before the snapshot is gone here too, and says so.
    oldest = info(restarted).oldest_sequence
    assert oldest > 1
    with pytest.raises(grpc.RpcError) as gone:
        history(restarted, since=1)
    assert gone.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with primary.client() as store:  # and it follows live again
        store.put(b"later", name="later")
    converge(primary, restarted)
    assert history(restarted, since=oldest) == history(primary, since=oldest)


def test_resync_under_steady_writes_completes_without_starting_over(start_server: Start) -> None:
    """The snapshot copy is paced slower than the writes trim the primary's history; the
    follower copies what changed since and converges instead of looping."""
    primary = start_server("--event-retention", "30")
    with primary.client() as store:
        for index in range(40):
            store.put(np.full(1 << 17, index, dtype=np.uint8), name=f"seed{index}")  # 5 MiB
    busy = writer(primary, seconds=8, size=512)
    time.sleep(0.5)
    follower = follow(start_server, primary, "--resync-rate", "2M")  # the copy takes ~2.5 s
    streaming_while_writes_go_on = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and busy.poll() is None:
        if info(follower).replication.state == pb.REPLICATION_STATE_STREAMING:
            streaming_while_writes_go_on = True
            break
        time.sleep(0.05)
    finish(busy)
    assert streaming_while_writes_go_on, follower.log()[-3000:]
    state = converge(primary, follower)
    assert state.replication.resyncs == 1
    assert_same(primary, follower)


def test_primary_that_started_over_is_copied_anew(start_server: Start, tmp_path: Any) -> None:
    primary = start_server(durability="none")
    with primary.client() as store:
        fill(store, 10)
    follower = follow(start_server, primary)
    converge(primary, follower)
    first_id = info(follower).store_id
    assert primary.stop() == 0
    again = start_server(durability="none", socket_path=primary.socket_path)
    with again.client() as store:
        store.put(b"new store", name="fresh")
    converge(again, follower)
    assert info(follower).store_id == info(again).store_id != first_id
    assert_same(again, follower)
    assert info(follower).replication.resyncs == 1


# -- promotion, chains, operation -------------------------------------------------------------


def test_promote_after_the_primary_is_lost(start_server: Start) -> None:
    primary = start_server()
    with primary.client() as store:
        kept = store.put(np.arange(100), name="kept")
        fill(store, 20)
    follower = follow(start_server, primary)
    other = follow(start_server, primary)
    converge(primary, follower)
    converge(primary, other)
    old_id = info(follower).store_id
    primary.kill()
    time.sleep(1.5)
    state = info(follower).replication
    assert state.state == pb.REPLICATION_STATE_CONNECTING and state.last_error
    with follower.client() as client:
        np.testing.assert_array_equal(client.get(kept), np.arange(100))  # still serves reads
        with pytest.raises(NotPrimaryError):
            client.put(b"too early")
        promoted = stub(follower).Promote(pb.PromoteRequest(), timeout=30)
        assert promoted.store_id != old_id
        assert promoted.last_sequence == info(follower).last_sequence
        new = client.put(b"now writable", name="new")
        assert client.get(new) == b"now writable"
    after = info(follower)
    assert after.store_id == promoted.store_id
    assert after.replication.role == pb.ROLE_PRIMARY
    assert after.last_sequence == promoted.last_sequence + 1
    with pytest.raises(grpc.RpcError) as again:
        stub(follower).Promote(pb.PromoteRequest(), timeout=10)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert after.replication.promoted_from == old_id
    assert after.replication.promoted_at_sequence == promoted.last_sequence
    # The history up to the promotion goes on: a subscriber resumes with the old identity,
    # and the other follower, pointed at the promoted store, streams on without a resync.
    resumed = stub(follower).Subscribe(
        pb.SubscribeRequest(since_sequence=promoted.last_sequence, store_id=old_id), timeout=10)
    assert [next(resumed).event.sequence, next(resumed).event.sequence] == [
        promoted.last_sequence, promoted.last_sequence + 1]
    resumed.cancel()
    assert other.stop() == 0
    repointed = follow(start_server, follower, data_dir=other.data_dir)
    state = converge(follower, repointed)
    assert state.replication.resyncs == 0 and state.store_id == promoted.store_id
    assert_same(follower, repointed)
    assert history(repointed) == history(follower)
    # The promoted store keeps its identity and its writes across a restart, as a primary.
    assert follower.stop() == 0
    restarted = start_server(data_dir=follower.data_dir)
    assert info(restarted).store_id == promoted.store_id
    with restarted.client() as client:
        assert client.get("new") == b"now writable"


def test_promote_on_a_primary_is_refused(start_server: Start) -> None:
    primary = start_server()
    with pytest.raises(grpc.RpcError) as refused:
        stub(primary).Promote(pb.PromoteRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_chain_of_followers_converges(start_server: Start) -> None:
    primary = start_server()
    middle = follow(start_server, primary)
    last = start_server("--follow", middle.tcp_address)
    with primary.client() as store:
        fill(store, 50)
        store.replace("obj1", b"replaced")
        store.put(np.zeros(2 << 20))
    busy = writer(primary, seconds=2)
    finish(busy)
    converge(primary, middle)
    converge(middle, last)
    assert_same(primary, last)
    assert history(last) == history(primary)
    assert info(last).replication.primary == middle.tcp_address


def test_info_and_metrics_show_lag_and_resyncs(start_server: Start) -> None:
    primary = start_server()
    port = free_port()
    follower = follow(start_server, primary, "--metrics-listen", f"127.0.0.1:{port}")
    with primary.client() as store:
        fill(store, 10)
    converge(primary, follower)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    applied = info(follower).replication.applied_sequence
    assert f"improv_store_replication_applied_sequence {float(applied)}" in text
    assert "improv_store_replication_lag_events 0.0" in text
    assert "improv_store_replication_state 2.0" in text
    assert "improv_store_replication_resyncs_total 0.0" in text


def test_follower_reaches_a_primary_with_mutual_tls_and_a_token(
    start_server: Start, pki: Pki, tmp_path: Any  # noqa: F811
) -> None:
    """The follower is a client like any other: it presents a token and a certificate, and
    checks the primary's; with the wrong token it says why it cannot follow."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it\n")
    wrong.chmod(0o600)
    primary = start_server("--token-file", str(token), "--tls-cert", pki.server_cert,
                           "--tls-key", pki.server_key, "--tls-client-ca", pki.ca)
    tls = ("--follow-tls-ca", pki.ca, "--follow-tls-server-name", "localhost",
           "--follow-tls-cert", pki.client_cert, "--follow-tls-key", pki.client_key)
    follower = start_server("--follow", primary.tcp_address, "--follow-token-file", str(token),
                            *tls)
    refused = start_server("--follow", primary.tcp_address, "--follow-token-file", str(wrong),
                           *tls)
    with primary.client(token_file=str(token)) as store:
        ids = {store.put(np.full(100, index), name="secure") for index in range(20)}
        last = store.info().last_sequence
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while info(follower).replication.applied_sequence < last:
        assert time.monotonic() < deadline, follower.log()[-3000:]
        time.sleep(0.05)
    with follower.client() as reader:
        assert {entry.id for entry in reader.list()} == ids
    while not info(refused).replication.last_error:
        assert time.monotonic() < deadline, refused.log()[-3000:]
        time.sleep(0.05)
    assert "UNAUTHENTICATED" in info(refused).replication.last_error
    assert info(refused).last_sequence == 0


def test_follower_of_nothing_reports_why(start_server: Start) -> None:
    follower = start_server("--follow", "127.0.0.1:9")  # discard port: nobody answers
    deadline = time.monotonic() + 20
    while not (state := info(follower).replication).last_error:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state.state == pb.REPLICATION_STATE_CONNECTING
    assert "UNAVAILABLE" in state.last_error


@pytest.mark.parametrize(("flags", "message"), [
    (("--follow-tls-cert", "/nonexistent"), "follow-tls-key"),
    (("--follow-token-file", "/nonexistent"), "cannot read the token file"),
    (("--follow-tls-ca", "/nonexistent"), "cannot start.*nonexistent"),
    (("--resync-rate", "-1"), "resync_rate"),
])
def test_bad_follow_options_fail_at_start(
    start_server: Start, flags: tuple[str, ...], message: str, tmp_path: Any
) -> None:
    """A clear error, and nothing left in /dev/shm."""
    data_dir = str(tmp_path / "refused")
    with pytest.raises(RuntimeError, match=message):
        start_server("--follow", "127.0.0.1:9", *flags, data_dir=data_dir)
    assert not glob.glob(os.path.join(SHM_DIR, store_prefix(data_dir) + "*"))
