"""Run inside a second container that shares the store's IPC namespace and socket volume.

    python3 - ADDRESS NAME SHA256 < colocated_check.py

Gets the frame the host put under NAME, and one it puts itself, and checks
that each comes back zero-copy: a read-only numpy view that does not own its
data, whose address lies in a /dev/shm/improvstore-* mapping of this process
(/proc/self/maps), with the expected bytes. Prints one JSON verdict line;
exits 0 only when every check holds.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from improv_store.client import StoreClient


def shm_mapping(address: int) -> str | None:
    """The /dev/shm/improvstore-* file mapped at ``address`` in this process, if any."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5].strip() if len(fields) > 5 else ""
            if start <= address < end:
                return path if path.startswith("/dev/shm/improvstore-") else None
    return None


def examine(array: np.ndarray, expected_sha256: str) -> dict:
    address = array.__array_interface__["data"][0]
    try:
        array.flat[0] = 1
        writable = True
    except ValueError:
        writable = False
    mapping = shm_mapping(address)
    facts = {
        "read_only": not array.flags.writeable and not writable,
        "owns_data": bool(array.flags.owndata),
        "mapping": mapping,
        "same_bytes": hashlib.sha256(array.tobytes()).hexdigest() == expected_sha256,
    }
    facts["ok"] = (
        facts["read_only"]
        and not facts["owns_data"]
        and mapping is not None
        and facts["same_bytes"]
    )
    return facts


def main(address: str, name: str, expected_sha256: str) -> int:
    verdict: dict = {"address": address}
    with StoreClient(address, timeout=30) as store:
        verdict["colocated"] = store.colocated
        verdict["host_frame"] = examine(store.get(name), expected_sha256)
        own = np.arange(300 * 300, dtype=np.float32).reshape(300, 300)
        own_id = store.put(own, name="ci_colocated_own")
        verdict["own_frame"] = examine(store.get(own_id), hashlib.sha256(own.tobytes()).hexdigest())
    verdict["ok"] = (
        verdict["colocated"] and verdict["host_frame"]["ok"] and verdict["own_frame"]["ok"]
    )
    print(json.dumps(verdict), flush=True)
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
