"""Dedup memory: bytes per remembered event and operations per second at 1,000,000 events.

Runs in its own process so resident memory (RSS) growth is the structure's alone: keys are made
first, then the RSS is read, then every key is added to the route's dedup memory
(gateway.dedup.delivered.DeliveredKeys) and the RSS read again. The reference in the same run is
a plain Python set of the same keys as ints, the least a Python structure can hold them in.

    .venv/bin/python bench/dedup_memory.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout, installed or not

from gateway.dedup.delivered import DeliveredKeys  # noqa: E402


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def keys(count: int, salt: str) -> list[bytes]:
    return [hashlib.blake2b(f"{salt}{n}".encode(), digest_size=16).digest() for n in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--output", default=str(HERE / "results" / "dedup_memory.json"))
    args = parser.parse_args()
    delivered, unknown = keys(args.events, "delivered"), keys(args.events, "unknown")

    gc.collect()
    before = rss_bytes()
    memory = DeliveredKeys(args.events, 24 * 3600.0, time.monotonic, lambda count: None)
    started = time.perf_counter()
    for key in delivered:
        memory.add(key)
    insert_seconds = time.perf_counter() - started
    gc.collect()
    ours = rss_bytes() - before

    started = time.perf_counter()
    hits = sum(1 for key in delivered if key in memory)
    misses = sum(1 for key in unknown if key not in memory)
    lookup_seconds = time.perf_counter() - started
    assert hits == misses == args.events, (hits, misses)

    before = rss_bytes()
    reference = {int.from_bytes(key, "big") for key in delivered}
    gc.collect()
    plain_set = rss_bytes() - before
    assert len(reference) == args.events

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "events": args.events,
        "bytes_per_event": ours / args.events,
        "plain_set_bytes_per_event": plain_set / args.events,
        "ratio_to_plain_set": ours / plain_set,
        "inserts_per_second": args.events / insert_seconds,
        "lookups_per_second": 2 * args.events / lookup_seconds,
    }
    print(
        f"{args.events} events: {result['bytes_per_event']:.0f} bytes/event "
        f"(a plain set of the keys: {result['plain_set_bytes_per_event']:.0f}, "
        f"ratio {result['ratio_to_plain_set']:.2f}); "
        f"{result['inserts_per_second']:,.0f} inserts/s, "
        f"{result['lookups_per_second']:,.0f} lookups/s (half hits, half misses)"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
