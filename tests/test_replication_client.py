"""Clients of a primary and its followers: several addresses, NotPrimaryError, the
``improv-store promote`` and ``info`` commands, and improv's drop-in reading a follower.

Every store is a real server. On one machine every store shares the test's /dev/shm;
to stand for a primary on another machine, ``as_remote`` removes a server's locality
token, so no client (the follower included) can prove it shares that server's memory,
and payloads to and from it travel inline, as they would over a network.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from conftest import ServerProcess
from test_cli import run_cli

from improv_store.client import (
    NotPrimaryError,
    ObjectNotFound,
    StoreClient,
    StoreError,
    StoreUnavailable,
)
from improv_store.client.improv import RedisStoreInterface, StoreInterface
from improv_store.protocol import SHM_DIR
from improv_store.service.locality import TOKEN_SUFFIX, store_prefix

REPLICATION_DEADLINE = 30.0
EXIT_UNREACHABLE = 3
EXIT_STORE_ERROR = 4
T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout: float = REPLICATION_DEADLINE) -> T:
    """``check()``'s result once it returns without raising a StoreError or AssertionError
    and not None; fails naming ``what`` (and the last failure) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result is not None:
                return result
            failure = "nothing yet"
        except (StoreError, AssertionError) as exc:
            failure = repr(exc)
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s ({failure})")
        time.sleep(0.05)


def as_remote(server: ServerProcess) -> ServerProcess:
    """Make ``server`` look like another machine's to every client: remove its token."""
    os.unlink(os.path.join(SHM_DIR, store_prefix(server.data_dir) + TOKEN_SUFFIX))
    return server


def follower_of(start: Callable[..., ServerProcess], primary: ServerProcess) -> ServerProcess:
    """A follower of ``primary`` (over its unix socket), streaming once this returns."""
    follower = start("--follow", primary.unix_address)
    with follower.client() as store:
        eventually(
            lambda: store.info().replication.state == "streaming" or None,
            f"the follower streaming ({follower.log()[-2000:]})",
        )
    return follower


