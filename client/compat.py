"""Make ``pyarrow.plasma`` resolve to ``improv_store.plasma``, so code written for Plasma
(improv 0.2.x among it) runs on improv-store without a changed line.

    import improv_store.client.compat
    improv_store.client.compat.install()    # before anything imports pyarrow.plasma

``install()`` maps ``pyarrow.plasma`` and ``pyarrow._plasma`` (where improv
imports ``PlasmaObjectExists``, ``ObjectNotAvailable`` and ``ObjectID``) to
``improv_store.plasma`` and provides ``pyarrow.lib.ArrowIOError`` (``OSError``,
which pyarrow's was and which ``StoreUnavailable`` is). A real pyarrow, if
installed, keeps everything else; its own ``plasma`` (before 12) is replaced.
Without pyarrow a minimal stand-in package ``pyarrow`` holding only these
modules is registered, and says so in its docstring.

The switch for programs that cannot be changed (improv's nexus spawns its actors
as new interpreters): ``python -m improv_store.client.compat --install`` writes
a ``.pth`` file into this environment's site-packages that calls
``install_if_enabled()`` at every interpreter start, which installs the mapping
when ``IMPROV_STORE_PLASMA=1`` is set and does nothing otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import sysconfig
import types
from collections.abc import Sequence

log = logging.getLogger(__name__)

ENV_VAR = "IMPROV_STORE_PLASMA"
PTH_NAME = "improv_store_plasma.pth"
# One line, run by site at interpreter start. The variable is checked before anything is
# imported, so that an interpreter without it set pays nothing (improv_store.client imports
# gRPC, about 0.2 s).
PTH_LINE = (
    f"import os; os.environ.get({ENV_VAR!r}) == '1'"
    " and __import__('improv_store.client.compat', fromlist=['_']).install_if_enabled()\n"
)
STAND_IN_DOC = (
    "Not Apache Arrow: improv-store's stand-in (improv_store.client.compat), registered"
    " because pyarrow is not installed. It holds only pyarrow.plasma and pyarrow._plasma"
    " (both improv_store.plasma) and pyarrow.lib.ArrowIOError (OSError)."
)
ALIASES = ("pyarrow.plasma", "pyarrow._plasma")


def install() -> types.ModuleType:
    """Map ``pyarrow.plasma`` and ``pyarrow._plasma`` to ``improv_store.plasma`` and
    provide ``pyarrow.lib.ArrowIOError``; return the ``pyarrow`` module. Idempotent."""
    plasma = importlib.import_module("improv_store.plasma")
    try:
        pyarrow = importlib.import_module("pyarrow")
        lib = importlib.import_module("pyarrow.lib")
    except ImportError:
        pyarrow, lib = _stand_in()
    if not hasattr(lib, "ArrowIOError"):
        lib.ArrowIOError = OSError  # type: ignore[attr-defined]
    for name in ALIASES:
        previous = sys.modules.get(name)
        if previous is not None and previous is not plasma:
            log.warning("%s was already imported from %s: replaced by improv_store.plasma",
                        name, getattr(previous, "__file__", previous))
        sys.modules[name] = plasma
        setattr(pyarrow, name.rpartition(".")[2], plasma)
    return pyarrow


def _stand_in() -> tuple[types.ModuleType, types.ModuleType]:
    """A package ``pyarrow`` with a ``lib`` module, registered in ``sys.modules``."""
    pyarrow = types.ModuleType("pyarrow", STAND_IN_DOC)
    pyarrow.__path__ = []  # a package: its submodules are the ones in sys.modules
    lib = types.ModuleType("pyarrow.lib", "improv-store's stand-in for pyarrow.lib.")
    lib.ArrowIOError = OSError  # type: ignore[attr-defined]
    pyarrow.lib = lib  # type: ignore[attr-defined]
    sys.modules["pyarrow"] = pyarrow
    sys.modules["pyarrow.lib"] = lib
    return pyarrow, lib


def enabled() -> bool:
    """Whether ``IMPROV_STORE_PLASMA=1`` asks for the mapping."""
    return os.environ.get(ENV_VAR) == "1"


def install_if_enabled() -> None:
    """``install()`` when ``IMPROV_STORE_PLASMA=1`` is set (what the ``.pth`` file calls)."""
    if enabled():
        install()


def pth_path(site_dir: str | None = None) -> str:
    """Where ``--install`` puts the ``.pth`` file: this environment's site-packages."""
    return os.path.join(site_dir or sysconfig.get_path("purelib"), PTH_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m improv_store.client.compat --install | --uninstall | --status``."""
    parser = argparse.ArgumentParser(
        prog="python -m improv_store.client.compat",
        description=f"Add or remove the {PTH_NAME} file that maps pyarrow.plasma to"
        f" improv_store.plasma in every interpreter of this environment started with"
        f" {ENV_VAR}=1.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--install", action="store_true", help=f"write {PTH_NAME}")
    action.add_argument("--uninstall", action="store_true", help=f"remove {PTH_NAME}")
    action.add_argument("--status", action="store_true",
                        help="say whether the file is there and the switch is on")
    parser.add_argument("--site-dir", help="site-packages to use (default: this environment's)")
    args = parser.parse_args(argv)
    path = pth_path(args.site_dir)
    if args.install:
        with open(path, "w") as handle:
            handle.write(PTH_LINE)
        sys.stdout.write(f"{path}: pyarrow.plasma is improv_store.plasma when {ENV_VAR}=1\n")
    elif args.uninstall:
        if os.path.exists(path):
            os.unlink(path)
            sys.stdout.write(f"removed {path}\n")
    else:
        state = "installed" if os.path.exists(path) else "not installed"
        sys.stdout.write(f"{path}: {state}; {ENV_VAR} is {'on' if enabled() else 'off'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
