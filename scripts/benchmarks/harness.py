"""Timing and result rows that every store is measured with, the Plasma worker's included.

Every store is timed by the same functions: ``time_ops`` (one call after
another) and ``time_large`` (one big object, median of repeats); the rows
they become are built here too, so that the Plasma worker's rows have the
same shape as scripts/bench's. Standard library and numpy only (see the
package docstring).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

KiB = 1 << 10
MiB = 1 << 20
IMPROV = "improv-store"
PLASMA = "plasma"
REDIS = "redis"
NUMPY = "numpy"
COLOCATED = "colocated"


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries the results)."""
    print(f"# {message}", file=sys.stderr, flush=True)


def size_label(size: int) -> str:
    if size >= MiB:
        return f"{size // MiB} MiB"
    if size >= KiB:
        return f"{size // KiB} KiB"
    return f"{size} B"


def collect_reports(procs: list[Any], out: Any, timeout: float) -> list[Any]:
    """One report per started process from ``out``; then join them, killing stragglers."""
    try:
        reports = [out.get(timeout=timeout) for _ in procs]
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return reports


def percentile(sorted_ns: list[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    index = min(len(sorted_ns) - 1, max(0, round(fraction * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1e3


def time_loop(op: Callable[[int], object], duration: float, warmup: float,
              warmed: Callable[[], object] = lambda: None) -> tuple[list[int], int]:
    """Call ``op(i)`` back to back: ``warmup`` s unrecorded, then ``warmed()`` (untimed),
    then ``duration`` s, each op timed. Returns the samples (ns, in call order) and the
    nanoseconds the timed part took."""
    ns = time.perf_counter_ns
    i = 0
    warm_end = ns() + int(warmup * 1e9)
    while ns() < warm_end:
        op(i)
        i += 1
    warmed()
    samples: list[int] = []
    start = ns()
    end = start + int(duration * 1e9)
    now = start
    while now < end:
        t0 = ns()
        op(i)
        now = ns()
        samples.append(now - t0)
        i += 1
    return samples, now - start


def time_ops(op: Callable[[int], object], duration: float, warmup: float) -> dict[str, float]:
    """ops/s, p50 and p99 of ``op(i)`` called back to back (see ``time_loop``)."""
    samples, elapsed = time_loop(op, duration, warmup)
    samples.sort()
    return {
        "ops_per_s": len(samples) / (elapsed / 1e9),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "count": len(samples),
    }


def ops_rows(workload: str, transport: str, store: str,
             measured: dict[str, float]) -> list[dict[str, Any]]:
    """Result rows (ops/s, p50, p99) of one ``time_ops`` case."""
    return [{"workload": workload, "transport": transport, "store": store, "metric": metric,
             "value": measured[metric], "samples": measured["count"]}
            for metric in ("ops_per_s", "p50_us", "p99_us")]


def time_large(put: Callable[[], Any], get: Callable[[Any], Any], delete: Callable[[Any], None],
               nbytes: int, repeats: int,
               settle: Callable[[], None] = lambda: None) -> dict[str, list[int]]:
    """Nanoseconds of ``repeats`` puts and gets of one ``nbytes`` object, after one warm-up each.

    Each put is deleted again before the next; the gets all read one object.
    ``settle()`` runs (untimed) before every timed call, so each starts from a
    quiet store (improv-store: its background commits have caught up).
    """
    ns = time.perf_counter_ns
    put_ns = []
    for attempt in range(repeats + 1):
        settle()
        t0 = ns()
        ref = put()
        elapsed = ns() - t0
        delete(ref)
        if attempt:
            put_ns.append(elapsed)
    ref = put()
    get_ns = []
    for attempt in range(repeats + 1):
        settle()
        t0 = ns()
        data = get(ref)
        elapsed = ns() - t0
        if len(data) != nbytes:
            raise RuntimeError(f"got {len(data)} of {nbytes} bytes")
        del data
        if attempt:
            get_ns.append(elapsed)
    delete(ref)
    settle()
    return {"put_ns": put_ns, "get_ns": get_ns}


def large_rows(label: str, transport: str, store: str, nbytes: int, timed: dict[str, list[int]],
               metrics: tuple[str, ...] = ("put GB_per_s", "get GB_per_s", "get ms"),
               ) -> list[dict[str, Any]]:
    """Result rows of one ``time_large`` case: medians, with every sample kept."""
    rows = []
    for item in metrics:
        op, metric = item.split()
        times = timed[f"{op}_ns"]
        if metric == "GB_per_s":
            each = [nbytes / t for t in times]  # bytes per ns == GB/s
        else:
            metric = "ms"
            each = [t / 1e6 for t in times]
        rows.append({"workload": f"{op} {label}", "transport": transport, "store": store,
                     "metric": metric, "value": statistics.median(each),
                     "samples": len(each), "each": each})
    return rows


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) of a process, in bytes."""
    memory = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                memory[key] = int(value.split()[0]) * KiB
    return memory


def memory_label(count: int, size: int) -> str:
    return f"server memory per {size_label(size)} object ({count:,} objects)"


def memory_rows(store: str, count: int, size: int, before: dict[str, int],
                after: dict[str, int], allocated: float | None) -> list[dict[str, Any]]:
    """RSS growth per object (with its parts) and the store's own allocation per object."""
    label = memory_label(count, size)
    parts = {f"{key}_per_object": (after[key] - before.get(key, 0)) / count
             for key in after if key != "VmRSS"}
    return [
        {"workload": label, "transport": "server", "store": store, "metric": "rss_B_per_obj",
         "value": (after["VmRSS"] - before["VmRSS"]) / count, "samples": count,
         "rss_before": before, "rss_after": after, **parts},
        {"workload": label, "transport": "server", "store": store,
         "metric": "alloc_B_per_obj", "value": allocated, "samples": count},
    ]
