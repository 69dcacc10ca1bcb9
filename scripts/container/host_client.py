"""Host side of scripts/container-test: talks to the containerized store over TCP.

Run with the host's .venv Python. Every command prints one JSON line and exits
0 when its check holds, 1 when it does not:

  roundtrip ADDR                 not colocated; an array round-trips inline, equal
  put-frame ADDR NAME            put a 512x512 uint16 frame; prints its id and sha256
  put-durable ADDR N MANIFEST    put N objects (1 KiB .. 6 MiB); write id + sha256 of each
  verify ADDR MANIFEST           every object of MANIFEST is there with the same bytes
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from improv_store.client import ObjectID, StoreClient


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def roundtrip(address: str) -> bool:
    rng = np.random.default_rng(7)
    sent = rng.standard_normal((256, 256))  # 512 KiB: shared memory if it were colocated
    with StoreClient(address, timeout=30) as store:
        colocated = store.colocated
        oid = store.put(sent, name="ci_roundtrip")
        back = store.get(oid)
        by_name = store.get("ci_roundtrip")
    equal = (
        back.dtype == sent.dtype
        and back.shape == sent.shape
        and bool(np.array_equal(back, sent))
        and bool(np.array_equal(by_name, sent))
    )
    report(check="roundtrip", colocated=colocated, equal=equal, id=oid.hex(), bytes=sent.nbytes)
    return equal and not colocated


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, (512, 512), dtype=np.uint16)


def put_frame(address: str, name: str) -> bool:
    data = frame(11)
    with StoreClient(address, timeout=30) as store:
        oid = store.put(data, name=name)
    report(check="put-frame", id=oid.hex(), name=name, sha256=digest(data))
    return True


def put_durable(address: str, count: int, manifest: str) -> bool:
    rng = np.random.default_rng(23)
    sizes = [1 << 10, 64 << 10, 1 << 20, 6 << 20]  # 6 MiB goes through the chunked stream
    entries = []
    with StoreClient(address, timeout=60) as store:
        for i in range(count):
            data = rng.integers(0, 255, sizes[i % len(sizes)], dtype=np.uint8)
            oid = store.put(data, name=f"ci_durable_{i}")
            entries.append({"id": oid.hex(), "sha256": digest(data), "size": data.nbytes})
    with open(manifest, "w") as out:
        json.dump(entries, out)
    report(check="put-durable", acknowledged=len(entries))
    return len(entries) == count


def verify(address: str, manifest: str) -> bool:
    with open(manifest) as source:
        entries = json.load(source)
    missing, mismatched = [], []
    with StoreClient(address, timeout=60) as store:
        for entry in entries:
            try:
                data = store.get(ObjectID.from_hex(entry["id"]))
            except Exception as exc:
                missing.append(f"{entry['id']}: {type(exc).__name__}: {exc}")
                continue
            if digest(data) != entry["sha256"]:
                mismatched.append(entry["id"])
    ok = bool(entries) and not missing and not mismatched
    report(check="verify", expected=len(entries), missing=missing, mismatched=mismatched, ok=ok)
    return ok


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str]) -> int:
    commands = {
        "roundtrip": lambda a: roundtrip(a[0]),
        "put-frame": lambda a: put_frame(a[0], a[1]),
        "put-durable": lambda a: put_durable(a[0], int(a[1]), a[2]),
        "verify": lambda a: verify(a[0], a[1]),
    }
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if commands[argv[0]](argv[1:]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
