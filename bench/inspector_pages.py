"""The inspector's pages: how heavy they are and how long they take, with the list full.

Starts on 127.0.0.1 a fast upstream and a gateway (a sync route and a queued one on an SQLite
store, `recent_postbacks` at its default 1000), fills the list with POSTBACKS postbacks of
mixed outcomes, then for each view: its weight (HTML bytes, plus the CSS and script it loads)
and the gateway's time to answer it (median and p90 of TIMES fetches over a kept-alive
connection). With Chromium installed (Debian `chromium`, `chromium-driver`) it also reports
the browser's time to a rendered page (navigation timing: `loadEventEnd`), median of 5 loads.
Reported, not asserted: there is no target, only the figures to watch.

    .venv/bin/python bench/inspector_pages.py [--postbacks 1000] [--times 50]
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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import free_port, machine, wait_for_port  # noqa: E402

SECRET = "bench-secret-0123456789"
TOKEN = "bench-admin-token-0123456789"
VIEWS = {"overview": "/", "postbacks": "/postbacks", "postback": "/postbacks/1", "queue": "/queue"}


def config_text(public: int, admin: int, upstream: int, store: Path) -> str:
    route = """
  {name}:
    path: /{name}
    allow_ips: [127.0.0.1]
    secret: {{query_param: token, keys: ['${{MONETAG_SECRET}}']}}
    aliases: {{uid: ymid, event: event_type, zone: zone_id, tg: telegram_id}}
    delivery: {name}
    upstreams: [{{url: 'http://127.0.0.1:{upstream}/postback'}}]
"""
    return (
        f"server: {{listen: '127.0.0.1:{public}', admin_listen: '127.0.0.1:{admin}', "
        "admin_token: '${ADMIN_TOKEN}', reload_interval: 0}\n"
        f"store: {{path: '{store}'}}\n"
        "routes:" + route.format(name="sync", upstream=upstream)
        + route.format(name="queued", upstream=upstream)
    )  # fmt: skip


def fill(public: int, count: int) -> None:
    """Postbacks of every common outcome: forwarded, queued, duplicate, rejected, invalid."""
    for number in range(count):
        kind = number % 10
        route = "queued" if kind == 1 else "sync"
        ymid = f"user-{number // 2 if kind == 2 else number}"
        key = "wrong-key" if kind == 3 else SECRET
        event = "view" if kind == 4 else "click"
        query = f"uid={ymid}&event={event}&zone=42&tg={5000000 + number}&token={key}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{public}/{route}?{query}") as answer:
                answer.read()
        except urllib.error.HTTPError as error:
            error.read()


def fetch(url: str) -> tuple[int, float]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request) as answer:
        body = answer.read()
    return len(body), time.perf_counter() - started


def served(admin: int, times: int) -> dict[str, dict[str, float]]:
    results = {}
    assets = sum(
        fetch(f"http://127.0.0.1:{admin}/static/{name}")[0]
        for name in ("inspector.css", "inspector.js")
    )
    for view, path in VIEWS.items():
        timings = []
        size = 0
        for _ in range(times):
            size, seconds = fetch(f"http://127.0.0.1:{admin}{path}")
            timings.append(seconds * 1000)
        timings.sort()
        results[view] = {
            "html_bytes": size,
            "with_assets_bytes": size + assets,
            "served_p50_ms": statistics.median(timings),
            "served_p90_ms": timings[int(len(timings) * 0.9)],
        }
    return results


def rendered(admin: int) -> dict[str, float] | None:
    """Milliseconds to `loadEventEnd` in headless Chromium, per view; None without it."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        return None
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        base = f"http://127.0.0.1:{admin}"
        browser.get(f"{base}/login")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "sign-in").click()
        times: dict[str, float] = {}
        for view, path in VIEWS.items():
            loads = []
            for _ in range(5):
                browser.get(base + path)
                loads.append(
                    browser.execute_script(
                        "const t = performance.getEntriesByType('navigation')[0];"
                        "return t.loadEventEnd - t.startTime;"
                    )
                )
            times[view] = statistics.median(loads)
        return times
    finally:
        browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--postbacks", type=int, default=1000)
    parser.add_argument("--times", type=int, default=50)
    parser.add_argument("--output", default=str(HERE / "results" / "inspector_pages.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="inspector-bench-"))
    upstream, public, admin = free_port(), free_port(), free_port()
    config = workdir / "config.yaml"
    config.write_text(config_text(public, admin, upstream, workdir / "gw.db"))
    env = {**os.environ, "MONETAG_SECRET": SECRET, "ADMIN_TOKEN": TOKEN}
    processes = [
        subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(upstream)]),
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            env=env, cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        for port in (upstream, public, admin):
            wait_for_port(port)
        fill(public, args.postbacks)
        pages = served(admin, args.times)
        browser = rendered(admin)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {machine()}, {args.postbacks} postbacks in the list")
    print(f"{'view':<11}{'HTML KB':>9}{'+assets KB':>11}{'served p50':>12}{'p90 ms':>8}"
          f"{'rendered ms':>13}")  # fmt: skip
    for view, numbers in pages.items():
        shown = f"{browser[view]:>13.0f}" if browser else f"{'-':>13}"
        print(
            f"{view:<11}{numbers['html_bytes'] / 1024:>9.1f}"
            f"{numbers['with_assets_bytes'] / 1024:>11.1f}{numbers['served_p50_ms']:>12.2f}"
            f"{numbers['served_p90_ms']:>8.2f}{shown}"
        )
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "settings": vars(args),
        "pages": pages,
        "rendered_ms": browser,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
