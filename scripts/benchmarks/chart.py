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

A run with the scale section adds a second panel, cost per object against N
(log-log): the microseconds per object (``us_per_object`` of its rows) of
the batched put and get, listing every object, the restart and the delete by
sequence, improv-store solid and Redis dashed, at each N measured. A run of
only the scale section draws only that panel.
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
SCALE_ROW = re.compile(r"^scale [\d,]+: (.*)$")
# (what the scale panel draws, the pattern of its rows' workload after "scale N: ", colour)
SCALE_KINDS = (
    ("batched put", re.compile(r"^batched put .*filling$"), "tab:blue"),
    ("batched get", re.compile(r"^batched get "), "tab:orange"),
    ("list every object", re.compile(r"^list every object$"), "tab:green"),
    ("restart (async), until serving", re.compile(r"^restart \(async\)$"), "tab:red"),
    ("delete by sequence", re.compile(r"^delete the older half"), "tab:purple"),
)
SCALE_STORES = (("improv-store", "o-"), ("redis", "^--"))


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


def scale_costs(rows: list[dict[str, Any]], store: str,
                pattern: re.Pattern[str]) -> list[tuple[int, float]]:
    """(N, µs per object) of one store's scale rows whose workload matches ``pattern``
    (colocated or server transport: each store's best path on one machine), by N."""
    points = {}
    for row in rows:
        match = SCALE_ROW.match(row["workload"])
        if (match and pattern.search(match.group(1)) and row["store"] == store
                and row["transport"] in ("colocated", "server")
                and row.get("us_per_object") is not None and row.get("value") is not None):
            points[row["objects"]] = row["us_per_object"]
    return sorted(points.items())


def draw_scale(axes: Any, rows: list[dict[str, Any]]) -> None:
    """The panel "cost per object against N": one line per kind and store, log-log."""
    from matplotlib.ticker import NullFormatter

    counts: set[int] = set()
    for kind, pattern, colour in SCALE_KINDS:
        for store, style in SCALE_STORES:
            points = scale_costs(rows, store, pattern)
            if not points:
                continue
            xs = [count for count, _ in points]
            counts.update(xs)
            name = "improv-store" if store == "improv-store" else "Redis"
            axes.plot(xs, [cost for _, cost in points], style, color=colour,
                      label=f"{name}: {kind}", linewidth=1.4, markersize=5)
    axes.set_xscale("log")
    axes.set_yscale("log")
    ordered = sorted(counts)
    if ordered:
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xticks(ordered, [f"{count:,}" for count in ordered])
        axes.set_xlim(ordered[0] / 2, ordered[-1] * 2)
    axes.set_xlabel("objects in the store, N (log)")
    axes.set_ylabel("µs per object (log)")
    axes.set_title("cost per object against N, log scale\n128 B objects, 1,000 per call;"
                   " improv-store colocated (solid), Redis unix socket (dashed)", fontsize=9)
    axes.grid(True, which="major", alpha=0.4)
    axes.grid(True, which="minor", axis="y", alpha=0.15)
    axes.legend(fontsize=7)


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """Draw the chart of a bench report to ``path``; False when matplotlib is missing or
    the report has nothing it plots (get latencies, scale costs)."""
    rows = report["results"]
    has_scale = any(SCALE_ROW.match(row["workload"]) for row in rows)
    has_latency = any(GET.match(row["workload"]) for row in rows)
    if not (has_scale or has_latency):
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator

    if has_scale:
        panels = 2 if has_latency else 1
        figure, all_axes = plt.subplots(1, panels, figsize=(8 * panels, 5.5), dpi=120,
                                        squeeze=False)
        draw_scale(all_axes[0][-1], rows)
        if not has_latency:
            figure.tight_layout()
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
            plt.close(figure)
            return True
        axes = all_axes[0][0]
    else:
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
