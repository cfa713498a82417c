"""Acknowledgement throughput: `delivery: sync` vs `delivery: queued`, on SQLite and PostgreSQL.

Starts on 127.0.0.1 a fast upstream and up to two gateways with the same routes (one sync, one
queued), differing only in their store:
- the SQLite gateway: `store: {path: FILE}` (WAL, synchronous=FULL: fsync at every commit);
- the PostgreSQL gateway: `store: {url: postgresql://...}` on a throwaway cluster started for the
  bench (tests/postgres.py), with PostgreSQL's durability defaults (fsync and synchronous_commit
  on: fsync at every commit too). Its sync route keeps its dedup reservations in PostgreSQL.

Modes (`--modes`, all by default):
    sync             the sync route of the SQLite gateway
    queued           the queued route of the SQLite gateway
    postgres_sync    the sync route of the PostgreSQL gateway
    postgres_queued  the queued route of the PostgreSQL gateway

Each mode gets the same load from wrk (a C load generator, so the client takes little of the
CPU the gateway and PostgreSQL share): CONCURRENCY connections, unique ymids, for SECONDS.
Every round runs every mode once, in an order rotated from round to round, so machine drift
hits all of them. After a queued run the bench waits until the gateway has delivered everything it
accepted, so a backlog never steals the next run's CPU (that wait is reported as `drain s`).
Prints requests/s, p50/p99 latency (medians over rounds) and failures (answers other than 200,
summed over rounds) per mode, the ratios between modes and whether the PostgreSQL targets are
met; writes the same as JSON.

    .venv/bin/python bench/ack_throughput.py [--seconds 5] [--rounds 2] [--concurrency 32]
        [--modes sync,queued,postgres_sync,postgres_queued] [--output FILE]

Needs wrk, and for the PostgreSQL modes the server (Debian packages `wrk`, `postgresql`;
./scripts/test installs both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))  # for tests.support.postgres: the throwaway PostgreSQL of the tests

from common import free_port, machine, run_wrk, wait_for_port  # noqa: E402

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

SECRET = "bench-secret-0123456789"
SQLITE, POSTGRES = "sqlite", "postgres"
DRAIN_PATIENCE = 300.0  # seconds for a gateway to deliver what a queued run left behind
RATIOS = (("postgres_queued", "queued"), ("queued", "sync"), ("postgres_queued", "sync"))
# The targets for PostgreSQL-queued, at 32 connections.
TARGET_CONNECTIONS = 32
TARGET_RATIO = 0.5  # of SQLite-queued requests/s, at least
TARGET_P99_MS = 20.0  # below


@dataclass(frozen=True)
class Mode:
    name: str
    store: str  # which gateway: SQLITE or POSTGRES
    route: str  # which of its routes: "sync" or "queued"


MODES = {
    mode.name: mode
    for mode in (
        Mode("sync", SQLITE, "sync"),
        Mode("queued", SQLITE, "queued"),
        Mode("postgres_sync", POSTGRES, "sync"),
        Mode("postgres_queued", POSTGRES, "queued"),
    )
}

Run = dict[str, float]  # what `drive` measured, plus `drain_seconds` after a queued run


@dataclass
class Gateway:
    """A gateway process, and how many events its queued route accepted (warm-ups included)."""

    store: str
    public: int
    admin: int
    process: subprocess.Popen[bytes]
    log: Path
    accepted: int = 0

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.public}/{route}"


def config_text(public: int, admin: int, upstream: int, store: str) -> str:
    """Both routes, identical but for `delivery`; `store` is the YAML of the `store:` value."""
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
        f"store: {store}\n"
        + "routes:"
        + route.format(name="sync", upstream=upstream)
        + route.format(name="queued", upstream=upstream)
    )


def start_gateway(workdir: Path, store: str, store_yaml: str, upstream: int) -> Gateway:
    """A gateway process (`python -m gateway run`), its output in WORKDIR/gateway-STORE.log."""
    public, admin = free_port(), free_port()
    config = workdir / f"config-{store}.yaml"
    config.write_text(config_text(public, admin, upstream, store_yaml))
    log = workdir / f"gateway-{store}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            env={**os.environ, "MONETAG_SECRET": SECRET},
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    return Gateway(store, public, admin, process, log)


async def wait_ready(session: aiohttp.ClientSession, gateway: Gateway, seconds: float = 30) -> None:
    """Until /readyz says ready (its store is open), or SystemExit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and gateway.process.poll() is None:
        try:
            async with session.get(f"http://127.0.0.1:{gateway.admin}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass  # not listening yet
        await asyncio.sleep(0.1)
    raise SystemExit(f"the {gateway.store} gateway did not become ready: see {gateway.log}")


async def delivered(session: aiohttp.ClientSession, gateway: Gateway) -> int:
    """Events of the queued route delivered so far, from the gateway's metrics."""
    async with session.get(f"http://127.0.0.1:{gateway.admin}/metrics") as response:
        text = await response.text()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("gateway_deliveries_total{")
            and 'route="queued"' in line
            and 'result="delivered"' in line
        )
    )


