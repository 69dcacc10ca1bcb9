"""The store's footprint in /dev/shm: its name prefix, its lock, its locality token.

Every shared-memory file of a store starts with a prefix derived from its
data directory, so a restarted server finds and removes what a crashed
predecessor left. A lock file keeps two servers of the same store apart. The
token is what a client reads to prove it sees the same /dev/shm (same host,
or containers sharing an IPC namespace): if it can open the file and finds
the bytes Info reported, it may use shared-memory transfer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os

from improv_store.protocol import SHM_DIR

from .arena import remove_stale_segments, shm_free_bytes

log = logging.getLogger(__name__)

MIN_ARENA = 4 << 20
SMALL_ARENA = 256 << 20
TOKEN_SUFFIX = "token"
LOCK_SUFFIX = "lock"


def store_prefix(data_dir: str) -> str:
    """The /dev/shm name prefix of the store that keeps its data in ``data_dir``."""
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    return f"improvstore-{digest}-"


def arena_capacity(requested: int | None) -> int:
    """The arena size to use, checked against free /dev/shm with an actionable message.

    A request below MIN_ARENA is rounded up to it, with a warning, not refused.
    """
    free = shm_free_bytes()
    advice = (
        "Give the store more shared memory (docker/podman: --shm-size=2g, or --ipc=host;"
        " elsewhere remount /dev/shm larger) or ask for less with --memory."
    )
    if requested is None:
        capacity = free // 2
        if capacity < MIN_ARENA:
            raise RuntimeError(
                f"{SHM_DIR} has only {free / 2**20:.1f} MiB free; improv-store needs at least"
                f" {2 * MIN_ARENA / 2**20:.0f} MiB free to size its arena (half of what is"
                f" free). {advice}"
            )
        if capacity < SMALL_ARENA:
            log.warning(
                "only %.0f MiB of shared memory for objects; larger frames will be refused. %s",
                capacity / 2**20, advice,
            )
        return capacity
    if requested < MIN_ARENA:
        # plasma_store took any size, and improv starts stores of a few kilobytes.
        log.warning(
            "--memory %d bytes is below the arena's minimum; using %d bytes (%.0f MiB)",
            requested, MIN_ARENA, MIN_ARENA / 2**20,
        )
        requested = MIN_ARENA
    if requested > free:
        raise RuntimeError(
            f"--memory asks for {requested / 2**20:.1f} MiB of shared memory but {SHM_DIR} has"
            f" only {free / 2**20:.1f} MiB free. {advice}"
        )
    return requested


class ShmNamespace:
    """Holds the store's lock in /dev/shm and publishes its locality token."""

    def __init__(self, data_dir: str) -> None:
        self.prefix = store_prefix(data_dir)
        self.token_name = self.prefix + TOKEN_SUFFIX
        self._lock_path = os.path.join(SHM_DIR, self.prefix + LOCK_SUFFIX)
        self._lock = open(self._lock_path, "a+")  # noqa: SIM115 - held until close()
        os.chmod(self._lock_path, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(
                f"another improv-store server is using the data directory {data_dir}"
            ) from None
        stale = remove_stale_segments(self.prefix, keep=(self.prefix + LOCK_SUFFIX,))
        if stale:
            log.warning("removed %d stale shared-memory files of a previous run", len(stale))
        self.token = os.urandom(16)
        fd = os.open(os.path.join(SHM_DIR, self.token_name), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as token_file:
            token_file.write(self.token)

    def close(self) -> None:
        """Remove the token and the lock file (segments belong to the arena)."""
        for path in (os.path.join(SHM_DIR, self.token_name), self._lock_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._lock.close()
