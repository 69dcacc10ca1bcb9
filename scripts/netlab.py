#!/usr/bin/env python3
"""Two machines on one: network, IPC and /dev/shm namespaces joined by a throttled veth link.

Replication has to be tested between stores that do not share memory and talk
over a real link, yet CI has one machine. A ``Lab`` makes two ``Machine``s,
each a holder process in its own network namespace (``ip netns``) and its own
IPC and mount namespaces with a private tmpfs on /dev/shm, so a store in one is
not colocated with a client in the other. /tmp and the repository stay shared,
so certificates, unix sockets and data directories are reachable from both and
from the caller. A veth pair joins them, shaped to ``rate`` with ``tc tbf`` on
both ends (netem is not available in every kernel); ``cut`` and ``mend`` take
the link down and up. It needs root, ``ip``, ``tc``, ``unshare`` and ``nsenter``.

    sys.path.insert(0, "<repo>/scripts"); import netlab
    with netlab.Lab("repl") as lab:
        server = lab.a.popen([sys.executable, "-m", "improv_store.service", ...])
        lab.b.run(["ping", "-c1", lab.a.address], check=True)

By hand: ``scripts/netlab.py up NAME`` prints the namespaces and holds them
until Ctrl-C; ``scripts/netlab.py down NAME`` removes what a killed ``up`` left.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The holder's tmpfs: an upper bound; it takes memory only as stores fill it.
SHM_SIZE = "4g"
# tbf's bucket: at least rate / HZ, and larger than the 64 KiB packets veth's offloads make.
TBF_BURST = "1mb"
# How long a packet may wait in tbf's queue before it is dropped (bounds the queue).
TBF_LATENCY = "20ms"
COMMAND_TIMEOUT = 30.0
NETNS_DIR = Path("/run/netns")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PROGRAMS = ("ip", "tc", "unshare", "nsenter", "mount", "sh")
Argv = Sequence[str | os.PathLike[str]]


class LabError(RuntimeError):
    """A command that builds or tears down the lab failed; the message has its output."""


def _command(argv: Sequence[str]) -> str:
    """Run a setup command, returning its stdout; LabError (with stderr) if it fails."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can.

    Checked by doing it once, in throwaway namespaces that vanish with the probe
    process: a veth pair, tbf on it, and a tmpfs on /dev/shm. Callers that need
    the lab fail with this reason rather than skip.
    """
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or in a privileged container)"
    missing = [program for program in _PROGRAMS if shutil.which(program) is None]
    if missing:
        return f"missing programs: {', '.join(missing)} (Debian: apt-get install iproute2)"
    probe = (
        "mount -t tmpfs -o size=1m tmpfs /dev/shm"
        " && ip link add nlprobe0 type veth peer name nlprobe1"
        f" && tc qdisc add dev nlprobe0 root tbf rate 1gbit burst {TBF_BURST}"
        f" latency {TBF_LATENCY}"
    )
    argv = ["unshare", "--net", "--ipc", "--mount", "--propagation", "private", "sh", "-c", probe]
    try:
        _command(argv)
        _command(["ip", "netns", "list"])
    except LabError as exc:
        return f"cannot make namespaces here: {exc}"
    return None


class Machine:
    """One side of the lab: a holder process whose namespaces the others enter.

    The holder runs ``sleep infinity`` in the network namespace ``name`` and in
    IPC and mount namespaces of its own, with a private tmpfs on /dev/shm.
    ``popen`` and ``run`` start programs in all three with ``nsenter``, which
    execs them, so the PID a caller gets is the program's own.
    """

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self._holder: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def _start_holder(self) -> None:
        """Start the holder and wait until its /dev/shm is mounted (it says so on stdout)."""
        script = (
            f"mount -t tmpfs -o mode=1777,size={SHM_SIZE} tmpfs /dev/shm"
            " && echo ready && exec sleep infinity"
        )
        argv = [
            "ip", "netns", "exec", self.name,
            "unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c", script,
        ]
        holder = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._holder, self.pid = holder, holder.pid  # ip, unshare and sh exec: one PID
        assert holder.stdout is not None
        with holder.stdout:
            first = holder.stdout.readline()
            if first.strip() != b"ready":
                output = (first + holder.stdout.read()).decode(errors="replace").strip()
                raise LabError(f"holder of {self.name} did not start: {output}")

    def _enter(self, argv: Argv, cwd: str | os.PathLike[str] | None) -> list[str]:
        """The nsenter command that runs ``argv`` in this machine, in ``cwd`` (default ours).

        Entering a mount namespace moves the working directory to its root, so
        nsenter is told the directory to keep.
        """
        if self._holder is None or self._holder.poll() is not None:
            raise LabError(f"machine {self.name} is not running")
        workdir = os.fspath(cwd) if cwd is not None else os.getcwd()
        enter = ["nsenter", "-t", str(self.pid), "--net", "--ipc", "--mount", f"--wd={workdir}"]
        return [*enter, "--", *(os.fspath(arg) for arg in argv)]

    def popen(self, argv: Argv, **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(argv, **kwargs)``, run inside this machine."""
        return subprocess.Popen(self._enter(argv, kwargs.pop("cwd", None)), **kwargs)

    def run(self, argv: Argv, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(argv, **kwargs)``, run inside this machine."""
        return subprocess.run(self._enter(argv, kwargs.pop("cwd", None)), **kwargs)

    def _stop(self) -> None:
        """Kill the holder, then anything still in this machine's network namespace
        (only this lab's programs can be: the namespace was made for it), by PID."""
        if self._holder is not None:
            if self._holder.poll() is None:
                self._holder.kill()
            self._holder.wait(COMMAND_TIMEOUT)
            self._holder = None
        if (NETNS_DIR / self.name).exists():
            with contextlib.suppress(LabError):
                for pid in _command(["ip", "netns", "pids", self.name]).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)


class Lab:
    """Two machines, ``a`` (10.77.X.1) and ``b`` (10.77.X.2), joined by a veth pair.

    ``prefix`` names the namespaces (``PREFIX-TAG-a``) and the veth ends, with a
    random tag so parallel labs never share a name. X comes from the tag too;
    the link lives only inside the two namespaces, so subnets could not clash
    anyway. Both ends are shaped to ``rate`` with tbf. Everything made is
    removed by ``close`` (also when making it failed half way); use the lab as
    a context manager.
    """

    def __init__(self, prefix: str, *, rate: str = "1gbit") -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"prefix must match {_PREFIX.pattern}, not {prefix!r}")
        tag = secrets.token_hex(3)
        subnet = f"10.77.{int(tag, 16) % 254 + 1}"
        self.rate = rate
        self.a = Machine(f"{prefix}-{tag}-a", f"{subnet}.1")
        self.b = Machine(f"{prefix}-{tag}-b", f"{subnet}.2")
        # Interface names have at most 15 characters.
        self._links = {self.a: f"{prefix[:6]}{tag}a", self.b: f"{prefix[:6]}{tag}b"}
        self._made: list[Machine] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for machine in (self.a, self.b):
            _command(["ip", "netns", "add", machine.name])
            self._made.append(machine)
        link_a, link_b = self._links[self.a], self._links[self.b]
        _command([
            "ip", "link", "add", link_a, "netns", self.a.name, "type", "veth",
            "peer", "name", link_b, "netns", self.b.name,
        ])
        for machine, link in self._links.items():
            ip = ["ip", "-n", machine.name]
            _command([*ip, "link", "set", "lo", "up"])
            _command([*ip, "addr", "add", f"{machine.address}/24", "dev", link])
            _command([*ip, "link", "set", link, "up"])
            _command([
                "tc", "-n", machine.name, "qdisc", "add", "dev", link, "root", "tbf",
                "rate", self.rate, "burst", TBF_BURST, "latency", TBF_LATENCY,
            ])
            machine._start_holder()

    def _set_link(self, state: str) -> None:
        for machine, link in self._links.items():
            _command(["ip", "-n", machine.name, "link", "set", link, state])

    def cut(self) -> None:
        """Take both ends of the link down: new connections between the machines fail at
        once (network unreachable) and open ones stall, as when a cable is pulled, until
        they time out or the link is mended."""
        self._set_link("down")

    def mend(self) -> None:
        """Bring both ends of the link back up (addresses and routes return with them)."""
        self._set_link("up")

    def close(self) -> None:
        """Kill the holders (and any program left inside) and delete the namespaces, which
        takes the veth pair with them. Safe to call again."""
        errors = []
        while self._made:
            machine = self._made.pop()
            try:
                machine._stop()
                if (NETNS_DIR / machine.name).exists():
                    _command(["ip", "netns", "delete", machine.name])
            except (LabError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _down(prefix: str) -> None:
    """Remove the namespaces (and what runs in them) of labs named ``prefix`` that a killed
    process left behind."""
    for path in sorted(NETNS_DIR.glob(f"{prefix}-*")):
        machine = Machine(path.name, "")
        machine._stop()
        _command(["ip", "netns", "delete", path.name])
        print(f"removed {path.name}")


def main(argv: list[str] | None = None) -> int:
    """``up PREFIX``: make a lab and hold it until interrupted; ``down PREFIX``: clean up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("prefix", nargs="?", default="netlab")
    parser.add_argument("--rate", default="1gbit", help="tbf rate of each end (default 1gbit)")
    args = parser.parse_args(argv)
    if args.action == "down":
        _down(args.prefix)
        return 0
    reason = unavailable()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    with Lab(args.prefix, rate=args.rate) as lab:
        for machine in (lab.a, lab.b):
            print(f"{machine.name}: {machine.address}, enter with"
                  f" nsenter -t {machine.pid} --net --ipc --mount")
        print("Ctrl-C to remove", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
