"""The handoff and subscribe cases of improv-store and Redis (the workloads: handoff, fanout).

Both run their clients in other processes; this process only settles the
server between cases, collects the samples and makes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from benchmarks.fanout import fanout, fanout_label, fanout_rows
from benchmarks.handoff import handoff, handoff_label, handoff_rows
from benchmarks.harness import COLOCATED, IMPROV, REDIS, MiB, progress
from benchmarks.results import Results
from benchmarks.servers import Peers, settle


def bench_handoff(results: Results, kind: str, store: str, transport: str, address: str,
                  frames: int, warmup: int) -> None:
    """p50 / p99 of a 1 MiB frame put in one process and read in another."""
    samples = handoff(kind, address, MiB, frames, warmup)
    results.extend(handoff_rows(handoff_label(MiB), transport, store, samples))


def lost_events(rows: list[dict[str, Any]]) -> list[str]:
    """A warning for each subscribe case in which a subscriber missed events or failed."""
    lost = []
    for row in rows:
        if row["metric"] != "p50_us" or "expected" not in row:
            continue
        if row["errors"] or any(count != row["expected"] for count in row["received"]):
            counts = ", ".join(str(count) for count in row["received"])
            errors = f"; errors: {'; '.join(row['errors'])}" if row["errors"] else ""
            lost.append(f"{row['store']} {row['transport']}: subscribers received {counts}"
                        f" of {row['expected']} events{errors}")
    return lost


def bench_subscribe(results: Results, kind: str, store: str, transport: str, address: str,
                    args: argparse.Namespace, warnings: list[str]) -> None:
    """put -> event in ``args.subscribers`` other processes."""
    per_subscriber = fanout(kind, address, args.subscribers, args.sub_events,
                            args.sub_warmup, args.sub_rate)
    rows = fanout_rows(fanout_label(args.subscribers), transport, store, args.sub_events,
                       per_subscriber)
    results.extend(rows)
    warnings.extend(lost_events(rows[:1]))


def _cases(peers: Peers, kinds: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """(kind, store, transport, address) of each of ``kinds`` whose server is running."""
    where = {"improv-shm": (IMPROV, COLOCATED, peers.improv.socket_path),
             "improv-inline": (IMPROV, "unix", peers.improv.socket_path)}
    if peers.redis is not None:
        where["redis"] = (REDIS, "unix", peers.redis.socket_path)
    return [(kind, *where[kind]) for kind in kinds if kind in where]


def _settle_improv(peers: Peers) -> None:
    with contextlib.closing(peers.connect(IMPROV, "unix")) as client:
        settle(client)


def _flush_redis(peers: Peers) -> None:
    if peers.redis is not None:
        with contextlib.closing(peers.connect(REDIS, "unix")) as client:
            client.flushall()


def run_handoffs(args: argparse.Namespace, results: Results, peers: Peers) -> None:
    """A 1 MiB frame from one process to another: improv-store shm and inline, Redis."""
    for kind, store, transport, address in _cases(peers, ("improv-shm", "improv-inline",
                                                          "redis")):
        progress(f"{kind}: {handoff_label(MiB)}, {args.frames} frames")
        if store == IMPROV:
            _settle_improv(peers)
        bench_handoff(results, kind, store, transport, address, args.frames,
                      args.handoff_warmup)
    _flush_redis(peers)


def run_subscribes(args: argparse.Namespace, results: Results, peers: Peers,
                   warnings: list[str]) -> None:
    """put -> event in subscriber processes: improv-store inline and shm puts, Redis."""
    for kind, store, transport, address in _cases(peers, ("improv-inline", "improv-shm",
                                                          "redis")):
        progress(f"{kind}: {fanout_label(args.subscribers)}, {args.sub_events} events")
        if store == IMPROV:
            _settle_improv(peers)
        bench_subscribe(results, kind, store, transport, address, args, warnings)
    _flush_redis(peers)
