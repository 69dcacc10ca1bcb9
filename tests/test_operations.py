"""What an operator sees: Prometheus metrics, `improv-store info`, structured logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families

from improv_store.client import ObjectNotFound

CLI = os.path.join(os.path.dirname(sys.executable), "improv-store")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the /metrics page, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_by_the_right_amounts(start_server: Any) -> None:
    """A known workload moves each counter and gauge by exactly what it did. (The
    subscriber-lag gauge has a test of its own: it needs a backlog gRPC cannot absorb.)"""
    port = free_port()
    server = start_server("--metrics-listen", f"127.0.0.1:{port}", "--memory", "32M",
                          durability="sync")
    before = scrape(port)
    before_puts = value(before, "improv_store_requests_total", method="Put", code="OK")
    with server.client(transfer="inline") as store:
        ids = [store.put(np.full(1 << 20, i, dtype=np.uint8), name=f"m{i}") for i in range(40)]
        for object_id in ids[-3:]:
            store.get(object_id)
        for _ in range(2):
            with pytest.raises(ObjectNotFound):
                store.get("absent")
        store.delete(ids[-1])
        with store.subscribe("m", since=1) as events:
            next(iter(events))
            during = scrape(port)
    deadline = time.monotonic() + 10  # the server notices the cancelled stream shortly
    while value(after := scrape(port), "improv_store_subscribers") and time.monotonic() < deadline:
        time.sleep(0.05)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("improv_store_requests_total", method="Put", code="OK") == 40
    assert moved("improv_store_requests_total", method="Get", code="OK") == 3
    assert moved("improv_store_requests_total", method="Get", code="NOT_FOUND") == 2
    assert moved("improv_store_requests_total", method="Delete", code="OK") == 1
    assert moved("improv_store_request_seconds_count", method="Put", code="OK") == 40
    assert moved("improv_store_request_seconds_count", method="Get", code="NOT_FOUND") == 2
    put_buckets = sorted(
        (float(dict(labels)["le"]), count) for (name, labels), count in after.items()
        if name == "improv_store_request_seconds_bucket"
        and ("method", "Put") in labels and ("code", "OK") in labels
    )
    assert len(put_buckets) == 14 and put_buckets[-1] == (float("inf"), 40 + before_puts)
    counts = [count for _, count in put_buckets]
    assert counts == sorted(counts)  # cumulative
    assert moved("improv_store_request_seconds_sum", method="Put", code="OK") > 0
    assert value(after, "improv_store_objects") == 39
    assert value(after, "improv_store_bytes") == 39 << 20
    assert moved("improv_store_commit_batch_changes_sum") == 41  # 40 puts and a delete
    assert 1 <= moved("improv_store_commit_seconds_count") <= 41
    assert value(after, "improv_store_arena_capacity_bytes") == 32 << 20
    assert value(after, "improv_store_evictions_total") >= 40 - 32  # 32 MiB holds 32 frames
    assert value(after, "improv_store_arena_used_bytes") <= 32 << 20
    assert value(during, "improv_store_subscribers") == 1
    assert value(after, "improv_store_subscribers") == 0
    committed = value(after, "improv_store_committed_sequence")
    assert value(after, "improv_store_last_sequence") == committed


def test_subscriber_lag_gauge_counts_what_a_stalled_subscriber_has_not_taken(
    start_server: Any,
) -> None:
    """A subscriber that stops reading falls behind by what gRPC's buffers cannot hold:
    with 2000 events of ~10 KiB (far more than the few MiB of flow-control windows) the
    gauge shows it behind, and back at zero once it has read everything."""
    port = free_port()
    server = start_server("--metrics-listen", f"127.0.0.1:{port}")
    labels = {f"padding{index}": "p" * 1000 for index in range(10)}
    with server.client(transfer="inline") as store, store.subscribe("lag/") as events:
        received = iter(events)
        store.put(b"first", "lag/0", labels=labels)
        next(received)
        for index in range(1, 2000):  # the subscriber reads nothing meanwhile
            store.put(b"frame", f"lag/{index}", labels=labels)
        assert value(scrape(port), "improv_store_subscriber_lag_events") >= 1
        for _ in range(1999):
            next(received)
        deadline = time.monotonic() + 10
        while value(scrape(port), "improv_store_subscriber_lag_events") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert value(scrape(port), "improv_store_subscriber_lag_events") == 0


def test_info_shows_the_same_at_a_glance(start_server: Any) -> None:
    """`improv-store info` reports requests, failures, commits and shared memory."""
    server = start_server(durability="sync")
    with server.client(transfer="inline") as store:
        for i in range(5):
            store.put(i, name=f"i{i}")
        with pytest.raises(ObjectNotFound):
            store.get("absent")
        info = store.info()
    assert info.commits >= 1 and info.committed_changes == 5
    assert info.failed_requests >= 1 and info.requests >= 7
    output = subprocess.run([CLI, "info", "--address", server.unix_address],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    for label in ("requests:", "failed", "commits:", "changes each", "shared memory:",
                  "evictions:", "subscriber lag:"):
        assert label in output


def test_json_logs_one_line_per_start_stop_and_error(start_server: Any) -> None:
    """--log-format json writes one parseable object per line, errors included."""
    server = start_server("--log-format", "json", "--memory", "16M", durability="none")
    with server.client() as store:
        store.put(np.zeros(1 << 20))
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    messages = [entry["message"] for entry in lines]
    assert any("serving on" in m for m in messages)
    assert any(m == "stopped" for m in messages)
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in lines)


def test_evictions_are_logged(start_server: Any) -> None:
    """Each eviction is one log line naming the object."""
    server = start_server("--memory", "8M", durability="sync")
    with server.client(transfer="inline") as store:
        first = store.put(np.zeros(3 << 20, dtype=np.uint8), name="first")
        for _ in range(4):
            store.put(np.zeros(3 << 20, dtype=np.uint8))
    deadline = time.monotonic() + 10
    while f"evicted {first.hex()}" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"evicted {first.hex()} (first," in server.log()


def test_metrics_port_in_use_is_a_clear_error(start_server: Any) -> None:
    """A metrics address that cannot be bound stops the start-up with exit 1 and a reason."""
    port = free_port()
    first = start_server("--metrics-listen", f"127.0.0.1:{port}")
    result = subprocess.run(
        [sys.executable, "-m", "improv_store.service", "--socket", "", "--listen",
         f"127.0.0.1:{free_port()}", "--data-dir", first.data_dir + "-other",
         "--metrics-listen", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr
