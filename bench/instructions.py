"""CPU instructions the gateway spends per postback, counted by valgrind's callgrind.

Requests per second on a shared two-core machine move by 5 to 10 % from run to run; the
instructions a process executes for the same requests do not (about 0.3 % here). So a change
that should cost or save a few percent is measured here: the sync route (allowlist, secret,
aliases, dedup in memory, forwarding to a fast upstream) serves WARMUP postbacks, callgrind's
counters are zeroed, REQUESTS more postbacks arrive one after another on a kept-alive
connection, each with a new ymid, and the counters are dumped. With --baseline DIR the same
is done for the gateway of another checkout (`git worktree add /tmp/before HEAD~1`) and the
ratio printed.

    .venv/bin/python bench/instructions.py [--requests 2000] [--baseline DIR] [--recent N]
        [--store [--history off]]

--store runs both gateways on an SQLite store (the shipped config's set-up: dedup keys written
to it, and in this checkout every postback recorded in the history); --history off prices the
history by turning it off in this checkout's gateway only.

--recent 0 turns the inspector's list of recent postbacks off in this checkout's gateway, to
price it (use a --warmup above 1000 so the list is full and evicting while counted).

Needs valgrind (Debian: apt-get install -y valgrind). Kernel work (system calls) is not counted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import free_port, machine, wait_for_port  # noqa: E402
from proxy_bench import SECRET, gateway_config  # noqa: E402


def send(port: int, count: int, first: int) -> None:
    """`count` postbacks on one kept-alive connection, ymids first..first+count-1."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for number in range(first, first + count):
            query = f"uid=u{number}&event=click&zone=7&token={SECRET}"
            connection.request("GET", f"/sync?{query}")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"postback {number} answered {response.status}")
    finally:
        connection.close()


def wait_until_ready(port: int, seconds: float = 120) -> None:
    """Under valgrind the gateway starts in tens of seconds: wait for it to answer at all."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/not-a-route")
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def instructions_per_postback(
    checkout: Path,
    requests: int,
    warmup: int,
    workdir: Path,
    recent: int = 1000,
    store: bool = False,
    history: bool = True,
) -> float:
    upstream, public = free_port(), free_port()
    config = workdir / f"{checkout.name}-{public}.yaml"
    database = workdir / f"{checkout.name}-{public}.db" if store else None
    config.write_text(gateway_config(public, upstream, database, recent=recent, history=history))
    dump = workdir / f"callgrind-{public}.out"
    fast = subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(upstream)])
    gateway = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}",
         sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=checkout, env={**os.environ, "MONETAG_SECRET": SECRET},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(upstream)
        wait_until_ready(public)
        send(public, warmup, 0)
        subprocess.run(["callgrind_control", "--zero", str(gateway.pid)], check=True,
                       capture_output=True)  # fmt: skip
        send(public, requests, warmup)
        subprocess.run(["callgrind_control", "--dump", str(gateway.pid)], check=True,
                       capture_output=True)  # fmt: skip
    finally:
        gateway.terminate()
        fast.terminate()
        gateway.wait(timeout=120)
        fast.wait(timeout=30)
    (part,) = workdir.glob(f"callgrind-{public}.out.*")  # the dump taken after the requests
    summary = re.search(r"^summary: (\d+)$", part.read_text(), re.MULTILINE)
    assert summary is not None, part
    return int(summary.group(1)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--baseline", help="another checkout to count the same way")
    parser.add_argument(
        "--recent", type=int, default=1000,
        help="server.recent_postbacks of this checkout's gateway (0: the inspector's list off)",
    )  # fmt: skip
    parser.add_argument(
        "--store", action="store_true",
        help="both gateways on an SQLite store (durable dedup keys; here also the history)",
    )  # fmt: skip
    parser.add_argument(
        "--history", choices=("on", "off"), default="on",
        help="with --store: this checkout's gateway records every postback (on) or not",
    )  # fmt: skip
    parser.add_argument("--output", default=str(HERE / "results" / "instructions.json"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    workdir = Path(tempfile.mkdtemp(prefix="instructions-"))
    checkouts = {"this": HERE.parent}
    if args.baseline:
        checkouts["baseline"] = Path(args.baseline).resolve()
    counts = {
        name: instructions_per_postback(
            path,
            args.requests,
            args.warmup,
            workdir,
            args.recent if name == "this" else 1000,
            store=args.store,
            history=args.history == "on" or name != "this",
        )
        for name, path in checkouts.items()
    }
    for name, count in counts.items():
        print(f"{name:<9} {count:>10.0f} instructions per postback ({checkouts[name]})")
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "settings": vars(args),
        "instructions_per_postback": counts,
    }
    if "baseline" in counts:
        report["this_over_baseline"] = counts["this"] / counts["baseline"]
        print(f"this/baseline: {report['this_over_baseline']:.3f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
