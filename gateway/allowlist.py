"""An allowlist learned from real traffic: what `allowlist suggest` prints and the inspector's
senders page shows, made from senders seen (senders.py).

For a route: the networks its valid key came from, merged into as few CIDRs as cover exactly
them (`ipaddress.collapse_addresses`: two neighbouring /24s become one /23), each with its
counts and when it was last seen, ready to paste as `allow_ips:`; and beside it what the
route's current `allow_ips` does with each network: lists all of it, part of it, or none
(refused under `enforce`; what enforcing would refuse under `log_only`).

Only a key proves a sender here: whoever holds the route's key is counted too. The counts and
times say which networks are Monetag's steady traffic and which a stranger's few tries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .checks.addresses import IPNetwork
from .config import RouteConfig
from .config.model import AllowIpsMode
from .senders import Sender


@dataclass(frozen=True)
class Block:
    """One CIDR of the suggestion and what it adds up."""

    network: IPNetwork
    postbacks: int
    networks: int  # senders-seen networks (/24, /48) it merges
    last: float


@dataclass(frozen=True)
class Judged:
    """One network seen, and how much of it the route's allow_ips lists now."""

    sender: Sender
    listed: str  # "all", "part", "none"; "all" where the route has no allow_ips


@dataclass(frozen=True)
class Advice:
    route: str
    mode: AllowIpsMode
    has_allowlist: bool
    blocks: list[Block]
    networks: list[Judged]

    @property
    def refused(self) -> list[Judged]:
        """The networks the current allow_ips does not list whole: refused under `enforce`,
        what enforcing would refuse under `log_only`."""
        return [judged for judged in self.networks if judged.listed != "all"]


def advise(route: RouteConfig, senders: Iterable[Sender]) -> Advice:
    """The suggestion for one route from its senders seen (other routes' are ignored)."""
    own = sorted(
        (
            (ipaddress.ip_network(sender.network), sender)
            for sender in senders
            if sender.route == route.name
        ),
        key=lambda seen: (seen[0].version, int(seen[0].network_address)),
    )
    allow_ips = route.allow_ips
    networks = [
        Judged(sender, "all" if allow_ips is None else allow_ips.lists(network))
        for network, sender in own
    ]
    return Advice(route.name, route.allow_ips_mode, allow_ips is not None, _blocks(own), networks)


def _blocks(own: Sequence[tuple[IPNetwork, Sender]]) -> list[Block]:
    """The fewest CIDRs covering exactly the networks seen, each with what it adds up."""
    v4 = [network for network, _ in own if isinstance(network, ipaddress.IPv4Network)]
    v6 = [network for network, _ in own if isinstance(network, ipaddress.IPv6Network)]
    merged: list[IPNetwork] = [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]
    blocks = []
    for block in merged:
        inside = [sender for network, sender in own if _within(network, block)]
        blocks.append(
            Block(
                block,
                sum(sender.postbacks for sender in inside),
                len(inside),
                max(sender.last for sender in inside),
            )
        )
    return blocks


def _within(network: IPNetwork, block: IPNetwork) -> bool:
    return network.version == block.version and network.subnet_of(block)  # type: ignore[arg-type]


def when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


def allow_ips_text(advice: Advice, seen: str) -> str:
    """The suggestion as YAML to paste under the route, its counts and what the current
    allow_ips refuses in comments. `seen` says over what the counts are (since when, where)."""
    lines = [f"# route {advice.route}: postbacks with its valid key {seen}"]
    if not advice.blocks:
        lines.append("# none seen: nothing to suggest yet (is traffic arriving with the key?)")
        return "\n".join(lines) + "\n"
    lines.append("allow_ips:")
    width = max(len(str(block.network)) for block in advice.blocks)
    for block in advice.blocks:
        merged = f" from {block.networks} networks" if block.networks > 1 else ""
        lines.append(
            f"  - {block.network!s:<{width}}  # {block.postbacks} postback(s){merged}, "
            f"last {when(block.last)}"
        )
    lines.extend(f"# {line}" for line in refusal_lines(advice))
    lines.extend(f"# {line}" for line in proxy_lines(advice))
    return "\n".join(lines) + "\n"


def proxy_lines(advice: Advice) -> list[str]:
    """A block no sender on the internet has (private, loopback, shared) is most often a
    proxy in front that `server.trusted_proxies` does not list: then every postback seems to
    come from it, and listing it would let in whoever reaches the proxy. Or it is the
    operator's own test postbacks, sent with the key from this machine."""
    private = [str(block.network) for block in advice.blocks if not block.network.is_global]
    if not private:
        return []
    return [
        f"{', '.join(private)}: not a public network. If a proxy or load balancer is in "
        "front, list it in server.trusted_proxies instead (then the senders behind it show); "
        "if these were your own tests (fire, curl with the key), leave them out"
    ]


def refusal_lines(advice: Advice) -> list[str]:
    """What the route's current allow_ips does with the senders seen, in sentences."""
    if not advice.has_allowlist:
        return ["the route has no allow_ips now: every address is let in"]
    refused = advice.refused
    if not refused:
        return ["the current allow_ips lists every network seen"]
    if advice.mode is AllowIpsMode.ENFORCE:
        lines = ["the current allow_ips refuses:"]
    else:
        lines = ["enforced, the current allow_ips would refuse:"]
    for judged in refused:
        sender = judged.sender
        part = "part of " if judged.listed == "part" else ""
        lines.append(
            f"  {part}{sender.network}: {sender.outside} of {sender.postbacks} postback(s) "
            f"from addresses it does not list, last {when(sender.last)}"
        )
    return lines