@pytest.fixture
def remote_primary(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A primary whose shared memory no client can read (another machine's, as it were)."""
    return as_remote(start_server())


@pytest.fixture
def follower(
    start_server: Callable[..., ServerProcess], remote_primary: ServerProcess
) -> ServerProcess:
    """A follower of ``remote_primary``, colocated with the tests."""
    return follower_of(start_server, remote_primary)


def replicated(store: StoreClient, object_id: Any) -> Any:
    """The object once the follower behind ``store`` has it (the server waits for it)."""
    return store.get(object_id, timeout=REPLICATION_DEADLINE)


# -- several addresses ------------------------------------------------------------------


def test_reads_the_colocated_follower_and_writes_the_remote_primary(
    remote_primary: ServerProcess, follower: ServerProcess
) -> None:
    """Listed after the primary, the colocated follower is still the one read, in place;
    puts (inline, streamed, batched, created, replaced) and deletes reach the primary."""
    small = np.arange(100, dtype=np.int32)
    large = np.random.default_rng(1).integers(0, 255, 5 << 20, dtype=np.uint8)  # > 4 MiB
    with (
        StoreClient(f"{remote_primary.tcp_address},{follower.unix_address}") as store,
        remote_primary.client(tcp=True) as primary,
    ):
        assert store.colocated
        assert store.info().replication.role == "follower"
        with store.subscribe("rc_") as events:
            ids = [store.put(small, "rc_small"), store.put(large, "rc_large")]
            ids += store.put_many([b"one", b"two"], ["rc_one", "rc_two"])
            creation = store.create((64, 64), "float32", "rc_created")
            with creation as frame:
                frame[:] = 7
            ids += [creation.id, store.replace("rc_small", b"newer")]
            # Each is on the primary as soon as the call returns...
            np.testing.assert_array_equal(primary.get(ids[1]), large)
            np.testing.assert_array_equal(primary.get("rc_created"), np.full((64, 64), 7))
            # ...and read from the follower, the large one in place, once replicated.
            value = replicated(store, ids[1])
            np.testing.assert_array_equal(value, large)
            assert not value.flags.writeable
            assert replicated(store, ids[2]) == b"one"
            assert replicated(store, ids[-1]) == b"newer"
            # The follower's subscribers see the primary's history, numbered as there.
            stream = iter(events)
            seen = [next(stream) for _ in ids]
        assert [event.object.id for event in seen] == ids
        assert [event.sequence for event in seen[1:]] == [
            primary.stat(object_id).sequence for object_id in ids[1:]
        ]
        assert seen[-1].type == "replace" and seen[-1].replaced == (ids[0],)
        assert store.delete(ids[2]) == [ids[2]]
        assert store.delete_matching("rc_t") == 1
        with pytest.raises(ObjectNotFound):
            primary.get(ids[2])
        eventually(lambda: _gone(store, ids[2]), "the delete reaching the follower")


def _gone(store: StoreClient, object_id: Any) -> bool | None:
    """True once ``store`` no longer has the object."""
    try:
        store.stat(object_id)
    except ObjectNotFound:
        return True
    return None


def test_colocated_primary_and_follower(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Both colocated: reads go to the first listed (the follower), writes to the primary,
    through its shared memory."""
    primary = start_server()
    follower = follower_of(start_server, primary)
    frame = np.random.default_rng(2).random((256, 256))  # 512 KiB: through shared memory
    with StoreClient([follower.unix_address, primary.unix_address]) as store:
        assert store.info().replication.role == "follower"
        object_id = store.put(frame, "cc_frame")
        creation = store.create(1 << 16, "uint8", "cc_created")
        with creation as created:
            created[:] = 3
        with primary.client() as direct:
            np.testing.assert_array_equal(direct.get(object_id), frame)
        value = replicated(store, object_id)
        np.testing.assert_array_equal(value, frame)
        assert not value.flags.writeable  # read in place, from the follower's memory
        assert replicated(store, creation.id)[5] == 3


def test_first_reachable_and_the_primary_a_follower_names(
    start_server: Callable[..., ServerProcess],
    remote_primary: ServerProcess,
    follower: ServerProcess,
    tmp_path: Any,
) -> None:
    """With no colocated store (inline transfer), reads go to the first that answers. The
    primary is found among the addresses, or at the address the follower names, also
    through a follower of the follower."""
    nobody = f"unix://{tmp_path}/nobody.sock"
    chained = start_server("--follow", follower.unix_address)
    cases = [
        ([nobody, follower.tcp_address, remote_primary.tcp_address], "follower"),
        ([nobody, follower.tcp_address], "follower"),  # the primary is not listed
        ([chained.unix_address, nobody], "follower"),  # ...and two hops away
        ([remote_primary.tcp_address, follower.unix_address], "primary"),
    ]
    for index, (addresses, role) in enumerate(cases):
        with StoreClient(addresses, transfer="inline") as store:
            store.wait_until_ready(REPLICATION_DEADLINE)  # one answering is enough
            assert store.health() == "SERVING"
            assert not store.colocated
            assert store.info().replication.role == role, addresses
            object_id = store.put(f"case {index}".encode(), "fr_case")
            assert replicated(store, object_id) == f"case {index}".encode()
        with remote_primary.client() as primary:
            assert primary.get(object_id) == f"case {index}".encode()


def test_addresses_from_the_environment(
    remote_primary: ServerProcess, follower: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IMPROV_STORE_ADDRESS takes several addresses, separated by commas, as does the CLI."""
    addresses = f"{remote_primary.tcp_address}, {follower.socket_path}"
    monkeypatch.setenv("IMPROV_STORE_ADDRESS", addresses)
    with StoreClient() as store:
        assert store.info().replication.role == "follower"
        object_id = store.put(b"from env")
    result = run_cli("put", "-", "--name", "env_cli", address=addresses, stdin=b"from cli")
    assert result.returncode == 0, result.stderr.decode()
    with follower.client() as store:
        assert replicated(store, object_id) == b"from env"
        assert store.get("env_cli", timeout=REPLICATION_DEADLINE) == b"from cli"


def test_no_store_answers(tmp_path: Any) -> None:
    """When none of the addresses answers, the error names each; the commands exit 3."""
    addresses = [f"unix://{tmp_path}/a.sock", f"unix://{tmp_path}/b.sock"]
    with StoreClient(addresses) as store:
        with pytest.raises(StoreUnavailable) as caught:
            store.info()
        assert all(address in str(caught.value) for address in addresses)
        with pytest.raises(StoreUnavailable):
            store.wait_until_ready(0.2)
    for command in ("info", "promote"):
        result = run_cli(command, address=",".join(addresses))
        assert result.returncode == EXIT_UNREACHABLE, result.stderr.decode()


def test_promote_through_a_client_moves_its_writes(
    remote_primary: ServerProcess, follower: ServerProcess
) -> None:
    """After ``promote``, a client given both addresses writes to the promoted store."""
    with StoreClient([follower.unix_address, remote_primary.tcp_address]) as store:
        replicated(store, store.put(b"before"))  # applied on the follower before it is promoted
        before = store.info()
        promotion = store.promote()
        assert promotion.store_id != before.store_id
        assert promotion.last_sequence >= 1
        after = store.info()
        assert after.replication.role == "primary" and after.store_id == promotion.store_id
        object_id = store.put(b"after")
        assert store.get(object_id) == b"after"
    with remote_primary.client() as primary, pytest.raises(ObjectNotFound):
        primary.get(object_id)


# -- writes to a follower ---------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["colocated", "remote"])
def test_a_write_sent_to_a_follower_raises_not_primary(
    remote_primary: ServerProcess, follower: ServerProcess, tcp: bool
) -> None:
    """Every kind of write names the primary, in place or streamed, over the lane or gRPC."""
    writes: list[Callable[[StoreClient], Any]] = [
        lambda store: store.put(b"small"),
        lambda store: store.put(np.zeros(1 << 20)),  # shared memory when colocated
        lambda store: store.put(np.zeros(5 << 20, dtype=np.uint8)),  # streamed when remote
        lambda store: store.put_many([b"a", b"b"]),
        lambda store: store.replace("nf_name", b"x"),
        lambda store: store.delete("nf_name"),
        lambda store: store.delete_matching("nf_"),
    ]
    transfer = "inline" if tcp else "auto"
    with follower.client(tcp=tcp, transfer=transfer) as store:
        assert store.colocated is not tcp
        for write in writes:
            with pytest.raises(NotPrimaryError) as caught:
                write(store)
            assert remote_primary.socket_path in caught.value.primary
            assert "write to the primary" in str(caught.value)
        with pytest.raises(NotPrimaryError), store.create(1 << 16, "uint8") as array:
            array[:] = 1


# -- the command ------------------------------------------------------------------------


def _fields(output: bytes) -> dict[str, str]:
    """``improv-store info``'s lines as a dict."""
    lines = (line.split(":", 1) for line in output.decode().splitlines())
    return {key.strip(): value.strip() for key, value in lines}


def test_cli_info_shows_replication(
    remote_primary: ServerProcess, follower: ServerProcess
) -> None:
    """``info`` shows the role; for a follower also its primary, state, sequences, lag,
    resyncs and last error."""
    with remote_primary.client() as primary:
        primary.put(b"x")
        last = primary.info().last_sequence
    with follower.client() as store:
        eventually(lambda: store.info().last_sequence == last or None, "replication")
    result = run_cli("info", address=follower.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    fields = _fields(result.stdout)
    assert fields["role"] == "follower"
    assert remote_primary.socket_path in fields["primary"]
    assert fields["replication state"] == "streaming"
    assert fields["applied sequence"] == str(last)
    assert fields["primary sequence"] == str(last)
    assert re.fullmatch(r"0 events, \d+\.\d{3} s", fields["lag"]), fields["lag"]
    assert fields["resyncs"] == "0"
    assert fields["last error"] == "none"
    result = run_cli("info", address=remote_primary.unix_address)
    fields = _fields(result.stdout)
    assert fields["role"] == "primary" and "primary" not in fields


def test_cli_promote(remote_primary: ServerProcess, follower: ServerProcess) -> None:
    """``promote`` makes a follower a primary (new store id, writable); asked of a primary,
    it fails with a message and a nonzero exit."""
    with remote_primary.client() as primary:
        primary.put(b"x")
        old_id = primary.info().store_id
    refused = run_cli("promote", address=remote_primary.unix_address)
    assert refused.returncode == EXIT_STORE_ERROR
    assert "cannot promote" in refused.stderr.decode()
    result = run_cli("promote", address=follower.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    fields = _fields(result.stdout)
    assert fields["store id"] and fields["store id"] != old_id
    assert int(fields["last sequence"]) >= 1
    with follower.client() as store:
        assert store.info().replication.role == "primary"
        assert store.get(store.put(b"writable")) == b"writable"
    again = run_cli("promote", address=follower.unix_address)
    assert again.returncode == EXIT_STORE_ERROR


# -- improv's drop-in -------------------------------------------------------------------


def test_improv_drop_in_reads_from_a_follower(
    start_server: Callable[..., ServerProcess],
) -> None:
    """improv's StoreInterface (Plasma's) and RedisStoreInterface, unchanged, pointed at a
    colocated follower, read what was put on the primary; a put there is refused."""
    primary = start_server()
    follower = follower_of(start_server, primary)
    writer = StoreInterface(store_loc=primary.socket_path)
    reader = StoreInterface(store_loc=follower.socket_path)
    frame = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    object_id = writer.put(frame, "improv_frame")
    np.testing.assert_array_equal(
        eventually(lambda: _or_none(reader.getID, object_id), "the frame on the follower"),
        frame,
    )
    np.testing.assert_array_equal(reader.get("improv_frame"), frame)
    with pytest.raises(NotPrimaryError):
        reader.put(frame, "improv_refused")
    redis_writer = RedisStoreInterface(address=primary.tcp_address)
    redis_reader = RedisStoreInterface(address=follower.tcp_address)
    key = redis_writer.put({"trial": 3})
    value = eventually(lambda: _or_none(redis_reader.get, key), "the value on the follower")
    assert value == {"trial": 3}
    for interface in (writer, reader, redis_writer, redis_reader):
        interface.client.close()


def _or_none(read: Callable[[Any], T], key: Any) -> T | None:
    """``read(key)``, or None while improv's interface says it is not there yet."""
    from improv_store.client.improv import ObjectNotFoundError

    try:
        return read(key)
    except ObjectNotFoundError:
        return None
