"""Every number a run measures, as rows of (workload, transport, store, metric, value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Results:
    """The rows in the order measured; the JSON's "results" and the table are made from them."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, workload: str, transport: str, store: str, metric: str,
            value: float | None, **extra: Any) -> None:
        self.rows.append({"workload": workload, "transport": transport, "store": store,
                          "metric": metric, "value": value, **extra})

    def extend(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def not_applicable(self, workload: str, transport: str, store: str, metric: str,
                       reason: str) -> None:
        """A store that has no such thing (shown as "—", not "missing")."""
        self.add(workload, transport, store, metric, None, not_applicable=reason)

    def row(self, workload: str, transport: str, store: str, metric: str) -> dict[str, Any] | None:
        for row in self.rows:
            if (row["workload"], row["transport"], row["store"], row["metric"]) == (
                    workload, transport, store, metric):
                return row
        return None

    def value(self, workload: str, transport: str, store: str, metric: str) -> float | None:
        row = self.row(workload, transport, store, metric)
        return None if row is None else row["value"]

    def is_not_applicable(self, workload: str, transport: str, store: str, metric: str) -> bool:
        row = self.row(workload, transport, store, metric)
        return row is not None and "not_applicable" in row
