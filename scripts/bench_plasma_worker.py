"""The Plasma side of scripts/bench: its workloads against a running plasma_store.

Apache Arrow Plasma was removed after pyarrow 11, which needs numpy < 2, while
the project's venv has numpy 2. So scripts/bench runs the Plasma workloads in a
subprocess, under ``.venv-plasma/bin/python`` (made by scripts/bench-setup):

    .venv-plasma/bin/python scripts/bench_plasma_worker.py --socket /tmp/x/plasma.sock

against a ``plasma_store`` that scripts/bench started, and reads the JSON this
prints on stdout: ``{"versions": {...}, "rows": [{"workload", "transport",
"store", "metric", "value", ...}, ...]}``. Progress goes to stderr. The
timing, the handoff and the subscribe workloads are the ones scripts/bench
measures the other stores with (scripts/benchmarks: harness, handoff, fanout).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from typing import Any

import numpy as np
from benchmarks.backend import import_plasma
from benchmarks.fanout import fanout, fanout_label, fanout_rows
from benchmarks.handoff import handoff, handoff_label, handoff_rows
from benchmarks.harness import (
    COLOCATED,
    PLASMA,
    KiB,
    MiB,
    large_rows,
    memory_label,
    memory_rows,
    ops_rows,
    process_memory,
    progress,
    size_label,
    time_large,
    time_ops,
)


def plasma_small(client: Any, size: int, duration: float, warmup: float) -> list[dict[str, Any]]:
    """put and get of ``size``-byte objects, one call each: bytes below 64 KiB, else an array."""
    raw = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    payload: Any = raw.tobytes() if size < 64 * KiB else raw
    label = size_label(size)
    stored: list[Any] = []
    rows = ops_rows(f"put {label}", COLOCATED, PLASMA,
                    time_ops(lambda _i: stored.append(client.put(payload)), duration, warmup))
    client.delete(stored)
    object_id = client.put(payload)
    got = client.get(object_id)
    if (got != payload) if size < 64 * KiB else not np.array_equal(got, payload):
        raise RuntimeError("plasma returned different bytes")
    del got
    rows += ops_rows(f"get {label}", COLOCATED, PLASMA,
                     time_ops(lambda _i: client.get(object_id), duration, warmup))
    client.delete([object_id])
    return rows


def plasma_large(client: Any, size: int, repeats: int) -> list[dict[str, Any]]:
    """One ``size``-byte numpy array: client.put(arr); client.get(oid) is a zero-copy view."""
    array = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    timed = time_large(lambda: client.put(array), client.get,
                       lambda object_id: client.delete([object_id]), size, repeats)
    return large_rows(size_label(size), COLOCATED, PLASMA, size, timed,
                      ("put GB_per_s", "get ms"))


def plasma_get(client: Any, size: int, duration: float, warmup: float) -> list[dict[str, Any]]:
    """Only the get of one ``size``-byte object (the latency-vs-size sweep): bytes below
    64 KiB, else an array (a zero-copy view)."""
    raw = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    payload: Any = raw.tobytes() if size < 64 * KiB else raw
    object_id = client.put(payload)
    got = client.get(object_id)
    if len(got) != size:
        raise RuntimeError("plasma returned a different size")
    del got
    rows = ops_rows(f"get {size_label(size)}", COLOCATED, PLASMA,
                    time_ops(lambda _i: client.get(object_id), duration, warmup))
    client.delete([object_id])
    return rows


def plasma_allocated(client: Any) -> int | None:
    """plasma_store's "allocated bytes" (from its debug string)."""
    for line in client.debug_string().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "allocated bytes":
            return int(value)
    return None


