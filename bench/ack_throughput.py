"""Acknowledgement throughput: `delivery: sync` vs `delivery: queued` (durable, fsynced).

Starts a fast upstream and the gateway (one sync and one queued route, SQLite store with
synchronous=FULL) as subprocesses on 127.0.0.1, then drives each route with the same load:
CONCURRENCY connections, unique ymids, for SECONDS, alternating sync and queued runs so machine
drift hits both. Prints requests/s and p50/p99 latency per mode and the queued/sync ratio, and
writes the same as JSON.

    .venv/bin/python bench/ack_throughput.py [--seconds 5] [--rounds 2] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import free_port, machine, wait_for_port  # noqa: E402

SECRET = "bench-secret-0123456789"


def config_text(public: int, admin: int, upstream: int, store: Path) -> str:
    route = """
  {name}:
    path: /{name}
    allow_ips: [127.0.0.1]
    secret: {{query_param: token, keys: ['${{MONETAG_SECRET}}']}}
    aliases: {{uid: ymid, event: event_type}}
    delivery: {name}
    upstreams: [{{url: 'http://127.0.0.1:{upstream}/postback'}}]
"""
    return (
        f"server: {{listen: '127.0.0.1:{public}', admin_listen: '127.0.0.1:{admin}', "
        f"max_in_flight: 10000, reload_interval: 0}}\n"
        f"store: {{path: '{store}'}}\n"
        + "routes:"
        + route.format(name="sync", upstream=upstream)
        + route.format(name="queued", upstream=upstream)
    )


async def drive(url: str, seconds: float, concurrency: int, run: str) -> dict[str, float]:
    """Send postbacks with unique ymids from `concurrency` connections for `seconds`."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(number: int) -> None:
            nonlocal failures
            sent = 0
            while time.perf_counter() < deadline:
                params = {"uid": f"{run}-{number}-{sent}", "event": "click", "token": SECRET}
                started = time.perf_counter()
                async with session.get(url, params=params) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - started)
                sent += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests_per_second": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "requests": len(latencies),
        "failures": failures,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--output", default=str(HERE / "results" / "ack_throughput.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ack-bench-"))
    upstream_port, public, admin = free_port(), free_port(), free_port()
    config = workdir / "config.yaml"
    config.write_text(config_text(public, admin, upstream_port, workdir / "gw.db"))
    env = {**os.environ, "MONETAG_SECRET": SECRET}
    with (workdir / "gateway.log").open("wb") as log:
        processes = [
            subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(upstream_port)]),
            subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=HERE.parent,
            ),
        ]
    try:
        wait_for_port(upstream_port)
        wait_for_port(public)
        runs: dict[str, list[dict[str, float]]] = {"sync": [], "queued": []}
        await drive(f"http://127.0.0.1:{public}/sync", 1.0, args.concurrency, "warmup")
        for round_number in range(args.rounds):
            for mode in ("sync", "queued"):
                url = f"http://127.0.0.1:{public}/{mode}"
                result = await drive(url, args.seconds, args.concurrency, f"{mode}{round_number}")
                runs[mode].append(result)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)

    summary = {
        mode: {
            key: statistics.median(run[key] for run in results)
            for key in ("requests_per_second", "p50_ms", "p99_ms")
        }
        for mode, results in runs.items()
    }
    ratio = summary["queued"]["requests_per_second"] / summary["sync"]["requests_per_second"]
    print(f"{'mode':<8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}   (median of {args.rounds} runs, "
          f"{args.concurrency} connections, {args.seconds:g} s each)")  # fmt: skip
    for mode, numbers in summary.items():
        print(
            f"{mode:<8}{numbers['requests_per_second']:>10.0f}"
            f"{numbers['p50_ms']:>10.2f}{numbers['p99_ms']:>10.2f}"
        )
    print(f"queued/sync requests/s: {ratio:.2f}")
    failures = sum(run["failures"] for results in runs.values() for run in results)
    if failures:
        print(f"WARNING: {failures} requests did not answer 200")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": machine(),
                "settings": vars(args),
                "summary": summary,
                "queued_over_sync": ratio,
                "runs": runs,
                "failures": failures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
