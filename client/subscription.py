"""Subscription: the changes to objects under a prefix, as Events (``StoreClient.subscribe``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from improv_store.v1 import store_pb2 as pb

from .colocated import Colocated
from .errors import ObjectNotFound, StoreError, StoreFull, StoreReset
from .ids import ObjectID
from .models import Event
from .transport import LeaseSession, SubscribeStream, Transport

log = logging.getLogger(__name__)


class Subscription:
    """An open Subscribe stream: iterate it for Events, close it to stop.

    A subscriber the server cuts off for falling behind resumes by itself from
    where it stopped, so the caller sees every event once, in order.
    ``last_sequence`` is the last event delivered: pass ``since=last_sequence + 1``
    and ``store_id`` to a new subscription to continue after a disconnect or server
    restart; a store whose data started over then raises StoreReset.
    The stream is the transport's: a lane connection of its own, or a gRPC stream.
    """

    def __init__(
        self,
        transport: Transport,
        prefix: str,
        since: int | None,
        *,
        store_id: str | None = None,
        values: bool = False,
        colocated: Colocated | None = None,
        get: Callable[[ObjectID], Any] | None = None,
    ) -> None:
        """With ``values``, each put/replace event carries its object: in place under a lease
        of the transport's session when ``colocated``, else fetched with ``get``."""
        self._transport = transport
        self._prefix = prefix
        self._values = values
        self._colocated = colocated if values else None
        self._get = get
        if since is None or store_id is None:
            info = transport.call("Info", pb.InfoRequest())
            # From the next change on, asked for by number: the server registers a
            # subscription after the call has left, and a change made in between (by
            # this process's next put, say) would otherwise be missed.
            since = info.last_sequence + 1 if since is None else since
            # Resumes after falling behind name this store, so one that started over
            # in between is noticed rather than read from the wrong sequence.
            store_id = info.store_id if store_id is None else store_id
        self.store_id = store_id
        self.last_sequence = since - 1
        self._closed = False
        self._session: LeaseSession | None = None  # the session that takes the values' leases
        self._stream = self._open(since)

    def _open(self, since: int) -> SubscribeStream:
        request = pb.SubscribeRequest(
            prefix=self._prefix, since_sequence=since, store_id=self.store_id
        )
        if self._colocated is not None:
            self._session = self._transport.session()
            request.transfer = self._colocated.transfer
            request.session_id = self._session.session_id
        return self._transport.subscribe(request)

    def __iter__(self) -> Iterator[Event]:
        while True:
            received = False
            try:
                for response in self._stream:
                    event = Event.from_proto(response.event, value=self._value(response))
                    self.last_sequence = event.sequence
                    received = True
                    yield event
                return
            except StoreError as exc:
                if self._closed:
                    return
                resume = self._resume_from(exc, received)
            self._stream = self._open(resume)
            if self._closed:  # closed while reopening: end the new stream too
                self._stream.close()

    def _resume_from(self, error: StoreError, received: bool) -> int:
        """Where to resubscribe after ``error``, or raise it when it ends the subscription.

        RESOURCE_EXHAUSTED after events (a refusal comes first) means the
        subscriber fell behind: the first event it missed follows the last it
        got, where the resume trailer points too. FAILED_PRECONDITION means
        the session holding the values' leases is gone: renew it and go on.
        """
        if isinstance(error, StoreFull) and received:
            resume = self.last_sequence + 1
            log.warning("subscription fell behind; resuming from sequence %d", resume)
            return resume
        if isinstance(error, StoreReset):
            raise error
        if error.code == grpc.StatusCode.FAILED_PRECONDITION and self._session is not None:
            self._transport.drop_session(self._session.session_id)
            return self.last_sequence + 1
        raise error

    def _value(self, response: pb.SubscribeResponse) -> Any:
        if not self._values or response.event.type == pb.EVENT_TYPE_DELETE:
            return None
        if response.HasField("handle"):
            assert self._colocated is not None and self._session is not None
            return self._colocated.view(
                response.event.meta, response.handle, self._session.release
            )
        assert self._get is not None
        try:
            return self._get(ObjectID(response.event.meta.id))
        except ObjectNotFound:
            return None

    def close(self) -> None:
        """Stop: an iteration blocked in another thread ends, without error."""
        self._closed = True
        self._stream.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
