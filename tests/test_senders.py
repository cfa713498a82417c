"""Senders seen and the allowlist learned from them, over real sockets from several loopback
addresses (all of 127.0.0.0/8 is this machine's): counted per network only when the route's
key verified, kept in the history of both stores, added up across replicas, suggested by
`monetag-gateway allowlist suggest` and shown on the inspector's Senders page, with what the
current allow_ips refuses (or, under log_only, what enforcing would)."""

from __future__ import annotations

import asyncio
import html
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.allowlist import Advice, advise, proxy_lines
from gateway.cli import main
from gateway.config import parse_config
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.senders import SendersSeen, network_of
from tests.conftest import SECRET
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.inspectorsite import ADMIN_ENV, Site, server_settings, start_site
from tests.test_inspector_access import BEARER, HTML, get

__all__ = ["start_site"]  # the fixture, used by name


@pytest.fixture(autouse=True)
def operator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the operator's shell has when running `allowlist suggest` on the config."""
    for name, value in {"MONETAG_SECRET": SECRET, **ADMIN_ENV}.items():
        monkeypatch.setenv(name, value)


WRONG_KEY = "not-the-key-0000000000"
ALLOWED = ["127.0.0.1", "127.0.1.0/24"]
# address -> postbacks with the valid key: 127.0.0.1 and 127.0.1.x are listed, 127.0.4.x and
# 127.0.5.x not (Monetag's "new" addresses, neighbours: one /23 in the suggestion)
VALID_FROM = {"127.0.0.1": 1, "127.0.1.5": 2, "127.0.1.6": 1, "127.0.4.7": 1, "127.0.5.8": 2}
PROBER = "127.0.3.9"  # only ever sends a wrong key: never counted, never suggested


def senders_config(app: Any, store: str | Path | None, mode: str = "enforce") -> str:
    keyed = route([upstream(app.url, retries=0)], allow_ips=ALLOWED, allow_ips_mode=mode)
    open_route = route([upstream(app.url, retries=0)], allow_ips=None, secret=None, insecure=True)
    return gateway_config(
        routes={"tapper": keyed, "open": open_route}, server=server_settings(), store=store
    )


async def send_traffic(site: Site, sender: Any) -> dict[str, int]:
    """VALID_FROM's postbacks (distinct ymids) and the prober's wrong keys: status counts."""
    url = f"http://127.0.0.1:{site.config.server.listen.port}/postback/tapper"
    statuses: dict[str, int] = {}
    number = 0
    for address, count in [*VALID_FROM.items(), (PROBER, 3)]:
        client = sender(address)
        for _ in range(count):
            number += 1
            key = WRONG_KEY if address == PROBER else SECRET
            query = {"uid": f"y-{number}", "event": "click", "zone": "42", "token": key}
            async with client.get(url, params=query) as response:
                outcome = response.headers["X-Gateway-Outcome"]
                statuses[outcome] = statuses.get(outcome, 0) + 1
        # the open route (no key) from everywhere: proves nothing, never counted
        async with client.get(url.replace("tapper", "open"), params={"uid": f"o-{number}"}):
            pass
    return statuses


