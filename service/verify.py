"""``improv-store verify``: check every stored payload of a data directory against its CRC32C.

A payload is checked as it is on disk (in LMDB), so this finds what a later
read from disk would refuse with DATA_LOSS: bit rot, a damaged copy, a file
edited behind the store's back. It reads without locking the directory and
works on a stopped server's data as well as beside a running server (it then
checks what the server has committed; objects it holds only in memory have
no disk copy to check yet). Changes a ``sync`` server had only in its
write-ahead log when it stopped are counted; it applies them when it starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import lmdb

from . import wal
from .lmdb_backend import Checked, DataDirectoryReader


@dataclass
class Report:
    """What a verification found."""

    data_dir: str
    objects: int = 0
    bytes: int = 0
    corrupt: list[Checked] = field(default_factory=list)
    # Set when LMDB itself could not read on: the database structure is damaged.
    damaged: str | None = None
    # Changes in the write-ahead log that LMDB does not hold yet.
    logged: int = 0

    @property
    def clean(self) -> bool:
        return not self.corrupt and self.damaged is None

    def summary(self) -> str:
        """One line: what was checked and how much of it is corrupt."""
        line = (
            f"verified {self.objects} objects, {self.bytes} bytes ({self.bytes / 2**20:.1f} MiB) in"
            f" {self.data_dir}: {len(self.corrupt)} corrupt"
        )
        if self.damaged is not None:
            line += f"; the database could not be read to the end: {self.damaged}"
        if self.logged:
            line += (f"; {self.logged} changes are in the write-ahead log only (the server"
                     " applies them to the database when it starts)")
        return line

    def lines(self) -> list[str]:
        """The summary, then one line per corrupt object naming its ID and name."""
        return [self.summary()] + [
            f"corrupt {entry.object_id.hex()} {entry.name or '(unnamed)'}: {entry.problem}"
            for entry in self.corrupt
        ]

    def to_json(self) -> str:
        """The report as one JSON object."""
        return json.dumps(
            {
                "data_dir": self.data_dir,
                "objects": self.objects,
                "bytes": self.bytes,
                "clean": self.clean,
                "damaged": self.damaged,
                "logged": self.logged,
                "corrupt": [
                    {"id": entry.object_id.hex(), "name": entry.name, "problem": entry.problem}
                    for entry in self.corrupt
                ],
            }
        )


def verify(data_dir: str) -> Report:
    """Check every object in ``data_dir``; raise OSError or lmdb.Error if it cannot be opened."""
    report = Report(data_dir)
    with DataDirectoryReader(data_dir) as reader:
        try:
            for checked in reader.check_objects():
                report.objects += 1
                report.bytes += checked.size
                if checked.problem is not None:
                    report.corrupt.append(checked)
            report.corrupt.extend(reader.orphan_payloads())
            applied = reader.applied_log_generation()
        except lmdb.Error as exc:
            report.damaged = str(exc)
            return report
    logged = wal.read_after(os.path.join(data_dir, wal.WAL_FILE), applied)
    report.logged = sum(len(changes) for _, changes in logged)
    return report
