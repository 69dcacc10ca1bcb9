"""The modules of scripts/bench, one per section of the run.

Shared with scripts/bench_plasma_worker.py, which runs under .venv-plasma's
python (pyarrow 11 needs numpy < 2), and so import only the standard library
and numpy at import time: ``harness`` (timing and result rows), ``backend``
(one process's connection to any store), ``handoff`` and ``fanout`` (the
workloads that span processes).

Only scripts/bench (the project's venv) imports the rest: ``results`` (the
rows measured), ``servers`` (start, probe and stop the stores), ``calls``
(one client, call after call), ``crossprocess`` (handoff and subscribe
against improv-store and Redis), ``plasma`` (plasma_store and the worker),
``durable``, ``server_memory``, ``scale`` (100k to 1M objects: memory, listing,
restart, batches, bulk delete, fan-out), ``replication`` (a follower on a second
machine made of namespaces, against a Redis replica), ``report`` (machine, ratios,
table, legend) and ``chart`` (the PNG).
"""
