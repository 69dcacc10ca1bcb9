"""``plasma_store -s LOC -m BYTES``: Plasma's start command, serving improv-store.

Installed as ``improv-plasma-store``; ``improv-plasma-store --install`` adds
the name ``plasma_store`` beside it, opt-in, because that name belongs to
pyarrow before 12. It reads Plasma's flags as Plasma did and runs the server
in its own process, so the PID that improv's nexus holds is the server's and
its SIGKILL reaches the server.

A store started this way is ephemeral, as Plasma's was: it keeps its files in
a run directory of its own under the temporary directory, which a clean stop
removes. A SIGKILL leaves that directory, the socket, the lane socket beside
it and the store's /dev/shm files; the next start of this command (for any
socket) removes what every killed run left, and so does ``--reap``. A run is
alive while its process holds a lock on its directory, so a live store is
never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import stat
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from improv_store.protocol import SHM_DIR

from .arena import remove_stale_segments
from .cli import configure_logging
from .config import add_arguments, config_from_args
from .locality import store_prefix
from .server import run

log = logging.getLogger("improv_store.plasma_store")

COMMAND = "improv-plasma-store"
ALIAS = "plasma_store"
RUN_RECORD = "run.json"
_USAGE_ERROR = 1  # what plasma_store exits with on bad flags

USAGE = f"""\
usage: {ALIAS} -s SOCKET -m BYTES [-e ENDPOINT] [-d DIRECTORY] [-h]
       {COMMAND} --install [--bin-dir DIR] [--force] | --uninstall [--bin-dir DIR] | --reap

Plasma's start command, serving improv-store on the unix socket SOCKET.

  -s SOCKET     unix socket to serve on (what clients pass as store_socket_name)
  -m BYTES      shared memory for objects, in bytes; less than 4 MiB is rounded up
  -e ENDPOINT   Plasma's external store: objects that do not fit in memory are kept
                on disk in the run directory and read back on demand (the endpoint
                itself is not used); without -e the store is memory only
  -d DIRECTORY  Plasma's directory for memory-mapped files: ignored, improv-store
                keeps objects in {SHM_DIR}, where its clients look for them
  -h            Plasma's huge pages: ignored (improv-store maps {SHM_DIR} pages)

The store is ephemeral: a clean stop (SIGTERM, SIGINT) leaves nothing; after a SIGKILL
the next start removes what the killed store left. Other server options read their
IMPROV_STORE_* variables (docs/configuration.md).
"""


class UsageError(Exception):
    """Flags plasma_store would refuse; the message is Plasma's where it had one."""


@dataclass
class PlasmaFlags:
    """What plasma_store's command line says; None: the flag was not given."""

    socket: str | None = None
    memory: str | None = None
    external_store: str | None = None
    directory: str | None = None
    hugepages: bool = False
    help: bool = False


_STRING_FLAGS = {"s": "socket", "m": "memory", "e": "external_store", "d": "directory"}
_TRUE, _FALSE = {"", "true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}
_HELP_FLAGS = {"help", "helpfull", "helpshort"}


def parse_flags(argv: Sequence[str]) -> PlasmaFlags:
    """Read flags the way plasma_store's gflags did: ``-s X``, ``-s=X``, ``--s X``,
    ``-h``, ``-h=false``, ``-noh``; ``--`` ends them and other words are ignored."""
    flags = PlasmaFlags()
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            continue
        name, equals, value = word.lstrip("-").partition("=")
        if name in _STRING_FLAGS:
            if not equals:
                if not words:
                    raise UsageError(f"flag '{word}' is missing its argument")
                value = words.pop(0)
            setattr(flags, _STRING_FLAGS[name], value)
        elif name == "h":
            if value.lower() not in _TRUE | _FALSE:
                raise UsageError(f"illegal value '{value}' specified for bool flag 'h'")
            flags.hugepages = value.lower() in _TRUE
        elif name == "noh" and not equals:
            flags.hugepages = False
        elif name in _HELP_FLAGS:
            flags.help = True
        else:
            raise UsageError(f"unknown command line flag '{name}'")
    return flags


def memory_bytes(flags: PlasmaFlags) -> int:
    """The ``-m`` value, checked as plasma_store checked it."""
    if not flags.socket or not flags.memory:
        raise UsageError(
            "please specify socket for incoming connections with -s, and the amount of"
            " memory (in bytes) to use with -m"
        )
    try:
        size = int(flags.memory)
    except ValueError:
        raise UsageError("-m switch takes memory in bytes, with no letter suffix allowed") from None
    if size <= 0:
        raise UsageError(f"-m must be a positive number of bytes, not {flags.memory}")
    return size


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``improv-plasma-store`` (and of ``plasma_store`` once installed)."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in ("--install", "--uninstall", "--reap"):
        return manage(words)
    try:
        flags = parse_flags(words)
        if flags.help:
            sys.stdout.write(USAGE)
            return 0
        size = memory_bytes(flags)
    except UsageError as exc:
        sys.stderr.write(f"{ALIAS}: {exc}\n")
        return _USAGE_ERROR
    serve_ephemeral(flags, size)


def serve_ephemeral(flags: PlasmaFlags, size: int) -> NoReturn:
    """Serve until SIGTERM/SIGINT in a new run directory, remove it, and end the process
    with the server's exit code (as ``improv-store serve`` does, without waiting for
    threads of calls that outlived the shutdown)."""
    assert flags.socket is not None  # memory_bytes checked it
    parser = argparse.ArgumentParser(prog=ALIAS)
    add_arguments(parser)
    durability = "async" if flags.external_store is not None else "none"
    # Other options keep reading their IMPROV_STORE_* variables.
    args = parser.parse_args([
        "--socket", flags.socket, "--listen", "", "--memory", str(size),
        "--durability", durability,
    ])
    configure_logging(args.log_format, args.log_level)
    for killed in reap():
        log.info("removed what a killed store left: %s", killed)
    store_run = Run.create(flags.socket)
    args.data_dir = store_run.data_dir
    explain(flags, store_run)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        code = 2
    else:
        code = run(config)
    store_run.remove()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def explain(flags: PlasmaFlags, store_run: Run) -> None:
    """Log what Plasma's -e, -d and -h mean here."""
    if flags.external_store is not None:
        log.info(
            "-e %s: objects that do not fit in memory are kept on disk in %s and read back"
            " on demand (the endpoint itself is not used); removed when the store stops",
            flags.external_store, store_run.data_dir,
        )
    if flags.directory is not None and os.path.realpath(flags.directory) != SHM_DIR:
        log.warning(
            "-d %s ignored: improv-store keeps objects in %s, where its clients look for them",
            flags.directory, SHM_DIR,
        )
    if flags.hugepages:
        log.info("-h ignored: improv-store maps %s pages, not huge pages", SHM_DIR)


def runs_directory() -> str:
    """Where this user's ephemeral stores keep their run directories (owner-only)."""
    path = os.path.join(tempfile.gettempdir(), f"improv-store-plasma-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory of this user's: refusing to use it")
    return path


class Run:
    """One ephemeral store's run directory, locked by its process for as long as it lives.

    Its record names the socket, so that whoever finds it unlocked (the owner
    was killed) can remove the sockets, the /dev/shm files and the directory.
    """

    def __init__(self, path: str, lock_fd: int) -> None:
        self.path = path
        self.data_dir = os.path.join(path, "data")
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, socket_path: str) -> Run:
        """A new run directory, locked before its record is written (the reaper leaves a
        directory without a record alone)."""
        path = tempfile.mkdtemp(prefix="run-", dir=runs_directory())
        lock_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        with open(os.path.join(path, RUN_RECORD), "w") as handle:
            json.dump({"socket": os.path.abspath(socket_path)}, handle)
        return cls(path, lock_fd)

    def remove(self) -> None:
        """Remove the run's /dev/shm files (a clean stop left none) and its directory."""
        remove_stale_segments(store_prefix(self.data_dir))
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)


