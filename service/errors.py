"""The one exception the store core raises: a gRPC status with a message."""

from __future__ import annotations

import grpc


class StoreError(Exception):
    """A request the store refuses, carrying the gRPC status that says why.

    ``trailers`` are sent as trailing metadata, for facts a client acts on
    (where to resume a subscription, the oldest sequence still retained).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        trailers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = trailers


def invalid(message: str) -> StoreError:
    """INVALID_ARGUMENT: the request is malformed."""
    return StoreError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> StoreError:
    """NOT_FOUND: no such object."""
    return StoreError(grpc.StatusCode.NOT_FOUND, message)


def exhausted(message: str) -> StoreError:
    """RESOURCE_EXHAUSTED: a size or capacity limit."""
    return StoreError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def unavailable(message: str = "the store is shutting down") -> StoreError:
    """UNAVAILABLE: the server is stopping; retry elsewhere or later."""
    return StoreError(grpc.StatusCode.UNAVAILABLE, message)


def history_gone(requested: int, oldest: int) -> StoreError:
    """OUT_OF_RANGE for history that retention has dropped, naming what remains."""
    return StoreError(
        grpc.StatusCode.OUT_OF_RANGE,
        f"history from sequence {requested} is no longer retained; the oldest available"
        f" is {oldest}",
        trailers=(("improv-store-oldest-sequence", str(oldest)),),
    )
