"""The gateway against the simplest thing an operator could deploy instead.

Starts on 127.0.0.1: a fast upstream, two pass-throughs that check nothing (bench/naive_proxy.py:
aiohttp with ClientSession, what an operator might write; bench/lean_proxy.py: the gateway's own
low-level server and upstream client, so gateway/lean is the price of the checks alone) and the
gateway (a sync route with allowlist, secret, aliases and dedup, and a queued route), then
drives each with the same wrk load at 1 and 32 connections, unique ymids per request
(bench/unique_ymid.lua), alternating targets round after round so machine drift hits all of
them. Prints requests/s and p50/p99 latency per target and the ratios gateway/naive and
gateway/lean, and
writes the same as JSON.

    .venv/bin/python bench/proxy_bench.py [--seconds 10] [--rounds 3] [--baseline DIR]

--baseline DIR also runs the sync gateway from another checkout (say, `git worktree add
/tmp/before HEAD~3`) in the same rounds, for a before/after ratio from one sitting.

Needs wrk (Debian: apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import free_port, machine, run_wrk, start_upstream, wait_for_port  # noqa: E402

SECRET = "bench-secret-0123456789"
CONNECTIONS = (1, 32)


def gateway_config(
    public: int,
    upstream: int,
    store: Path | None,
    allowlist: int = 1,
    recent: int = 1000,
    history: bool = True,
) -> str:
    """A gateway with a sync route, and with a store also a queued one.

    history: with a store, whether every postback is recorded in it (the default); False
    writes `history: {enabled: false}`, a key a checkout older than the history does not know.

    recent: server.recent_postbacks, the inspector's list (0 = off); left out at its default
    (1000), so a --baseline checkout older than the key reads the same config.

    allowlist > 1: that many CIDRs in allow_ips (loopback and /24 networks), to price a large
    allowlist. With a store, the sync route's dedup keys are also written to it (durable dedup).
    """
    # every other /24, so the ranges stay apart and the lookup really searches 10,000 of them
    extra = "".join(f", 10.{n // 128}.{n % 128 * 2}.0/24" for n in range(allowlist - 1))
    route = f"""
  {{name}}:
    path: /{{name}}
    allow_ips: [127.0.0.1/32{extra}]
    secret: {{{{query_param: token, keys: ['${{{{MONETAG_SECRET}}}}']}}}}
    aliases: {{{{uid: ymid, event: event_type, zone: zone_id}}}}
    delivery: {{name}}
    upstreams: [{{{{url: 'http://127.0.0.1:{upstream}/postback'}}}}]
