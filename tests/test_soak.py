"""The soak, shortened for CI: 16 client processes for 15 s, random ones SIGKILLed.

Runs the workload and the checks of ``scripts/soak`` (scripts/soak_workload.py): the
server reaps every killed client (no session, pin, unsealed create or subscriber left),
its arena holds exactly the live objects, /dev/shm only the segments Info reports, every
object verifies before and after a restart, the server's memory stays within the bound,
and it stops cleanly without a traceback in its log.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))  # spawned workers inherit sys.path and import it too
soak = importlib.import_module("soak_workload")


def test_soak_with_sigkilled_clients(tmp_path: Path) -> None:
    """Every check passes, and the run did what it claims: clients were killed and
    replaced, every kind of operation happened, and objects were verified."""
    config = soak.SoakConfig(duration=15.0, kill_interval=1.5)
    report = soak.run_soak(config, str(tmp_path))
    assert not report.violations, "\n".join(report.violations)
    assert report.clients_killed > 0
    assert report.clients_started == config.clients + report.clients_killed
    assert {op for op, count in report.ops.items() if count == 0} == set()
    assert report.objects > 0
    assert report.objects_verified == report.objects_verified_after_restart == report.objects
