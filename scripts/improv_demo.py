"""Run improv's minimal demo (Generator -> Processor) headless for a while and check that no
frame was lost; run by ``scripts/improv-suite --demo SECONDS`` in improv's venv, from the
unpacked sdist's demos/minimal, with no file of improv changed.

It starts ``improv server minimal.yaml``, sends setup and run on the control port as
improv's TUI does, stops after SECONDS, quits, and reads the server's log: frames sent
(the Generator logs each), and any sign of a lost or failed frame (the Processor's getID
logging "cannot be found", an actor's error or traceback). Prints a JSON summary; exits 1
when a frame was lost, nothing was sent, or an actor did not stop.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import zmq  # improv's venv has it

LOG = Path("demo.log")
OUT = Path("server.out")  # the server prints its ports on stdout
START_TIMEOUT = 60
REPLY_TIMEOUT_MS = 10_000
PORTS = re.compile(r"Server running on \(control, output, log\) ports \((\d+), (\d+), (\d+)\)")
# Logged by the Processor's runStep whenever its queue is empty for 1 ms: not a loss.
EMPTY_QUEUE = "Could not get frame!"
LOSS = re.compile(r"cannot be found|Traceback|error in (run|stop|setup)|Exception", re.I)


def wait_for(
    pattern: str | re.Pattern[str], timeout: float, path: Path = LOG
) -> re.Match[str]:
    """Wait until the server's log (or its output) holds pattern."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text() if path.exists() else "")
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"{pattern} not in {path} within {timeout} s")


def command(socket: zmq.Socket, word: str) -> None:
    """Send a command on the control port and wait for the server's reply."""
    socket.send_string(word)
    if not socket.poll(REPLY_TIMEOUT_MS):
        raise TimeoutError(f"no reply to {word!r}")
    socket.recv_multipart()


def main() -> int:
    seconds = float(sys.argv[1])
    LOG.unlink(missing_ok=True)
    with OUT.open("w") as out:
        server = subprocess.Popen(
            ["improv", "server", "-f", str(LOG), "minimal.yaml"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    context = zmq.Context()
    control = context.socket(zmq.REQ)
    control.setsockopt(zmq.LINGER, 0)
    try:
        control_port = wait_for(PORTS, START_TIMEOUT, OUT).group(1)
        control.connect(f"tcp://127.0.0.1:{control_port}")
        command(control, "setup")
        wait_for("Completed setup for Generator", START_TIMEOUT)
        wait_for("Completed setup for Processor", START_TIMEOUT)
        command(control, "run")
        time.sleep(seconds)
        command(control, "stop")
        wait_for("Generator stopping", START_TIMEOUT)
        wait_for("Processor stopping", START_TIMEOUT)
        command(control, "quit")
        server.wait(START_TIMEOUT)
    finally:
        control.close()
        context.term()
        if server.poll() is None:
            server.terminate()
            server.wait(START_TIMEOUT)
    lines = LOG.read_text().splitlines()
    sent = sum("Sent message on" in line for line in lines)
    lost = [line for line in lines if LOSS.search(line) and EMPTY_QUEUE not in line]
    print(json.dumps({"seconds": seconds, "frames_sent": sent, "problems": lost[:20]}))
    return 0 if sent > 0 and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