"""
    recent_setting = "" if recent == 1000 else f", recent_postbacks: {recent}"
    text = (
        f"server: {{listen: '127.0.0.1:{public}', admin_listen: '127.0.0.1:{free_port()}', "
        f"max_in_flight: 100000, reload_interval: 0{recent_setting}}}\n"
        "routes:" + route.format(name="sync")
    )
    if store is not None:
        text = f"store: {{path: '{store}'}}\n" + text + route.format(name="queued")
    if not history:
        text = "history: {enabled: false}\n" + text
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--allowlist", type=int, default=10000, help="CIDRs in the big-allowlist gateway"
    )
    parser.add_argument("--output", default=str(HERE / "results" / "proxy_bench.json"))
    parser.add_argument(
        "--baseline", help="another checkout whose gateway runs the sync route too (before/after)"
    )
    parser.add_argument(
        "--targets", help="comma-separated targets to measure (default: all); ratios need theirs"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")

    workdir = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    upstream, naive, lean = free_port(), free_port(), free_port()
    # one gateway process per set-up, so each is measured alone
    gateways = {
        "plain": (free_port(), None, 1),
        "store": (free_port(), workdir / "gw.db", 1),
        "store_history_off": (free_port(), workdir / "gw-off.db", 1),  # the history's price
        "big_allowlist": (free_port(), None, args.allowlist),
        "recent_off": (free_port(), None, 1),  # the inspector's list off: its cost per postback
    }
    configs = []
    if args.baseline:
        gateways["baseline"] = (free_port(), None, 1)
    for name, (port, store, allowlist) in gateways.items():
        configs.append(workdir / f"{name}.yaml")
        recent = 0 if name == "recent_off" else 1000
        history = name != "store_history_off"
        configs[-1].write_text(gateway_config(port, upstream, store, allowlist, recent, history))
    checkout = {name: HERE.parent for name in gateways}
    if args.baseline:
        checkout["baseline"] = Path(args.baseline).resolve()
    env = {**os.environ, "MONETAG_SECRET": SECRET}
    query = f"?event=click&zone=7&token={SECRET}"
    targets = {
        "direct": f"http://127.0.0.1:{upstream}/postback{query}",
        "naive": f"http://127.0.0.1:{naive}/postback{query}",
        "lean": f"http://127.0.0.1:{lean}/postback{query}",
        "gateway_sync": f"http://127.0.0.1:{gateways['plain'][0]}/sync{query}",
        "gateway_queued": f"http://127.0.0.1:{gateways['store'][0]}/queued{query}",
        "gateway_sync_with_store": f"http://127.0.0.1:{gateways['store'][0]}/sync{query}",
        "gateway_sync_with_store_history_off": f"http://127.0.0.1:"
        f"{gateways['store_history_off'][0]}/sync{query}",
        "gateway_sync_big_allowlist": f"http://127.0.0.1:{gateways['big_allowlist'][0]}/sync"
        f"{query}",
        "gateway_sync_recent_off": f"http://127.0.0.1:{gateways['recent_off'][0]}/sync{query}",
    }
    if args.baseline:
        targets["baseline_sync"] = f"http://127.0.0.1:{gateways['baseline'][0]}/sync{query}"
    if args.targets:
        targets = {name: url for name, url in targets.items() if name in args.targets.split(",")}
    app, app_kind = start_upstream(upstream)
    print(f"upstream: {app_kind}")
    with (workdir / "gateway.log").open("wb") as log:
        processes = [
            app,
            *(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(HERE / script),
                        str(port),
                        f"http://127.0.0.1:{upstream}/postback",
                    ]
                )
                for script, port in (("naive_proxy.py", naive), ("lean_proxy.py", lean))
            ),
            *(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway", "run", "--config", str(path)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=checkout[name],
                )
                for name, path in zip(gateways, configs, strict=True)
            ),
        ]
    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        name: {c: [] for c in CONNECTIONS} for name in targets
    }
    try:
        for port in (upstream, naive, lean, *(port for port, _, _ in gateways.values())):
            wait_for_port(port)
        for name, url in targets.items():  # warm up every pool and cache
            run_wrk(url, 8, 1, f"warmup-{name}")
        for round_number in range(args.rounds):
            for connections in CONNECTIONS:
                for name, url in targets.items():
                    result = run_wrk(url, connections, args.seconds, f"{name}{round_number}")
                    runs[name][connections].append(result)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)

    report = summarize(runs, args, app_kind)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


# Issue 13's targets, judged from this run: (ratio, measure, connections, at least / at most)
TARGETS = (
    ("gateway_sync/lean", "requests_per_second", 32, ">=", 0.5),
    ("gateway_sync/naive", "requests_per_second", 32, ">=", 1.2),
    ("gateway_sync/naive", "p99", 32, "<=", 1.0),
    ("gateway_sync/naive", "p50", 1, "<=", 1.1),
)


def summarize(
    runs: dict[str, dict[int, list[dict[str, float]]]], args: argparse.Namespace, upstream: str
) -> dict:  # type: ignore[type-arg]
    median = {
        name: {
            c: {key: statistics.median(run[key] for run in results) for key in results[0]}
            for c, results in by_connections.items()
        }
        for name, by_connections in runs.items()
    }
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {machine()}; upstream {upstream}; median of "
        f"{args.rounds} run(s) of {args.seconds:g} s (req/s min-max of the runs beside it); "
        f"gateway_sync_big_allowlist has {args.allowlist} CIDRs in allow_ips"
    )
    print(f"{'target':<28}{'conns':>6}{'req/s':>10}{'min-max':>14}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'non-2xx':>9}")  # fmt: skip
    for name, by_connections in median.items():
        for c, numbers in by_connections.items():
            rates = [run["requests_per_second"] for run in runs[name][c]]
            spread = f"{min(rates):.0f}-{max(rates):.0f}"
            print(
                f"{name:<28}{c:>6}{numbers['requests_per_second']:>10.0f}{spread:>14}"
                f"{numbers['p50_ms']:>9.2f}{numbers['p99_ms']:>9.2f}{numbers['non_2xx']:>9.0f}"
            )
    ratios = {}
    pairs = [
        *((f"{ours}/{reference}", ours, reference)
          for ours in ("gateway_sync", "gateway_queued") for reference in ("naive", "lean")),
        ("gateway_sync/baseline_sync", "gateway_sync", "baseline_sync"),
        ("big allowlist/one entry", "gateway_sync_big_allowlist", "gateway_sync"),
        ("inspector list on/off", "gateway_sync", "gateway_sync_recent_off"),
    ]  # fmt: skip
    for label, ours, reference in pairs:
        if ours not in median or reference not in median:
            continue  # not measured this time (--targets, --baseline)
        for c in CONNECTIONS:
            mine, theirs = median[ours][c], median[reference][c]
            ratios[f"{label} c={c}"] = {
                "requests_per_second": mine["requests_per_second"] / theirs["requests_per_second"],
                "p50": mine["p50_ms"] / theirs["p50_ms"],
                "p99": mine["p99_ms"] / theirs["p99_ms"],
            }
    print("ratios (req/s higher is better; latency lower is better):")
    for label, ratio in ratios.items():
        print(
            f"  {label:<32} req/s x{ratio['requests_per_second']:.2f}"
            f"  p50 x{ratio['p50']:.2f}  p99 x{ratio['p99']:.2f}"
        )
    verdicts = {}
    for label, measure, connections, sense, bound in TARGETS:
        ratio = ratios.get(f"{label} c={connections}")
        if ratio is None:
            continue
        value = ratio[measure]
        met = value >= bound if sense == ">=" else value <= bound
        name = f"{label} {measure} c={connections} {sense} {bound:g}"
        verdicts[name] = {"value": value, "met": met}
        print(f"target {name}: {value:.2f}, {'met' if met else 'MISSED'}")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "settings": vars(args),
        "median": {name: {str(c): v for c, v in by.items()} for name, by in median.items()},
        "ratios": ratios,
        "targets": verdicts,
        "upstream": upstream,
        "runs": {name: {str(c): v for c, v in by.items()} for name, by in runs.items()},
    }


if __name__ == "__main__":
    main()
