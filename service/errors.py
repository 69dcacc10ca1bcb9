"""The one exception the store core raises: a status with a message and trailer values."""

from __future__ import annotations

from improv_store.protocol import (
    OLDEST_SEQUENCE_TRAILER,
    PRIMARY_TRAILER,
    STORE_ID_TRAILER,
    Code,
)


class StoreError(Exception):
    """A request the store refuses, carrying the status that says why.

    ``trailers`` are facts a client acts on (where to resume a subscription,
    the oldest sequence still retained); each transport sends them as its
    trailing metadata.
    """

    def __init__(self, code: Code, message: str, trailers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = trailers or {}


def invalid(message: str) -> StoreError:
    """INVALID_ARGUMENT: the request is malformed."""
    return StoreError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> StoreError:
    """NOT_FOUND: no such object."""
    return StoreError(Code.NOT_FOUND, message)


def exhausted(message: str) -> StoreError:
    """RESOURCE_EXHAUSTED: a size or capacity limit."""
    return StoreError(Code.RESOURCE_EXHAUSTED, message)


def unavailable(message: str = "the store is shutting down") -> StoreError:
    """UNAVAILABLE: the server is stopping; retry elsewhere or later."""
    return StoreError(Code.UNAVAILABLE, message)


def read_only(primary: str) -> StoreError:
    """FAILED_PRECONDITION for a write sent to a follower, naming the store that takes it."""
    return StoreError(
        Code.FAILED_PRECONDITION,
        f"this store follows {primary} and takes no writes: write to the primary",
        trailers={PRIMARY_TRAILER: primary},
    )


def resume_impossible(code: Code, message: str, store_id: str, oldest: int) -> StoreError:
    """A Subscribe resume this store cannot serve: it is another store than the caller's,
    or the sequence was never issued; names this store and its oldest retained sequence."""
    return StoreError(
        code, message, trailers={STORE_ID_TRAILER: store_id, OLDEST_SEQUENCE_TRAILER: str(oldest)}
    )


def history_gone(requested: int, oldest: int) -> StoreError:
    """OUT_OF_RANGE for history that retention has dropped, naming what remains."""
    return StoreError(
        Code.OUT_OF_RANGE,
        f"history from sequence {requested} is no longer retained; the oldest available"
        f" is {oldest}",
        trailers={OLDEST_SEQUENCE_TRAILER: str(oldest)},
    )