async def drain(session: aiohttp.ClientSession, gateway: Gateway) -> float:
    """Wait until the gateway delivered every event it accepted; the seconds that took."""
    started = time.perf_counter()
    while await delivered(session, gateway) < gateway.accepted:
        if time.perf_counter() - started > DRAIN_PATIENCE:
            print(f"WARNING: the {gateway.store} gateway did not deliver its backlog in "
                  f"{DRAIN_PATIENCE:g} s; carrying on")  # fmt: skip
            break
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def drive(url: str, seconds: float, concurrency: int, run: str) -> Run:
    """wrk's load: `concurrency` connections, a ymid never sent before per request."""
    query = f"?event=click&token={SECRET}"
    result = await asyncio.to_thread(run_wrk, url + query, concurrency, seconds, run)
    result["failures"] = result.pop("non_2xx") + result.pop("socket_errors")
    return result


async def measure(
    gateways: dict[str, Gateway], modes: list[Mode], args: argparse.Namespace
) -> dict[str, list[Run]]:
    """A warm-up per mode, then `rounds` rounds of every mode, in rotated order."""
    runs: dict[str, list[Run]] = {mode.name: [] for mode in modes}
    async with aiohttp.ClientSession() as admin:
        for gateway in gateways.values():
            await wait_ready(admin, gateway)

        async def one_run(mode: Mode, seconds: float, run: str) -> Run:
            gateway = gateways[mode.store]
            result = await drive(gateway.url(mode.route), seconds, args.concurrency, run)
            if mode.route == "queued":
                gateway.accepted += int(result["requests"] - result["failures"])
                result["drain_seconds"] = await drain(admin, gateway)
            return result

        for mode in modes:  # connections, prepared statements, caches
            await one_run(mode, min(1.0, args.seconds), f"warmup-{mode.name}")
        for round_number in range(args.rounds):
            shift = round_number % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                run = f"{mode.name}-{round_number}"
                runs[mode.name].append(await one_run(mode, args.seconds, run))
    return runs


def summarize(runs: list[Run]) -> dict[str, float]:
    """Medians over rounds; failures summed (any failure matters)."""
    summary: dict[str, float] = {
        key: statistics.median(run[key] for run in runs)
        for key in ("requests_per_second", "p50_ms", "p99_ms", "drain_seconds")
        if key in runs[0]
    }
    summary["failures"] = sum(run["failures"] for run in runs)
    return summary


def targets(summary: dict[str, dict[str, float]], concurrency: int) -> dict[str, dict[str, Any]]:
    """The issue's targets for PostgreSQL-queued (those the chosen modes allow to judge)."""
    judged: dict[str, dict[str, Any]] = {}
    at = {"connections": concurrency, "applies": concurrency == TARGET_CONNECTIONS}
    if "postgres_queued" in summary and "queued" in summary:
        ratio = (
            summary["postgres_queued"]["requests_per_second"]
            / summary["queued"]["requests_per_second"]
        )
        judged[f"postgres_queued/queued >= {TARGET_RATIO:g}"] = {
            "value": ratio, "met": ratio >= TARGET_RATIO, **at
        }  # fmt: skip
    if "postgres_queued" in summary:
        p99 = summary["postgres_queued"]["p99_ms"]
        judged[f"postgres_queued p99 < {TARGET_P99_MS:g} ms"] = {
            "value": p99, "met": p99 < TARGET_P99_MS, **at
        }  # fmt: skip
    return judged


