"""The Plasma cases: start plasma_store, run scripts/bench_plasma_worker.py under .venv-plasma.

Plasma left pyarrow after version 11, which needs numpy < 2 while the
project's venv has numpy 2; so its workloads run in that other python and
come back as JSON rows of the same shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.calls import SWEEP_SIZES
from benchmarks.crossprocess import lost_events
from benchmarks.harness import PLASMA, MiB
from benchmarks.results import Results
from benchmarks.server_memory import MEMORY_OBJECT_BYTES
from benchmarks.servers import plasma_store_executable, start_plasma

WORKER = Path(__file__).resolve().parent.parent / "bench_plasma_worker.py"
PLASMA_WORKER_TIMEOUT = 900.0


def bench_plasma(args: argparse.Namespace, workdir: Path, results: Results,
                 stack: contextlib.ExitStack) -> dict[str, str]:
    """Start plasma_store, run the Plasma workloads in .venv-plasma's python, stop the store.

    Returns the versions the worker reported. The worker's progress lines pass
    through on stderr; its JSON comes on stdout.
    """
    executable = plasma_store_executable(args.plasma_python)
    assert executable is not None
    server = start_plasma(workdir, executable, args.memory, stack)
    command = [
        str(args.plasma_python), str(WORKER),
        "--socket", server.socket_path,
        "--duration", str(args.duration_per_case),
        "--warmup", str(args.warmup),
        "--small-sizes", f"128,{MiB}",
        "--large-bytes", str(args.large_mib * MiB),
        "--repeats", str(args.repeats),
        "--frame-bytes", str(MiB),
        "--frames", str(args.frames),
        "--handoff-warmup", str(args.handoff_warmup),
        "--get-sizes", ",".join(str(size) for size in SWEEP_SIZES),
        "--subscribers", str(args.subscribers),
        "--sub-events", str(args.sub_events),
        "--sub-warmup", str(args.sub_warmup),
        "--sub-rate", str(args.sub_rate),
        "--memory-objects", str(args.memory_objects),
        "--memory-object-bytes", str(MEMORY_OBJECT_BYTES),
        "--store-pid", str(server.process.pid),
    ]
    try:
        worker = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  text=True)
        try:
            stdout, _ = worker.communicate(timeout=PLASMA_WORKER_TIMEOUT)
        finally:
            if worker.poll() is None:  # timed out or interrupted: stop it by its PID
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(10)
        if worker.returncode != 0:
            raise RuntimeError(f"the Plasma worker exited with {worker.returncode};"
                               f" plasma_store log:\n{server.log_tail()}")
        report = json.loads(stdout)
    finally:
        server.stop()
    results.extend(report["rows"])
    versions: dict[str, str] = report["versions"]
    return versions


def run_plasma(args: argparse.Namespace, workdir: Path, results: Results,
               stack: contextlib.ExitStack, notes: dict[str, Any]) -> None:
    """The Plasma cases; Plasma is deprecated and optional, so a failure is a note, not an end."""
    try:
        notes["plasma_versions"] = bench_plasma(args, workdir, results, stack)
    except Exception as exc:
        notes["plasma_missing"] = f"failed: {exc}"
        print(f"WARNING: Plasma {notes['plasma_missing']}", file=sys.stderr, flush=True)
    else:
        notes["warnings"].extend(lost_events(
            [row for row in results.rows if row["store"] == PLASMA]))
