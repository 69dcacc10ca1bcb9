"""What a run reports: the machine and settings, the ratios, the markdown table and its legend.

The JSON holds ``machine_info`` and ``compute_ratios``; the table printed
under it is ``markdown_table``, then ``legend`` and ``details``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.calls import BATCH, BATCH_ITEM_BYTES, SHM_MIN_SIZE, SWEEP_SIZES
from benchmarks.durable import DURABLE_BATCH_WRITERS
from benchmarks.fanout import SUB_PAYLOAD_BYTES
from benchmarks.harness import COLOCATED, IMPROV, NUMPY, PLASMA, REDIS, KiB, MiB, size_label
from benchmarks.results import Results
from benchmarks.server_memory import MEMORY_OBJECT_BYTES


def command_version(*args: str) -> str | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_total = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    hiredis = package_version("hiredis")
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "mem_total": mem_total,
        "loadavg_at_start": os.getloadavg(),  # other work on the machine skews the numbers
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "versions": {
            "improv-store": package_version("improv-store"),
            "grpcio": package_version("grpcio"),
            "protobuf": package_version("protobuf"),
            "numpy": np.__version__,
            "redis-py": package_version("redis"),
            "hiredis": hiredis,
            "redis-server": command_version("redis-server", "--version")
            if shutil.which("redis-server") else None,
        },
        "redis_py_parser": "hiredis" if hiredis else "pure python",
        "workdir": str(workdir),
        "workdir_filesystem": " ".join(
            (command_version("df", "--output=fstype,source", str(workdir)) or "").split()[2:]
        ) or None,
        "settings": {
            "quick": args.quick,
            "duration_per_case_s": args.duration_per_case,
            "warmup_s": args.warmup,
            "large_repeats": args.repeats,
            "large_size_bytes": args.large_mib * MiB,
            "handoff_frames": args.frames,
            "handoff_warmup_frames": args.handoff_warmup,
            "handoff_frame_bytes": MiB,
            "improv_store_durability": args.durability,
            "improv_store_memory_bytes": args.memory,
            "plasma_store_memory_bytes": args.memory,
            "plasma_python": str(args.plasma_python),
            "durable_cases": "improv-store --durability sync vs redis appendonly yes +"
                             " appendfsync always, both over unix socket; improv-store also"
                             " colocated (transfer='auto')",
            "lane": lane_enabled(),
            "batched": f"{BATCH} objects of {BATCH_ITEM_BYTES} B per call (durable: of"
                       f" {KiB} B, {DURABLE_BATCH_WRITERS} writer processes): improv-store"
                       " put_many / get_many vs a redis-py pipeline(transaction=False)",
            "get_only_sizes": list(SWEEP_SIZES),
            "subscribers": args.subscribers,
            "subscribe_events": args.sub_events,
            "subscribe_warmup_events": args.sub_warmup,
            "subscribe_rate_per_s": args.sub_rate,
            "memory_objects": args.memory_objects,
            "memory_object_bytes": MEMORY_OBJECT_BYTES,
            "colocated": "improv-store StoreClient(transfer='auto') on its unix socket"
                         f" (shared memory from {SHM_MIN_SIZE} bytes, inline below);"
                         " Plasma shared memory; Redis: its unix-socket numbers",
            "gb": "1e9 bytes",
        },
    }


LOWER_IS_BETTER = {"p50_us", "p99_us", "ms", "rss_B_per_obj", "alloc_B_per_obj", "restart_s",
                   "us_per_op", "first_get_s", "us_per_object"}
METRIC_LABEL = {"ops_per_s": "ops/s", "p50_us": "p50 µs", "p99_us": "p99 µs",
                "GB_per_s": "GB/s", "puts_per_s": "puts/s", "items_per_s": "items/s", "ms": "ms",
                "rss_B_per_obj": "RSS bytes/object", "alloc_B_per_obj": "allocated bytes/object",
                "restart_s": "s until ready", "us_per_op": "µs/op",
                "first_get_s": "s until the first get", "us_per_object": "µs/object",
                "MB_per_s": "MB/s"}
TRANSPORT_ORDER = {"unix": 0, "tcp": 1, COLOCATED: 2, "memory": 3, "server": 4}
PLASMA_TRANSPORTS = {COLOCATED, "server"}  # Plasma has only these rows


def compute_ratios(results: Results) -> list[dict[str, Any]]:
    """One entry per (workload, transport, metric): each store's value and the two ratios.

    Redis has no shared-memory path: on "colocated" rows its value is its
    "unix" one. Plasma exists only on "colocated" and "server" rows. Rows are
    grouped by workload, in the order measured (those of the server itself,
    memory and restart, last), then by transport, then metric as recorded.
    """
    workload_order: dict[str, tuple[bool, int]] = {}
    key_order: dict[tuple[str, str, str], int] = {}
    for row in results.rows:
        workload_order.setdefault(row["workload"],
                                  (row["transport"] == "server", len(workload_order)))
        key_order.setdefault((row["workload"], row["transport"], row["metric"]), len(key_order))
    keys = sorted(key_order, key=lambda k: (workload_order[k[0]], TRANSPORT_ORDER.get(k[1], 9),
                                            key_order[k]))
    ratios = []
    for workload, transport, metric in keys:
        mine = results.value(workload, transport, IMPROV, metric)
        plasma = results.value(workload, transport, PLASMA, metric)
        redis_transport = transport
        theirs = results.value(workload, transport, REDIS, metric)
        if theirs is None and transport == COLOCATED:
            redis_transport = "unix"
            theirs = results.value(workload, "unix", REDIS, metric)
        ratios.append({
            "workload": workload, "transport": transport, "metric": metric,
            "improv_store": mine, "plasma": plasma, "redis": theirs,
            "redis_transport": redis_transport,
            "reference": results.value(workload, transport, NUMPY, metric),
            "ratio": mine / theirs if mine is not None and theirs else None,
            "ratio_plasma": mine / plasma if mine is not None and plasma else None,
            "higher_is_better": metric not in LOWER_IS_BETTER,
            "plasma_not_applicable": results.is_not_applicable(workload, transport, PLASMA,
                                                               metric),
            "redis_not_applicable": results.is_not_applicable(workload, redis_transport, REDIS,
                                                              metric),
        })
    return ratios


def fmt(value: float | None) -> str:
    if value is None:
        return "missing"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "missing"
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def markdown_table(ratios: list[dict[str, Any]], warnings: list[str] | None = None) -> str:
    """Columns: workload | transport | improv-store | Plasma | Redis | the two ratios.

    "—" where a store has no such workload (Plasma off "colocated" and
    "server" rows, a store without persistence on the restart row; the
    reference row's ratios), "missing" where it has but was not measured.
    Each of ``warnings`` (lost subscribe events) becomes a row of its own.
    """
    dash = "—"
    lines = ["| workload | transport | improv-store | Plasma | Redis | improv/Plasma"
             " | improv/Redis |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in ratios:
        workload = f"{r['workload']} {METRIC_LABEL.get(r['metric'], r['metric'])}"
        if r["reference"] is not None:  # no store involved: the ceiling for each of them
            value = fmt(r["reference"])
            cells = [value, value, value, dash, dash]
        else:
            has_plasma = (r["transport"] in PLASMA_TRANSPORTS
                          and not r.get("plasma_not_applicable"))
            has_redis = not r.get("redis_not_applicable")
            cells = [
                fmt(r["improv_store"]),
                fmt(r["plasma"]) if has_plasma else dash,
                fmt(r["redis"]) if has_redis else dash,
                fmt_ratio(r["ratio_plasma"]) if has_plasma else dash,
                fmt_ratio(r["ratio"]) if has_redis else dash,
            ]
        lines.append(f"| {workload} | {r['transport']} | {' | '.join(cells)} |")
    for warning in warnings or ():
        lines.append(f"| WARNING: lost subscribe events: {warning} | | | | | | |")
    return "\n".join(lines)


def memory_size_label(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):g} GiB" if nbytes >= 1 << 30 else size_label(nbytes)


def lane_enabled() -> bool:
    """Whether colocated clients take the local lane (as StoreClient decides by default)."""
    return os.environ.get("IMPROV_STORE_LANE", "on").lower() not in ("0", "off", "no")


def legend(args: argparse.Namespace) -> str:
    """What the table's columns and transports mean, printed under it."""
    large = size_label(args.large_mib * MiB)
    memory = memory_size_label(args.memory)
    objects = f"{args.memory_objects:,}"
    lane = ("its unary calls (puts, gets) over the local lane, and gets by ID from the"
            " shared-memory object index, with no call: copied out below"
            f" {size_label(SHM_MIN_SIZE)}, read in place (pinned) from there on"
            if lane_enabled() else "IMPROV_STORE_LANE=off: its unary calls over gRPC")
    return (
        "improv/Plasma and improv/Redis = improv-store / peer; for ops/s, puts/s and GB/s"
        " higher is better for improv-store, for p50/p99 µs, ms, bytes/object and s lower"
        " is better."
        " unix, tcp: improv-store transfer=inline (bytes through gRPC)."
        " colocated: improv-store transfer=auto on its unix socket (shared memory from"
        f" {size_label(SHM_MIN_SIZE)}; 128 B and 1 KiB still travel inline; {lane}),"
        " Plasma through shared memory, Redis has no such path: its column repeats its"
        " unix-socket number."
        f" Colocated payloads of {size_label(SHM_MIN_SIZE)} and more (1 MiB, {large}, the"
        " get-only 64 KiB and 16 MiB) are uint8 arrays and gets are zero-copy views;"
        " elsewhere payloads are bytes."
        " Handoff: put in one process, ID through a pipe, get + read the first and last"
        " byte in another, one frame at a time."
        f" Subscribe: one process puts {SUB_PAYLOAD_BYTES} B objects at"
        f" {args.sub_rate:g}/s with the put's perf_counter_ns in the name (Plasma: in the"
        " ObjectID; Redis: SET + PUBLISH of the key, pipelined), and"
        f" {args.subscribers} other processes record the delay until the event reaches them:"
        " improv-store's Subscribe stream (puts: unix = inline gRPC, colocated = transfer"
        " auto), Plasma's notification socket, Redis SUBSCRIBE; the worst subscriber's p50"
        f" and p99 of {args.sub_events} events after warm-up (every subscriber must get every"
        " event, else a WARNING row)."
        f" Batched rows: {BATCH} objects per call, items/s = calls/s x {BATCH}; improv-store"
        " put_many / get_many (one BatchPut / BatchGet), Redis a pipeline"
        f" (transaction=False) of {BATCH} SET / GET per round trip; durable batched:"
        f" {DURABLE_BATCH_WRITERS} writer processes, {BATCH} x {size_label(KiB)} per call;"
        " Plasma not measured there (—)."
        " The reference row is one np.copyto in this process (no store): the ceiling for a"
        " put that copies once."
        f" improv-store --durability {args.durability} --memory {memory} (durable rows:"
        " sync; colocated durable rows: transfer=auto writers), waiting (untimed) for its"
        " background commits between cases; Redis without persistence (durable rows:"
        " appendonly yes, appendfsync always);"
        f" plasma_store -m {memory}."
        f" Server memory: a fresh server each, {objects} puts of {MEMORY_OBJECT_BYTES} B"
        " (improv-store: unnamed objects, colocated client, --durability async, after its"
        " commits; Plasma: put_raw_buffer; Redis: SET obj:NNNNNNN, pipelined); RSS"
        f" bytes/object = growth of the server's VmRSS / {objects} (improv-store's includes the"
        " pages of its shared-memory arena, mapped in 64 MiB segments populated whole, and of"
        " the mapped LMDB file; Plasma's its shared memory); allocated bytes/object:"
        " improv-store Info arena used / object count,"
        " Plasma its allocated bytes, Redis INFO used_memory growth."
        " Restart: improv-store SIGTERM, then a new server on the same data dir: seconds from"
        " its start (Python start-up included) until health SERVING; Redis SAVE (RDB), SIGTERM,"
        " a new redis-server on that dir: seconds until DBSIZE counts every key; Plasma keeps"
        " nothing across a restart (—)."
    )


def details(results: Results) -> list[str]:
    """Lines under the legend: every subscriber's event count, the durable rounds, the parts
    of the RSS growth."""
    names = {IMPROV: IMPROV, PLASMA: "Plasma", REDIS: "Redis"}
    lines = []
    counts = [f"{names[row['store']]} {row['transport']} {', '.join(map(str, row['received']))}"
              f" of {row['expected']}"
              for row in results.rows if "expected" in row and row["metric"] == "p50_us"]
    if counts:
        lines.append(f"Subscribe events received per subscriber: {'; '.join(counts)}.")
    parts = []
    for row in results.rows:
        if row["metric"] == "rss_B_per_obj" and "rss_after" in row:
            each = " / ".join(f"{row.get(f'{key}_per_object', 0):,.0f}"
                              for key in ("RssAnon", "RssShmem", "RssFile"))
            parts.append(f"{names[row['store']]} {each}")
    if parts:
        lines.append("RSS growth per object, anonymous / shared memory / file pages (bytes):"
                     f" {'; '.join(parts)}.")
    rounds = [f"{names[row['store']]} {row['transport']}"
              f" {row['workload'].removeprefix('durable put ')}"
              f" {', '.join(f'{value:,.0f}' for value in row['rounds'])}"
              for row in results.rows if "rounds" in row and row["metric"] == "puts_per_s"]
    if rounds:
        lines.append("Durable puts/s in each round (the table shows the median):"
                     f" {'; '.join(rounds)}.")
    starts = [f"{names[row['store']]} {row['empty_start_s']:.3g} s (SIGTERM took"
              f" {row['stop_s']:.3g} s)"
              for row in results.rows if row["metric"] == "restart_s" and "empty_start_s" in row]
    if starts:
        lines.append(f"For the restart: a start with no data until ready: {'; '.join(starts)}.")
    for row in results.rows:
        if row["workload"].startswith("subscribe") and row["metric"] == "p50_us" and (
                "not_applicable" in row):
            lines.append(f"{names[row['store']]} subscribe: —, {row['not_applicable']}.")
    return lines
