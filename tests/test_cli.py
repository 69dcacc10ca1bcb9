"""The ``improv-store`` console script, run as a real subprocess against a real server."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerProcess, free_port, wait_serving

from improv_store.client import ObjectID, ObjectNotFound, StoreClient

CLI = os.path.join(os.path.dirname(sys.executable), "improv-store")
HEX_ID = re.compile(r"^[0-9a-f]{40}$")
EXIT_NOT_FOUND = 1
EXIT_UNREACHABLE = 3


def run_cli(
    *args: str,
    address: str | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``improv-store [--address A] args`` and return its result (never raises on exit code).

    ``--address`` goes after the subcommand, where the client commands accept it.
    IMPROV_STORE_ADDRESS is removed from the inherited environment unless ``env`` sets it.
    """
    command = [CLI, *args[:1]]
    if address is not None:
        command += ["--address", address]
    command += list(args[1:])
    full_env = {key: value for key, value in os.environ.items() if key != "IMPROV_STORE_ADDRESS"}
    full_env.update(env or {})
    return subprocess.run(
        command, input=stdin, capture_output=True, env=full_env, timeout=timeout, check=False
    )


def printed_id(result: subprocess.CompletedProcess[bytes]) -> ObjectID:
    """The object ID a successful ``put`` printed: one line of 40 hex digits."""
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode().strip()
    assert HEX_ID.match(text), text
    return ObjectID.from_hex(text)


# -- put / get ----------------------------------------------------------------------------


def test_put_file_and_stdin_print_ids(
    server: ServerProcess, store: StoreClient, tmp_path: Path
) -> None:
    """``put FILE`` and ``put -`` (stdin) store the bytes and print the new object's hex ID."""
    payload = os.urandom(3000)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    from_file = printed_id(run_cli("put", str(source), "--name", "cli_file",
                                   address=server.unix_address))
    from_stdin = printed_id(run_cli("put", "-", address=server.unix_address, stdin=b"from stdin"))
    assert from_file != from_stdin
    assert store.get(from_file) == payload
    assert store.stat(from_file).name == "cli_file"
    assert store.get(from_stdin) == b"from stdin"
    assert store.stat(from_stdin).name == ""


def test_put_npy_stores_an_array(server: ServerProcess, store: StoreClient, tmp_path: Path) -> None:
    """A ``.npy`` file is stored as an ndarray (not as the file's bytes): dtype, shape, order
    and values round-trip through the Python client."""
    array = np.asfortranarray(np.arange(24, dtype="<i2").reshape(2, 3, 4))
    source = tmp_path / "frame.npy"
    np.save(source, array)
    object_id = printed_id(run_cli("put", str(source), "--name", "cli_frame",
                                   address=server.unix_address))
    got = store.get(object_id)
    assert isinstance(got, np.ndarray)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    info = store.stat("cli_frame")
    assert info.encoding == "ndarray" and info.size == array.nbytes


def test_put_replace(server: ServerProcess, store: StoreClient) -> None:
    """``put --replace --name`` leaves only the new object under the name."""
    old = store.put(b"old", "cli_model")
    new = printed_id(run_cli("put", "-", "--name", "cli_model", "--replace",
                             address=server.unix_address, stdin=b"new"))
    assert [info.id for info in store.list("cli_model")] == [new]
    with pytest.raises(ObjectNotFound):
        store.get(old)