def plasma_memory(client: Any, store_pid: int, count: int, size: int) -> list[dict[str, Any]]:
    """RSS of plasma_store before and after ``count`` raw puts of ``size`` bytes."""
    payload = os.urandom(size)
    before = process_memory(store_pid)
    allocated_before = plasma_allocated(client) or 0
    object_ids = [client.put_raw_buffer(payload) for _ in range(count)]
    after = process_memory(store_pid)
    allocated = plasma_allocated(client)
    stored = len(client.list())
    if stored < count:
        raise RuntimeError(f"plasma holds {stored} of {count} objects")
    rows = memory_rows(PLASMA, count, size, before, after,
                       None if allocated is None else (allocated - allocated_before) / count)
    for start in range(0, len(object_ids), 10_000):
        client.delete(object_ids[start:start + 10_000])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="the plasma_store's socket")
    parser.add_argument("--duration", type=float, default=3.0, help="timed seconds per ops case")
    parser.add_argument("--warmup", type=float, default=0.3, help="unrecorded seconds before")
    parser.add_argument("--small-sizes", default=f"128,{MiB}", help="comma-separated bytes")
    parser.add_argument("--large-bytes", type=int, default=100 * MiB)
    parser.add_argument("--repeats", type=int, default=3, help="timed large puts and gets")
    parser.add_argument("--frame-bytes", type=int, default=MiB, help="handoff frame size")
    parser.add_argument("--frames", type=int, default=300, help="timed handoffs")
    parser.add_argument("--handoff-warmup", type=int, default=20, help="untimed handoffs first")
    parser.add_argument("--get-sizes", default="",
                        help="comma-separated bytes: get-only cases (default none)")
    parser.add_argument("--subscribers", type=int, default=4,
                        help="subscriber processes of the subscribe case")
    parser.add_argument("--sub-events", type=int, default=0,
                        help="timed put -> notification events (default 0: no subscribe case)")
    parser.add_argument("--sub-warmup", type=int, default=20, help="untimed events first")
    parser.add_argument("--sub-rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--memory-objects", type=int, default=0,
                        help="objects put for the memory case (default 0: no memory case)")
    parser.add_argument("--memory-object-bytes", type=int, default=128)
    parser.add_argument("--store-pid", type=int, default=0,
                        help="plasma_store's PID, whose RSS the memory case reads")
    args = parser.parse_args()
    if args.memory_objects and not args.store_pid:
        parser.error("--memory-objects needs --store-pid")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)

    import pyarrow

    plasma = import_plasma()
    rows: list[dict[str, Any]] = []
    client = plasma.connect(args.socket)
    try:
        for size in (int(s) for s in args.small_sizes.split(",") if s):
            progress(f"plasma colocated: put/get {size_label(size)}")
            rows += plasma_small(client, size, args.duration, args.warmup)
        for size in (int(s) for s in args.get_sizes.split(",") if s):
            progress(f"plasma colocated: get {size_label(size)}")
            rows += plasma_get(client, size, args.duration, args.warmup)
        progress(f"plasma colocated: put/get {size_label(args.large_bytes)}")
        rows += plasma_large(client, args.large_bytes, args.repeats)
    finally:
        client.disconnect()
    progress(f"plasma: {handoff_label(args.frame_bytes)}, {args.frames} frames")
    samples = handoff(PLASMA, args.socket, args.frame_bytes, args.frames, args.handoff_warmup)
    rows += handoff_rows(handoff_label(args.frame_bytes), COLOCATED, PLASMA, samples)
    if args.sub_events:
        label = fanout_label(args.subscribers)
        progress(f"plasma: {label}, {args.sub_events} events")
        try:
            per_subscriber = fanout(PLASMA, args.socket, args.subscribers, args.sub_events,
                                    args.sub_warmup, args.sub_rate)
        except Exception as exc:  # the notification socket is optional: report it, go on
            progress(f"plasma: the subscribe case failed: {exc}")
            rows += [{"workload": label, "transport": COLOCATED, "store": PLASMA,
                      "metric": metric, "value": None,
                      "not_applicable": f"its notification socket failed: {exc}"}
                     for metric in ("p50_us", "p99_us")]
        else:
            rows += fanout_rows(label, COLOCATED, PLASMA, args.sub_events, per_subscriber)
    if args.memory_objects:
        progress(f"plasma: {memory_label(args.memory_objects, args.memory_object_bytes)}")
        client = plasma.connect(args.socket)
        try:
            rows += plasma_memory(client, args.store_pid, args.memory_objects,
                                  args.memory_object_bytes)
        finally:
            client.disconnect()
    versions = {"pyarrow": pyarrow.__version__, "numpy (plasma venv)": np.__version__,
                "python (plasma venv)": sys.version.split()[0]}
    json.dump({"versions": versions, "rows": rows}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