def suggest(config_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["allowlist", "suggest", "--config", str(config_file), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_senders_are_learned_and_suggested_from_the_history(
    start_site, start_upstream, sender, store_at, tmp_path: Path, capsys
):
    app = start_upstream()
    text = senders_config(app, store_at)
    site = await start_site(text, app)
    statuses = await send_traffic(site, sender)
    assert statuses == {"forwarded": 4, "rejected": 3 + 3}  # 127.0.4/5.x refused, the prober
    runtime = site.runtime
    assert runtime is not None and runtime.history is not None

    remembered = {s.network: (s.postbacks, s.outside) for s in runtime.senders.senders()}
    assert remembered == {
        "127.0.0.0/24": (1, 0),
        "127.0.1.0/24": (3, 0),
        "127.0.4.0/24": (1, 1),
        "127.0.5.0/24": (2, 2),
    }
    await runtime.history.flush()
    kept = await runtime.history.store.senders(time.time() - 3600)
    assert {s.network: (s.route, s.postbacks, s.outside) for s in kept} == {
        network: ("tapper", *counts) for network, counts in remembered.items()
    }

    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    code, out = await asyncio.to_thread(suggest, config_file, capsys, "--since", "1d")
    assert code == 0, out
    pasted = yaml.safe_load(out)  # the counts are comments: it pastes as it is
    assert pasted == {"allow_ips": ["127.0.0.0/23", "127.0.4.0/23"]}
    assert "127.0.3." not in out  # the prober's wrong keys taught nothing
    assert "4 postback(s) from 2 networks" in out  # 127.0.0.0/24 and 127.0.1.0/24 merged
    assert "# the current allow_ips refuses:" in out
    assert re.search(r"#   127\.0\.4\.0/24: 1 of 1 postback\(s\) from addresses it does not", out)
    assert re.search(r"#   127\.0\.5\.0/24: 2 of 2 postback", out)
    assert "#   part of 127.0.0.0/24: 0 of 1" in out  # allow_ips lists 127.0.0.1 alone of it
    assert "127.0.1.0/24:" not in out  # listed whole: not a refusal
    # loopback is nobody's address on the internet: most likely a proxy not in trusted_proxies
    assert "# 127.0.0.0/23, 127.0.4.0/23: not a public network." in out

    # the page says the same
    got, _, body = await get_page(site, "/senders?since=1d")
    assert got == 200, body[:300]
    section = html.unescape(body.split('id="senders-tapper"')[1].split("</section>")[0])
    assert "127.0.4.0/23" in section and "refused" in section and "127.0.3." not in section
    opened = html.unescape(body.split('id="senders-open"')[1].split("</section>")[0])
    assert "has no key" in opened
    got, _, body = await get_page(site, "/senders?since=forever")
    assert got == 400 and "since" in body and "forever" not in body


async def get_page(site: Site, path: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as http:
        return await get(http, site.url(path), BEARER)


async def test_log_only_shows_what_enforcing_would_refuse(
    start_site, start_upstream, sender, tmp_path: Path, capsys
):
    """Without refusing anyone: the postbacks from unlisted networks are let in and counted
    as what enforcing the current allow_ips would have refused so far."""
    app = start_upstream()
    text = senders_config(app, tmp_path / "gw.db", mode="log_only")
    site = await start_site(text, app)
    statuses = await send_traffic(site, sender)
    assert statuses == {"forwarded": 7, "rejected": 3}  # only the prober's wrong keys
    assert site.runtime is not None and site.runtime.history is not None
    await site.runtime.history.flush()  # as its next batch would, within half a second
    got, _, body = await get_page(site, "/senders")
    assert got == 200
    section = html.unescape(body.split('id="senders-tapper"')[1].split("</section>")[0])
    assert "allow_ips_mode: log_only" in section
    assert "enforcing would refuse" in section
    assert "enforced, the current allow_ips would refuse:" in section  # and the suggestion
    assert section.count("enforcing would refuse") == 2  # 127.0.4.0/24 and 127.0.5.0/24
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    code, out = await asyncio.to_thread(suggest, config_file, capsys, "--route", "tapper")
    assert code == 0 and "# enforced, the current allow_ips would refuse:" in out


async def test_without_a_history_the_page_shows_this_replicas_memory(
    start_site, start_upstream, sender, tmp_path: Path, capsys
):
    app = start_upstream()
    text = senders_config(app, None)
    site = await start_site(text, app)
    await send_traffic(site, sender)
    async with aiohttp.ClientSession() as http:  # the networks are for the signed-in only
        status, headers, anonymous = await get(http, site.url("/senders"), HTML)
    assert (status, headers["Location"]) == (303, "/login?next=/senders")
    assert "127.0.4." not in anonymous
    got, _, body = await get_page(site, "/senders")
    assert got == 200
    assert "this replica&#39;s memory only" in body or "this replica's memory only" in body
    assert "127.0.4.0/23" in html.unescape(body)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    code, out = suggest(config_file, capsys)
    assert code == 2 and "no `store:`" in out and "Senders page" in out


@pytest.mark.postgres
async def test_two_replicas_senders_add_up_in_postgresql(
    start_site, start_upstream, sender, postgres_url: str, tmp_path: Path, capsys
):
    app = start_upstream()
    text = senders_config(app, postgres_url)
    first = await start_site(text, app)
    second = await start_site(senders_config(app, postgres_url), app)
    for site, replica in ((first, "replica-a"), (second, "replica-b")):
        assert site.runtime is not None and site.runtime.history is not None
        site.runtime.history.replica = replica
        await send_traffic(site, sender)
        await site.runtime.history.flush()
    assert second.runtime is not None and second.runtime.history is not None
    kept = await second.runtime.history.store.senders(time.time() - 3600, "tapper")
    assert {s.network: (s.postbacks, s.replicas) for s in kept} == {
        "127.0.0.0/24": (2, 2),
        "127.0.1.0/24": (6, 2),
        "127.0.4.0/24": (2, 2),
        "127.0.5.0/24": (4, 2),
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    code, out = await asyncio.to_thread(suggest, config_file, capsys)
    assert code == 0 and "8 postback(s) from 2 networks" in out


def test_the_command_refuses_what_it_cannot_answer(tmp_path: Path, capsys):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(senders_config(_App(), tmp_path / "gw.db"))
    code, out = suggest(config_file, capsys, "--route", "open")
    assert code == 2 and "route open has no key" in out
    code, out = suggest(config_file, capsys, "--route", "nope")
    assert code == 2 and "no route 'nope' (routes: tapper, open)" in out
    code, out = suggest(config_file, capsys, "--since", "yesterday")
    assert code == 2 and "'yesterday' is neither a duration" in out
    code, out = suggest(config_file, capsys)  # the gateway never ran: no history file
    assert code == 2 and "no history at" in out


class _App:
    url = "http://127.0.0.1:9/"


def record(client: str, *, route: str = "tapper", valid: bool = True) -> RequestRecord:
    noted = RequestRecord("r", route=route, client=client)
    noted.key_valid = valid
    return noted


def test_networks_are_slash_24_and_slash_48_and_mapped_addresses_are_ipv4():
    assert network_of("203.0.113.77") == "203.0.113.0/24"
    assert network_of("::ffff:203.0.113.77") == "203.0.113.0/24"
    assert network_of("2001:db8:1234:5678::1") == "2001:db8:1234::/48"
    assert network_of("not an address") is None


def test_memory_is_bounded_and_says_what_it_did_not_note(caplog):
    metrics = Metrics()
    seen = SendersSeen(metrics, capacity=2)
    for client in ("203.0.113.1", "198.51.100.1", "192.0.2.1", "192.0.2.2", "203.0.113.9"):
        seen.note(record(client))
    seen.note(record("192.0.2.3", valid=False))  # a wrong key: not even looked at
    assert [(s.network, s.postbacks) for s in seen.senders()] == [
        ("198.51.100.0/24", 1),
        ("203.0.113.0/24", 2),
    ]
    assert metrics.registry.get_sample_value("gateway_senders_untracked_total") == 2
    assert any("senders seen full" in line.message for line in caplog.records)


def advice_for(*clients: str) -> Advice:
    """What `tapper` (allow_ips ALLOWED) is advised after one valid-key postback from each."""
    seen = SendersSeen(Metrics())
    for client in clients:
        seen.note(record(client))
    config = parse_config(senders_config(_App(), None), {"MONETAG_SECRET": SECRET, **ADMIN_ENV})
    return advise(config.routes[0], seen.senders())


def test_public_networks_are_suggested_without_the_proxy_hint():
    advice = advice_for("203.0.113.1", "8.8.8.8", "10.1.2.3")
    hints = proxy_lines(advice)
    assert hints and hints[0].startswith("10.1.2.0/24, 203.0.113.0/24: not a public network")
    assert "8.8.8.0/24" not in hints[0]


def test_an_ipv6_sender_is_suggested_beside_ipv4_ones():
    advice = advice_for("2001:db8:1::1", "2001:db8:0::5", "203.0.113.1")
    assert [str(block.network) for block in advice.blocks] == ["203.0.113.0/24", "2001:db8::/47"]
    assert [judged.listed for judged in advice.networks] == ["none", "none", "none"]