def test_get_by_id_and_name_to_file(
    server: ServerProcess, store: StoreClient, tmp_path: Path
) -> None:
    """``get REF -o FILE`` writes exactly the stored bytes (by ID and by name, the newest of
    the name), and arrays as a .npy that loads back equal; without -o bytes go to stdout."""
    payload = os.urandom(5000)
    raw_id = store.put(payload, "cli_raw")
    store.put(b"older", "cli_named")
    store.put(b"newest", "cli_named")
    array = np.linspace(0, 1, 30, dtype="<f8").reshape(5, 6)
    array_id = store.put(array, "cli_array")

    by_id = tmp_path / "by_id.bin"
    result = run_cli("get", raw_id.hex(), "-o", str(by_id), address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    assert by_id.read_bytes() == payload

    by_name = tmp_path / "by_name.bin"
    result = run_cli("get", "cli_named", "-o", str(by_name), address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    assert by_name.read_bytes() == b"newest"

    for ref in (array_id.hex(), "cli_array"):
        out = tmp_path / f"array_{ref[:8]}.npy"
        result = run_cli("get", ref, "-o", str(out), address=server.unix_address)
        assert result.returncode == 0, result.stderr.decode()
        loaded = np.load(out, allow_pickle=False)
        assert loaded.dtype == array.dtype
        np.testing.assert_array_equal(loaded, array)

    result = run_cli("get", "cli_raw", address=server.unix_address)
    assert result.returncode == 0 and result.stdout == payload

    result = run_cli("get", "cli_array", address=server.unix_address)  # stdout is a pipe
    assert result.returncode == 0, result.stderr.decode()
    np.testing.assert_array_equal(np.load(io.BytesIO(result.stdout), allow_pickle=False), array)


def test_get_array_writes_the_named_file(
    server: ServerProcess, store: StoreClient, tmp_path: Path
) -> None:
    """``get ARRAY -o PATH`` writes PATH itself, whatever its suffix (as it does for bytes)."""
    array = np.arange(6, dtype="<u2")
    store.put(array, "cli_array")
    out = tmp_path / "frame.dat"
    result = run_cli("get", "cli_array", "-o", str(out), address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    assert out.exists(), (
        f"BUG client/cli.py _get: np.save(path) appended '.npy'; the directory holds"
        f" {sorted(path.name for path in tmp_path.iterdir())}"
    )
    np.testing.assert_array_equal(np.load(out, allow_pickle=False), array)


def test_get_missing_exits_1(server: ServerProcess) -> None:
    """``get`` of a missing name or ID exits 1 with a message on stderr and nothing on stdout."""
    for ref in ("no_such_name", ObjectID.random().hex()):
        result = run_cli("get", ref, address=server.unix_address)
        assert result.returncode == EXIT_NOT_FOUND
        assert result.stdout == b""
        assert "improv-store:" in result.stderr.decode()
        assert ref in result.stderr.decode()


# -- ls / rm ------------------------------------------------------------------------------


def test_ls_lists_names_and_sizes(server: ServerProcess, store: StoreClient) -> None:
    """``ls`` prints one line per object, oldest first, with ID, size and name; a prefix
    narrows it."""
    small = store.put(b"12345", "acq_small")
    big = store.put(b"x" * 2048, "acq_big")
    other = store.put(b"abc", "proc_other")
    result = run_cli("ls", address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert "NAME" in lines[0] and "SIZE" in lines[0]
    body = lines[1:]
    assert len(body) == 3
    for line, object_id, name, size in zip(
        body, (small, big, other), ("acq_small", "acq_big", "proc_other"),
        ("5 B", "2.0 KiB", "3 B"), strict=True,
    ):
        assert line.startswith(object_id.hex())
        assert line.split()[-1] == name
        assert size in line

    result = run_cli("ls", "acq_", address=server.unix_address)
    assert [line.split()[-1] for line in result.stdout.decode().splitlines()[1:]] == [
        "acq_small", "acq_big",
    ]


def test_rm(server: ServerProcess, store: StoreClient) -> None:
    """``rm`` by ID and by name deletes (exit 0, each deleted ID printed); ``rm`` of a missing
    ref exits 1, and still deletes the refs that exist."""
    by_id = store.put(b"one")
    named = [store.put(b"a", "cli_gone"), store.put(b"b", "cli_gone")]
    result = run_cli("rm", by_id.hex(), "cli_gone", address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    printed = result.stdout.decode()
    for object_id in (by_id, *named):
        assert f"deleted {object_id.hex()}" in printed
    assert store.info().object_count == 0

    keep = store.put(b"kept", "cli_keep")
    result = run_cli("rm", "cli_missing", address=server.unix_address)
    assert result.returncode == EXIT_NOT_FOUND
    assert "cli_missing" in result.stderr.decode()

    doomed = store.put(b"doomed")
    result = run_cli("rm", ObjectID.random().hex(), doomed.hex(), address=server.unix_address)
    assert result.returncode == EXIT_NOT_FOUND
    with pytest.raises(ObjectNotFound):
        store.get(doomed)
    assert store.get(keep) == b"kept"


def test_rm_by_prefix_or_sequence(server: ServerProcess, store: StoreClient) -> None:
    """``rm --prefix`` / ``--before-sequence`` delete every match in one call and print
    the count; refs and match options together, or nothing to delete, are usage errors."""
    for i in range(3):
        store.put(b"x", f"cli_old/{i}")
    kept = store.put(b"k", "cli_kept")
    result = run_cli("rm", "--prefix", "cli_old/", address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "deleted 3 objects"
    assert {info.id for info in store.list()} == {kept}
    newer = store.put(b"n", "cli_newer")
    before = store.info().last_sequence
    result = run_cli("rm", "--before-sequence", str(before), address=server.unix_address)
    assert result.stdout.decode().strip() == "deleted 1 objects"
    assert {info.id for info in store.list()} == {newer}
    for usage in (("rm",), ("rm", "cli_newer", "--prefix", "cli_")):
        assert run_cli(*usage, address=server.unix_address).returncode == 2
    assert {info.id for info in store.list()} == {newer}


# -- info / health / watch ----------------------------------------------------------------


def test_info(server: ServerProcess, store: StoreClient) -> None:
    """``info`` prints the durability mode and the object count."""
    for index in range(3):
        store.put(f"object {index}".encode(), "acq_f")
    result = run_cli("info", address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    fields = dict(
        (key.strip(), value.strip())
        for key, value in (line.split(":", 1) for line in result.stdout.decode().splitlines())
    )
    assert fields["durability"] == "async"
    assert fields["objects"] == "3"
    assert fields["last sequence"] == "3"


def test_info_reports_sync(start_server: Callable[..., ServerProcess]) -> None:
    """``info`` reports the mode the server actually runs in, not a default."""
    server = start_server(durability="sync")
    result = run_cli("info", address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    assert re.search(r"^durability:\s+sync$", result.stdout.decode(), re.MULTILINE)


def test_health(server: ServerProcess) -> None:
    """``health`` prints SERVING and exits 0 for a running server."""
    result = run_cli("health", address=server.unix_address)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "SERVING"


def test_watch_prints_events(server: ServerProcess, store: StoreClient) -> None:
    """``watch --count 3`` prints one line per change made while it runs, then exits 0."""
    watch = subprocess.Popen(
        [CLI, "watch", "--address", server.unix_address, "--count", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while store.info().subscriber_count < 1:
            assert watch.poll() is None, watch.communicate()
            assert time.monotonic() < deadline, "watch never subscribed"
            time.sleep(0.02)
        ids = [store.put(f"frame {index}".encode(), f"acq_{index}") for index in range(3)]
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 3
    for index, (line, object_id) in enumerate(zip(lines, ids, strict=True)):
        assert object_id.hex() in line
        assert " put " in line
        assert line.split()[-1] == f"acq_{index}"
        assert line.split()[0] == str(index + 1)


def test_watch_since_replays(server: ServerProcess, store: StoreClient) -> None:
    """``watch --since 1 --count N`` replays history and filters by prefix."""
    store.put(b"a", "acq_a")
    store.put(b"b", "proc_b")
    store.delete("acq_a")
    result = run_cli("watch", "acq_", "--since", "1", "--count", "2",
                     address=server.unix_address, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [line.split()[2] for line in lines] == ["put", "delete"]
    assert all(line.split()[-1] == "acq_a" for line in lines)


# -- addresses and failures ---------------------------------------------------------------


def test_address_from_environment(server: ServerProcess, store: StoreClient) -> None:
    """Without --address the commands use $IMPROV_STORE_ADDRESS, here the TCP address."""
    env = {"IMPROV_STORE_ADDRESS": server.tcp_address}
    object_id = printed_id(run_cli("put", "-", "--name", "cli_env", stdin=b"over tcp", env=env))
    assert store.get("cli_env") == b"over tcp"
    result = run_cli("get", object_id.hex(), env=env)
    assert result.returncode == 0 and result.stdout == b"over tcp"
    result = run_cli("health", env=env)
    assert result.returncode == 0 and result.stdout.decode().strip() == "SERVING"
    result = run_cli("ls", env=env)
    assert "cli_env" in result.stdout.decode()


@pytest.mark.parametrize(
    "args",
    [
        ("put", "-"),
        ("get", "anything"),
        ("ls",),
        ("rm", "anything"),
        ("info",),
        ("health",),
        ("watch", "--count", "1"),
    ],
    ids=lambda args: args[0],
)
def test_no_server_exits_3(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Every client command against a socket nobody listens on exits 3 with a message."""
    address = "unix://" + str(tmp_path / "nobody.sock")
    result = run_cli(*args, address=address, stdin=b"data", timeout=60)
    assert result.returncode == EXIT_UNREACHABLE, (result.stdout, result.stderr)
    assert "improv-store:" in result.stderr.decode()


def test_version() -> None:
    """``improv-store --version`` prints the package version and exits 0."""
    from improv_store import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"improv-store {__version__}"


def test_serve_help_lists_flags_and_variables() -> None:
    """``serve --help`` documents every flag together with its IMPROV_STORE_* variable."""
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.decode().split())  # undo argparse's line wrapping
    for flag in ("socket", "listen", "data-dir", "durability", "commit-interval",
                 "log-apply-interval", "wal-size",
                 "max-object-size", "event-retention", "subscriber-buffer",
                 "max-subscribers", "max-workers", "initial-map-size", "log-level",
                 "max-name-length", "max-batch-size", "max-streams"):
        assert f"--{flag}" in text
        assert f"IMPROV_STORE_{flag.upper().replace('-', '_')}" in text


def test_help_lists_the_server_commands_too() -> None:
    """``improv-store --help`` lists serve and verify beside the client commands."""
    result = run_cli("--help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.decode().splitlines() if line[:4] == "    "}
    assert {"serve", "verify", "put", "get", "ls", "rm", "watch", "info", "health"} <= listed


def test_serve_becomes_the_server_process(tmp_path: Path) -> None:
    """``improv-store serve`` replaces itself with the server: the PID a supervisor started
    is the server's, so its SIGTERM stops the server cleanly (exit 0, socket removed)."""
    socket_path = str(tmp_path / "s.sock")
    log_path = tmp_path / "serve.log"
    command = [CLI, "serve", "--socket", socket_path, "--listen", f"127.0.0.1:{free_port()}",
               "--data-dir", str(tmp_path / "data")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_serving("unix://" + socket_path, process, log_path)
        with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
            assert b"improv_store.service\0serve\0" in handle.read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_path.read_text()
    assert not os.path.exists(socket_path)


def test_the_client_command_never_imports_the_server() -> None:
    """The people's tool imports only the client and the contract, never the server."""
    code = (
        "import sys; import improv_store.client.cli;"
        " print([name for name in sys.modules if name.startswith('improv_store.service')])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert result.stdout.decode().strip() == "[]"


def test_a_bad_variable_stops_serve_with_a_usage_error() -> None:
    """An IMPROV_STORE_* value is checked as its flag's would be: exit 2, naming the flag."""
    result = run_cli("serve", env={"IMPROV_STORE_WAL_SIZE": "lots"})
    assert result.returncode == 2
    assert "argument --wal-size: not a size: 'lots'" in result.stderr.decode()


@pytest.mark.parametrize("name", ["missing.bin", "missing.npy"])
def test_put_missing_file_is_a_usage_error(
    server: ServerProcess, tmp_path: Path, name: str
) -> None:
    """``put`` of a file that does not exist says so in one line and exits 2 (usage), not 1
    (which means "object not found") with a traceback."""
    result = run_cli("put", str(tmp_path / name), address=server.unix_address)
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, f"BUG client/cli.py _put: uncaught OSError:\n{stderr}"
    assert result.returncode == 2
    assert name in stderr


def test_other_store_errors_exit_4(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A store error other than not-found/unreachable (here: object above the size limit)
    exits 4 with the status name on stderr."""
    server = start_server("--max-object-size", "1K")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 4096)
    result = run_cli("put", str(big), address=server.unix_address)
    assert result.returncode == 4, result.stderr.decode()
    assert "RESOURCE_EXHAUSTED" in result.stderr.decode()


def test_usage_error_exits_2() -> None:
    """A malformed command line is a usage error, exit 2, not a store error."""
    assert run_cli("get").returncode == 2
    assert run_cli("no-such-command").returncode == 2
