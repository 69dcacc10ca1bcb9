"""Typed exceptions for the statuses the store returns, over either transport."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from improv_store.protocol import (
    OLDEST_SEQUENCE_TRAILER,
    PRIMARY_TRAILER,
    STORE_ID_TRAILER,
    Code,
)


class StoreError(Exception):
    """Base of every error the store client raises; ``code`` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ObjectNotFound(StoreError, KeyError):
    """No object with that ID or name."""

    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError would print the repr
        return self.message


class ObjectExists(StoreError):
    """An object with that ID is already stored."""

    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidRequest(StoreError, ValueError):
    """The request was malformed (bad ID, dtype/shape not matching the bytes, long name...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class StoreFull(StoreError):
    """A size or capacity limit: object too large, store or disk full, too many streams."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class WaitTimeout(StoreError, TimeoutError):
    """The object did not appear within the wait."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class HistoryUnavailable(StoreError):
    """Subscribe asked for history older than the server retains."""

    code = grpc.StatusCode.OUT_OF_RANGE

    def __init__(self, message: str, oldest_sequence: int | None = None) -> None:
        super().__init__(message)
        self.oldest_sequence = oldest_sequence


class StoreReset(StoreError):
    """A resume named another store than the one that answered: its data started over
    (a wiped directory, a memory-only server restarted), so the sequence numbers the
    caller holds mean nothing there. Start again from a listing."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, store_id: str) -> None:
        super().__init__(message)
        self.store_id = store_id


class NotPrimaryError(StoreError):
    """A write sent to a follower, which takes none: ``primary`` is the address of the
    store it follows, to write to instead (a client given several addresses finds it)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, primary: str) -> None:
        super().__init__(message)
        self.primary = primary


class DataCorrupted(StoreError):
    """A payload no longer matches its checksum."""

    code = grpc.StatusCode.DATA_LOSS


class StoreUnavailable(StoreError, ConnectionError):
    """The server cannot be reached or is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class PermissionDenied(StoreError, PermissionError):
    """The server refused access."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(StoreError, PermissionError):
    """The server requires a token and this client sent none, or the wrong one."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[StoreError]] = {
    cls.code: cls
    for cls in (
        ObjectNotFound,
        ObjectExists,
        InvalidRequest,
        StoreFull,
        WaitTimeout,
        HistoryUnavailable,
        DataCorrupted,
        StoreUnavailable,
        PermissionDenied,
        Unauthenticated,
    )
}
_STATUS_CODES = {Code(code.value[0]): code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The gRPC status numbered ``value`` (a lane status byte, a batch item's code)."""
    return _STATUS_CODES[Code.of(value)]


def error_for(
    code: grpc.StatusCode, message: str, trailers: Mapping[str, str] | None = None
) -> StoreError:
    """The typed exception for a failed call's status, message and trailer values."""
    cls = _BY_CODE.get(code, StoreError)
    if code == grpc.StatusCode.FAILED_PRECONDITION and trailers:
        store_id = trailers.get(STORE_ID_TRAILER)
        if store_id:
            return StoreReset(message, store_id)
        primary = trailers.get(PRIMARY_TRAILER)
        if primary:
            return NotPrimaryError(message, primary)
    if cls is HistoryUnavailable:
        oldest = (trailers or {}).get(OLDEST_SEQUENCE_TRAILER)
        return HistoryUnavailable(message, int(oldest) if oldest else None)
    return cls(message) if cls is not StoreError else StoreError(message, code)


def from_rpc_error(exc: grpc.RpcError) -> StoreError:
    """Translate a failed gRPC call into its typed exception."""
    code = exc.code()
    return error_for(code, exc.details() or code.name, dict(exc.trailing_metadata() or ()))
