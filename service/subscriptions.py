"""Fan-out of live events to subscribers, each with a bounded buffer.

Publishing never blocks: a subscriber whose buffer is full is marked as
overflowed and cut off once it has drained what it holds, with the sequence
to resume from. Writers never wait for readers.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

from improv_store.protocol import RESUME_SEQUENCE_TRAILER, Code
from improv_store.v1 import store_pb2 as pb

from .errors import StoreError, unavailable


def event_name(event: pb.Event) -> str:
    return event.meta.name


class Subscriber:
    """One open Subscribe stream's live buffer."""

    def __init__(self, prefix: str, since: int, buffer_size: int) -> None:
        self.prefix = prefix
        self._since = since
        self._buffer_size = buffer_size
        self._cond = threading.Condition()
        self._events: deque[pb.Event] = deque()
        self._resume_from: int | None = None
        self.delivered = since - 1  # the last sequence handed to the stream
        self._closed = False
        self._ended_by: StoreError | None = None

    def matches(self, event: pb.Event) -> bool:
        return event.sequence >= self._since and event_name(event).startswith(self.prefix)

    def offer(self, event: pb.Event) -> None:
        """Buffer a live event without ever blocking the writer."""
        if not self.matches(event):
            return
        with self._cond:
            if self._closed or self._resume_from is not None:
                return
            if len(self._events) >= self._buffer_size:
                self._resume_from = event.sequence
            else:
                self._events.append(event)
            self._cond.notify()

    def close(self, error: StoreError | None = None) -> None:
        """End the stream: the client went away, or the store ends it with ``error`` (it is
        stopping, or a follower's history is about to be cut)."""
        with self._cond:
            self._closed = True
            self._ended_by = error
            self._cond.notify_all()

    def live(self) -> Iterator[pb.Event]:
        """Buffered and future events until closed or overflowed."""
        for batch in self.live_batches():
            for event in batch:
                self.delivered = event.sequence
                yield event

    def live_batches(self) -> Iterator[list[pb.Event]]:
        """``live``'s events as they come: all those waiting at once."""
        while True:
            with self._cond:
                while not self._events and not self._closed and self._resume_from is None:
                    self._cond.wait()
                if self._events:
                    batch = list(self._events)
                    self._events.clear()
                elif self._ended_by is not None:
                    raise self._ended_by
                elif self._closed or self._resume_from is None:
                    return
                else:
                    raise overflowed(self._resume_from)
            yield batch
            self.delivered = batch[-1].sequence


def overflowed(resume_from: int) -> StoreError:
    """RESOURCE_EXHAUSTED for a subscriber that fell behind, saying where to resume."""
    return StoreError(
        Code.RESOURCE_EXHAUSTED,
        f"subscriber fell too far behind; resume with since_sequence={resume_from}",
        trailers={RESUME_SEQUENCE_TRAILER: str(resume_from)},
    )


class SubscriberHub:
    """The set of open subscribers. Callers hold the store lock while publishing."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._subscribers)

    def add(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    def publish(self, event: pb.Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def max_lag(self, last_sequence: int) -> int:
        """Events the furthest-behind subscriber has not been handed yet."""
        with self._lock:
            subscribers = list(self._subscribers)
        return max((last_sequence - s.delivered for s in subscribers), default=0)

    def close_all(self, error: StoreError | None = None) -> None:
        """End every stream with ``error`` (by default: the store is stopping)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.close(error or unavailable())
