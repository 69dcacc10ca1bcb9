"""The latency-vs-object-size chart of scripts/bench: get p50 per store, log-log, as a PNG.

scripts/bench calls ``write_chart(report, png_path)`` with the report it
wrote as JSON; it returns False (and draws nothing) when matplotlib is not
installed. Standalone (it imports nothing else of the package), it redraws
the chart of a saved run:

    .venv/bin/python scripts/benchmarks/chart.py bench-results/bench-<stamp>.json [out.png]

Points: every "get <size>" result of the run, one line per store, on each
store's best path on one machine: improv-store colocated (transfer="auto":
shared memory from 64 KiB, a zero-copy view), Plasma (shared memory) and
Redis over its unix socket (it has no shared-memory path). Sizes measured
call after call give their p50; the large object (one get, repeated) gives
the median of its repeats.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
GET = re.compile(r"^get (\d+) (B|KiB|MiB|GiB)$")
# (store in the results, its label, the transport of its best path on one machine, style,
#  where its value labels go: offset in points and alignment, so that close points stay legible)
SERIES = (
    ("improv-store", "improv-store (colocated)", "colocated", "o-", (6, 7), "left"),
    ("plasma", "Plasma (shared memory)", "colocated", "s--", (6, -13), "left"),
    ("redis", "Redis (unix socket)", "unix", "^:", (-7, 3), "right"),
)


def get_latencies(rows: list[dict[str, Any]], store: str,
                  transport: str) -> list[tuple[int, float, str]]:
    """(size in bytes, get latency in µs, "p50" or "median") of one store, by size."""
    points: dict[int, tuple[float, str]] = {}
    for row in rows:
        match = GET.match(row["workload"])
        if (not match or row["store"] != store or row["transport"] != transport
                or row.get("value") is None):
            continue
        size = int(match.group(1)) * UNITS[match.group(2)]
        if row["metric"] == "p50_us":
            points[size] = (row["value"], "p50")
        elif row["metric"] == "ms" and size not in points:
            points[size] = (row["value"] * 1e3, "median")
    return [(size, *points[size]) for size in sorted(points)]


def size_text(size: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if size >= UNITS[unit] and size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]} {unit}"
    return f"{size} B"


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """Draw the chart of a bench report to ``path``; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator

    rows = report["results"]
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    sizes: set[int] = set()
    for store, label, transport, style, offset, align in SERIES:
        points = get_latencies(rows, store, transport)
        if not points:
            continue
        xs = [size for size, _, _ in points]
        ys = [latency for _, latency, _ in points]
        sizes.update(xs)
        axes.plot(xs, ys, style, label=label, linewidth=1.6, markersize=6)
        for x, y in zip(xs, ys, strict=True):
            text = f"{y / 1e3:.3g} ms" if y >= 1e3 else f"{y:.3g} µs"
            axes.annotate(text, (x, y), textcoords="offset points", xytext=offset, ha=align,
                          fontsize=7)
    axes.set_xscale("log")
    axes.set_yscale("log")
    ordered = sorted(sizes)
    axes.xaxis.set_major_locator(NullLocator())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xticks(ordered, [size_text(size) for size in ordered])
    if ordered:
        axes.set_xlim(ordered[0] / 6, ordered[-1] * 3)  # room for the labels
    axes.set_xlabel("object size (log)")
    axes.set_ylabel("get latency, µs (log)")
    machine = report.get("machine", {})
    versions = machine.get("versions", {})
    load = machine.get("loadavg_at_start") or [0.0]
    repeats = machine.get("settings", {}).get("large_repeats", "?")
    redis_version = re.search(r"v=(\S+)", versions.get("redis-server") or "")
    axes.set_title("get latency vs object size, one client on the server's machine\n"
                   f"p50 (the largest size: median of {repeats} repeats);"
                   f" improv-store {versions.get('improv-store') or '?'},"
                   f" pyarrow {versions.get('pyarrow') or '?'},"
                   f" Redis {redis_version.group(1) if redis_version else '?'};"
                   f" load average {load[0]:.2f}", fontsize=9)
    axes.grid(True, which="major", alpha=0.4)
    axes.grid(True, which="minor", axis="y", alpha=0.15)
    axes.legend(fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(f"usage: {argv[0]} RESULTS.json [OUT.png]", file=sys.stderr)
        return 2
    source = Path(argv[1])
    target = Path(argv[2]) if len(argv) == 3 else source.with_suffix(".png")
    if not write_chart(json.loads(source.read_text()), target):
        print("matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
