"""Reward sessions over HTTP, against a real gateway process (SQLite store, history on) and
the fast upstream, with a reference in the same run:

1. cost per request, one request after another on a kept-alive connection, in rounds that
   alternate: a postback on a route without sessions (the reference), a postback carrying a
   ymid issued by the endpoint on a route with sessions (the check's cost is the difference),
   and a request for a new ymid (initData checked, a ymid signed, its history row queued);
2. the status endpoint under WAITERS concurrent frontends each holding `GET
   /ymid/miniapp/{ymid}?wait=30s`: the gateway's CPU while they wait, its memory, the
   reference postback's latency with and without them, and for each waiter how long after its
   postback was answered it heard `rewarded`.

    .venv/bin/python bench/sessions_endpoints.py [--requests 1000] [--rounds 3] [--waiters 1000]

Prints the figures and writes bench/results/sessions_endpoints.json.
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
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import free_port, machine, wait_for_port  # noqa: E402

from tests.support.telegram import TEST_BOT_TOKEN, signed_init_data  # noqa: E402

SECRET = "bench-secret-0123456789"
SIGNING_KEY = "bench-ymid-signing-key-0123456789abcdef"
ORIGIN = "https://miniapp.example"
USER = 279058397
TICKS = os.sysconf("SC_CLK_TCK")


def config(public: int, admin: int, upstream: int, store: Path) -> str:
    route = """
    allow_ips: [127.0.0.1/32]
    secret: {{query_param: token, keys: ['${{MONETAG_SECRET}}']}}
    aliases: {{uid: ymid, event: event_type, zone: zone_id}}
    upstreams: [{{url: 'http://127.0.0.1:{upstream}/postback'}}]"""
    sessions = f"""
    sessions:
      bot_token: '{TEST_BOT_TOKEN}'
      signing_keys: ['{SIGNING_KEY}']
      allowed_origins: ['{ORIGIN}']
      per_user_per_minute: 100000000
      per_address_per_minute: 100000000"""
    return (
        f"server: {{listen: '127.0.0.1:{public}', admin_listen: '127.0.0.1:{admin}', "
        "max_in_flight: 100000, reload_interval: 0}\n"
        f"store: {{path: '{store}'}}\n"
        "routes:\n"
        "  plain:\n    path: /plain" + route.format(upstream=upstream) + "\n"
        "  miniapp:\n    path: /miniapp" + route.format(upstream=upstream) + sessions + "\n"
    )


class Bench:
    def __init__(self, http: aiohttp.ClientSession, public: int, admin: int) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{public}"
        self.admin = f"http://127.0.0.1:{admin}"
        self.numbers = iter(range(10**9))

    async def postback(self, path: str, ymid: str) -> None:
        query = {"uid": ymid, "event": "impression", "zone": "7", "token": SECRET}
        async with self.http.get(self.base + path, params=query) as response:
            await response.read()
            if response.status != 200:
                raise SystemExit(f"{path} answered {response.status}")

    async def issue(self) -> str:
        body = {"init_data": signed_init_data(USER, int(time.time()))}
        async with self.http.post(
            self.base + "/ymid/miniapp", json=body, headers={"Origin": ORIGIN}
        ) as response:
            answer = await response.json()
            if response.status != 200:
                raise SystemExit(f"issuing answered {response.status}: {answer}")
            ymid: str = answer["ymid"]
            return ymid

    async def status(self, ymid: str, wait: str) -> dict[str, Any]:
        url = f"{self.base}/ymid/miniapp/{ymid}"
        async with self.http.get(url, params={"wait": wait}, headers={"Origin": ORIGIN}) as r:
            answer: dict[str, Any] = await r.json()
            return answer

    async def waiting(self) -> float:
        async with self.http.get(self.admin + "/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("gateway_ymid_status_waiting "):
                    return float(line.split()[1])
        return 0.0

    async def timed(self, count: int, one: Any) -> list[float]:
        """Seconds each of `count` calls of `one()` took, one after another."""
        took = []
        for _ in range(count):
            started = time.perf_counter()
            await one()
            took.append(time.perf_counter() - started)
        return took


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


async def per_request(bench: Bench, requests: int, rounds: int) -> dict[str, Any]:
    medians: dict[str, list[float]] = {"plain postback": [], "postback with ymid": [], "issue": []}
    for _ in range(rounds):
        ymids = [await bench.issue() for _ in range(requests)]  # paid below, each once
        plain = iter(f"p{next(bench.numbers)}" for _ in range(requests))
        paid = iter(ymids)
        cases = {
            "plain postback": lambda plain=plain: bench.postback("/plain", next(plain)),
            "postback with ymid": lambda paid=paid: bench.postback("/miniapp", next(paid)),
            "issue": bench.issue,
        }
        for name, one in cases.items():
            medians[name].append(statistics.median(await bench.timed(requests, one)))
    figures = {name: us(statistics.median(values)) for name, values in medians.items()}
    reference = figures["plain postback"]
    return {
        "median_us": figures,
        "over_plain_postback": {name: round(v / reference, 3) for name, v in figures.items()},
    }


async def under_waiters(bench: Bench, pid: int, waiters: int) -> dict[str, Any]:
    plain = (f"q{next(bench.numbers)}" for _ in range(10**9))
    alone = await bench.timed(500, lambda: bench.postback("/plain", next(plain)))
    ymids = [await bench.issue() for _ in range(waiters)]
    rss_before = rss_mib(pid)
    heard: dict[str, float] = {}

    async def wait_on(ymid: str) -> None:
        answer = await bench.status(ymid, "30s")
        if answer["state"] == "rewarded":
            heard[ymid] = time.perf_counter()

    tasks = [asyncio.create_task(wait_on(ymid)) for ymid in ymids]
    while await bench.waiting() < waiters:
        await asyncio.sleep(0.05)
    cpu_start, idle_start = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(5)
    idle_cpu = (cpu_seconds(pid) - cpu_start) / (time.perf_counter() - idle_start)
    rss_waiting = rss_mib(pid)
    beside = await bench.timed(500, lambda: bench.postback("/plain", next(plain)))
    answered: dict[str, float] = {}
    for ymid in ymids:  # Monetag's postbacks, one after another
        await bench.postback("/miniapp", ymid)
        answered[ymid] = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    delays = [heard[ymid] - answered[ymid] for ymid in ymids if ymid in heard]
    return {
        "waiters": waiters,
        "rewarded_heard": len(delays),
        "gateway_cpu_share_while_waiting": round(idle_cpu, 4),
        "rss_mib_before": round(rss_before, 1),
        "rss_mib_waiting": round(rss_waiting, 1),
        "plain_postback_ms_alone": {
            "p50": round(percentile(alone, 0.5) * 1000, 3),
            "p99": round(percentile(alone, 0.99) * 1000, 3),
        },
        "plain_postback_ms_beside_waiters": {
            "p50": round(percentile(beside, 0.5) * 1000, 3),
            "p99": round(percentile(beside, 0.99) * 1000, 3),
        },
        "postback_to_rewarded_s": {
            "p50": round(percentile(delays, 0.5), 3),
            "p99": round(percentile(delays, 0.99), 3),
            "max": round(max(delays), 3),
        },
    }


async def run(args: argparse.Namespace, public: int, admin: int, pid: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        bench = Bench(http, public, admin)
        return {
            "per_request": await per_request(bench, args.requests, args.rounds),
            "status_under_waiters": await under_waiters(bench, pid, args.waiters),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--output", default=str(HERE / "results" / "sessions_endpoints.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sessions-bench-"))
    public, admin, upstream = free_port(), free_port(), free_port()
    path = workdir / "config.yaml"
    path.write_text(config(public, admin, upstream, workdir / "gw.db"))
    fast = subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(upstream)])
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        cwd=HERE.parent, env={**os.environ, "MONETAG_SECRET": SECRET},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(upstream)
        wait_for_port(public, 30)
        results = asyncio.run(run(args, public, admin, gateway.pid))
    finally:
        gateway.terminate()
        fast.terminate()
        gateway.wait(timeout=60)
        fast.wait(timeout=30)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), **results}
    print(json.dumps(report, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
