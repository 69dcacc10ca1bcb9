"""The improv-store server: object table, shared memory, LMDB durability, events, gRPC.

``launch`` starts a server process from Python (as improv's nexus started
``plasma_store``).
"""

from .launch import StoreProcess, launch

__all__ = ["StoreProcess", "launch"]