def postgres_settings(cluster: PostgresCluster) -> dict[str, str]:
    """What the comparison's honesty rests on, as the server reports it."""
    names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
    return {name: cluster.sql(f"SHOW {name}").strip() for name in names}


def report(
    args: argparse.Namespace,
    runs: dict[str, list[Run]],
    postgres: dict[str, str] | None,
) -> dict[str, Any]:
    """Print the table, ratios and target verdicts; the JSON report."""
    summary = {mode: summarize(results) for mode, results in runs.items()}
    ratios = {
        f"{top}/{bottom}": summary[top]["requests_per_second"]
        / summary[bottom]["requests_per_second"]
        for top, bottom in RATIOS
        if top in summary and bottom in summary
    }
    judged = targets(summary, args.concurrency)

    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {machine()}")
    if postgres is not None:
        print("PostgreSQL " + ", ".join(f"{name}={value}" for name, value in postgres.items()))
    print(f"{'mode':<16}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'failures':>10}{'drain s':>9}"
          f"   (median of {args.rounds} runs, {args.concurrency} connections, "
          f"{args.seconds:g} s each)")  # fmt: skip
    for mode, numbers in summary.items():
        drained = f"{numbers['drain_seconds']:>9.1f}" if "drain_seconds" in numbers else ""
        print(
            f"{mode:<16}{numbers['requests_per_second']:>8.0f}{numbers['p50_ms']:>9.2f}"
            f"{numbers['p99_ms']:>9.2f}{numbers['failures']:>10.0f}{drained}"
        )
    for name, ratio in ratios.items():
        print(f"{name} requests/s: {ratio:.2f}")
    for name, verdict in judged.items():
        shown = f"{verdict['value']:.2f}" + (" ms" if name.endswith("ms") else "")
        outcome = "met" if verdict["met"] else "MISSED"
        if not verdict["applies"]:
            outcome = f"not judged, measured at {args.concurrency} connections"
        print(f"target {name} at {TARGET_CONNECTIONS} connections: {shown}, {outcome}")
    failures = sum(numbers["failures"] for numbers in summary.values())
    if failures:
        print(f"WARNING: {failures} requests did not answer 200")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "settings": vars(args),
        "postgres": postgres,
        "summary": summary,
        "ratios": ratios,
        "queued_over_sync": ratios.get("queued/sync"),
        "targets": judged,
        "runs": runs,
        "failures": failures,
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: %(default)s")
    parser.add_argument("--output", default=str(HERE / "results" / "ack_throughput.json"))
    args = parser.parse_args()
    args.modes = [name.strip() for name in args.modes.split(",") if name.strip()]
    unknown = [name for name in args.modes if name not in MODES]
    if unknown or not args.modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    return args


async def main() -> None:
    args = parse_arguments()
    modes = [MODES[name] for name in args.modes]
    stores = {mode.store for mode in modes}
    workdir = Path(tempfile.mkdtemp(prefix="ack-bench-"))
    upstream_port = free_port()
    processes = [
        subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(upstream_port)])
    ]
    cluster: PostgresCluster | None = None
    postgres: dict[str, str] | None = None
    try:
        gateways: dict[str, Gateway] = {}
        if SQLITE in stores:
            store = f"{{path: '{workdir / 'gw.db'}'}}"
            gateways[SQLITE] = start_gateway(workdir, SQLITE, store, upstream_port)
        if POSTGRES in stores:
            from tests.support.postgres import PostgresCluster

            cluster = PostgresCluster()
            cluster.start()
            postgres = postgres_settings(cluster)
            store = f"{{url: '{cluster.create_database('ack_bench')}'}}"
            gateways[POSTGRES] = start_gateway(workdir, POSTGRES, store, upstream_port)
        processes += [gateway.process for gateway in gateways.values()]
        wait_for_port(upstream_port)
        runs = await measure(gateways, modes, args)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        if cluster is not None:
            cluster.remove()

    result = report(args, runs, postgres)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    if result["failures"]:
        print(f"gateway logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