def reap() -> list[str]:
    """Remove what killed ephemeral stores left; return a line for each store."""
    root = runs_directory()
    reaped = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        try:
            lock_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            continue  # alive
        try:
            with open(os.path.join(path, RUN_RECORD)) as handle:
                socket_path = str(json.load(handle)["socket"])
        except (OSError, ValueError, KeyError, TypeError):
            os.close(lock_fd)
            continue  # being created (its owner locks it next), or not ours
        shm_files = remove_stale_segments(store_prefix(os.path.join(path, "data")))
        sockets = [each for each in (socket_path, socket_path + ".lane") if _remove_dead(each)]
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock_fd)
        reaped.append(
            f"{path} ({len(shm_files)} files in {SHM_DIR}"
            + "".join(f", {each}" for each in sockets) + ")"
        )
    return reaped


def _remove_dead(path: str) -> bool:
    """Unlink a socket file nobody listens on; a live one (a new server's) stays."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(before.st_mode):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
            return False
        except OSError:
            pass
    with contextlib.suppress(FileNotFoundError):
        after = os.lstat(path)
        if (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev):
            os.unlink(path)
            return True
    return False


def manage(words: Sequence[str]) -> int:
    """``--install``, ``--uninstall`` (the ``plasma_store`` alias) and ``--reap``."""
    parser = argparse.ArgumentParser(prog=COMMAND, description="Manage the plasma_store alias.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--install", action="store_true",
                        help=f"add {ALIAS} (a symbolic link to {COMMAND}) to --bin-dir")
    action.add_argument("--uninstall", action="store_true",
                        help=f"remove the {ALIAS} that --install added")
    action.add_argument("--reap", action="store_true",
                        help="remove what killed stores left (each start does this too)")
    parser.add_argument("--bin-dir", default=sysconfig.get_path("scripts"),
                        help="where to put the alias (default: this environment's scripts)")
    parser.add_argument("--force", action="store_true",
                        help=f"replace an existing {ALIAS} (pyarrow's, say)")
    args = parser.parse_args(words)
    if args.reap:
        for killed in reap():
            sys.stdout.write(f"removed {killed}\n")
        return 0
    target = os.path.join(args.bin_dir, ALIAS)
    command = os.path.join(sysconfig.get_path("scripts"), COMMAND)
    ours = os.path.islink(target) and os.path.realpath(target) == os.path.realpath(command)
    if args.uninstall:
        if not ours:
            sys.stderr.write(f"{target} is not the alias {COMMAND} --install made\n")
            return 1
        os.unlink(target)
        return 0
    if not os.path.exists(command):
        sys.stderr.write(f"{command} is missing: install improv-store in this environment\n")
        return 1
    if ours:
        return 0
    if os.path.lexists(target):
        if not args.force:
            sys.stderr.write(f"{target} exists (pyarrow's?); --force replaces it\n")
            return 1
        os.unlink(target)
    os.symlink(command, target)
    sys.stdout.write(f"{target} -> {command}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
