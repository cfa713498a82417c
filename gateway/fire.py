"""`monetag-gateway fire`: send a postback the way Monetag would, and say what each step made of it.

The first thing to do after editing the config: it builds the URL from the route's template or
aliases with the route's first key, predicts each verification step locally from the same
compiled pieces the gateway uses, sends the request to the running gateway, and prints the
gateway's outcome and the upstream's answer.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from . import verdicts
from .checks.clientip import ClientAddressResolver
from .checks.query import read_query
from .config import GatewayConfig, RouteConfig
from .config.model import SessionsConfig
from .dedup import RouteDedup
from .errors import GatewayError
from .postback import CANONICAL_FIELDS
from .record import RequestRecord
from .reward_sessions import signer_of
from .route import STEPS, Arrival, CompiledRoute

_EXAMPLE_VALUES = {
    "ymid": "",  # filled with a fresh id per call, so dedup never hides the test
    "event_type": "click",
    "reward_event_type": "valued",
    "zone_id": "1",
    "sub_zone_id": "1",
    "request_var": "fire",
    "telegram_id": "1",
    "estimated_price": "0.001",
}


class FireError(Exception):
    """The command line asks for something the config does not have."""


def fire(
    config: GatewayConfig,
    route_name: str,
    assignments: Sequence[str],
    url: str | None,
    *,
    dry_run: bool = False,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Predict each check's verdict, then (unless `dry_run`) send the postback: a real one,
    which the app acts on. `tls`: how to trust an https gateway (None: the system's CAs)."""
    routes = {route.name: route for route in config.routes}
    route = routes.get(route_name)
    if route is None:
        raise FireError(f"no route {route_name!r}; routes: {', '.join(sorted(routes))}")
    fields = _fields_for(route, assignments)
    query, headers = _as_monetag_sends(route, fields)
    target = URL(url or _public_url(config)).with_path(route.path).with_query(query)
    shown = target
    if route.secret is not None and route.secret.query_param is not None:
        shown = target.update_query({route.secret.query_param: "****"})
    print(f"route {route.name}: GET {shown}")
    lines, passes = _predict(config, route, target, headers)
    for line in lines:
        print(f"  {line}")
    if dry_run:
        print("dry run: nothing sent" + ("" if passes else "; it would be refused"))
        return 0 if passes else 1
    print(
        f"sending it: a real postback, which the app behind route {route.name} acts on (a "
        f"reward for ymid {fields.get('ymid')}); --dry-run checks without sending"
    )
    return _send(target, headers, tls)


def _fields_for(route: RouteConfig, assignments: Sequence[str]) -> dict[str, str]:
    wanted = {*route.required, *route.dedup.key, *route.match}
    fields = {name: _EXAMPLE_VALUES[name] for name in CANONICAL_FIELDS if name in wanted}
    for name, accepted in route.match.items():
        fields[name] = sorted(accepted)[0]
    fields["ymid"] = f"fire-{uuid.uuid4().hex[:12]}"
    given: dict[str, str] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep:
            raise FireError(f"{assignment!r} is not field=value")
        given[name] = value
    if route.sessions is not None and "ymid" not in given:
        fields.update(_issued_here(route.name, route.sessions, {**fields, **given}))
    return {**fields, **given}


def _issued_here(route: str, sessions: SessionsConfig, fields: dict[str, str]) -> dict[str, str]:
    """On a route with sessions, a ymid as the issuing endpoint would give it (signed with
    the config's key, for telegram_id, bound to the first placement if there are any): the
    postback a Mini App user's ad would bring."""
    user = fields.get("telegram_id") or _EXAMPLE_VALUES["telegram_id"]
    if not user.isdigit():
        raise FireError(f"telegram_id={user!r}: a Telegram user id is a number")
    placement = fields.get("request_var") if sessions.placements else None
    if sessions.placements and placement not in sessions.placements:
        placement = sessions.placements[0]
    signer = signer_of(route, sessions)
    ymid = signer.issue(int(user), expires=int(time.time() + sessions.ttl), request_var=placement)
    issued = {"ymid": ymid, "telegram_id": user}
    if placement is not None:
        issued["request_var"] = placement
    return issued


def _as_monetag_sends(
    route: RouteConfig, fields: dict[str, str]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Parameter names from the template or aliases; the first key where the route wants it."""
    name_of = {canonical: incoming for incoming, canonical in list(route.aliases.items())[::-1]}
    query = [(name_of.get(name, name), value) for name, value in fields.items()]
    headers: dict[str, str] = {}
    if route.secret is not None:
        key = route.secret.keys[0].reveal().decode()
        if route.secret.query_param is not None:
            query.append((route.secret.query_param, key))
        else:
            assert route.secret.header is not None
            headers[route.secret.header] = key
    return query, headers


def _predict(
    config: GatewayConfig, route: RouteConfig, target: URL, headers: dict[str, str]
) -> tuple[list[str], bool]:
    """Each check's verdict, from the gateway's own `CompiledRoute.verify`, and whether it
    passes them all."""
    addresses = ClientAddressResolver(config.server.trusted_proxies)
    compiled = CompiledRoute(route, RouteDedup(1, 1), addresses)
    host = target.host or "127.0.0.1"
    peer = "127.0.0.1" if host == "localhost" else host
    arrival = Arrival(peer, (), read_query(target), CIMultiDictProxy(CIMultiDict(headers)))
    record = RequestRecord("fire")
    try:
        compiled.verify(arrival, record)
        failure = None
    except GatewayError as error:
        failure = error
    lines = [f"1 route      {route.path} ok"]
    for number, step in enumerate(STEPS, start=2):
        if step in record.passed:
            lines.append(f"{number} {step:<10} {verdicts.passed(step, record, route)}")
        elif failure is not None and step == record.failed_check:
            lines.append(
                f"{number} {step:<10} {failure.detail or failure.reason}; "
                f"expect {failure.status} {failure.outcome} ({failure.reason})"
            )
    return lines, failure is None


def _send(target: URL, headers: dict[str, str], tls: ssl.SSLContext | None) -> int:
    request = urllib.request.Request(str(target), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60, context=tls) as response:
            status, answer_headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, body = error.code, error.headers, error.read()
    except OSError as error:
        cause = getattr(error, "reason", error)  # urllib wraps what the socket or TLS said
        if isinstance(cause, ssl.SSLCertVerificationError):
            print(
                f"TLS: the certificate of {target.origin()} is not trusted "
                f"({cause.verify_message}): --cacert FILE trusts the CA that signed it, "
                "--insecure skips the check (a self-signed test certificate only)"
            )
        else:
            print(f"gateway not reachable at {target.origin()}: {cause}")
        return 2
    outcome = answer_headers.get("X-Gateway-Outcome", "?")
    print(f"answer: {status}, outcome {outcome}, request id {answer_headers.get('X-Request-ID')}")
    print(f"body:   {body[:500].decode(errors='replace')}")
    return 0 if outcome == "forwarded" and status < 300 else 1


def _public_url(config: GatewayConfig) -> str:
    """Where this config's public port answers from this machine: https with server.tls."""
    scheme = "https" if config.server.tls is not None else "http"
    return f"{scheme}://{config.server.listen.from_here}"


def tls_context(cafile: str | None, insecure: bool) -> ssl.SSLContext | None:
    """How `fire` trusts an https gateway: the system's CAs (None), a CA file (`--cacert`,
    for a private CA), or nothing at all (`--insecure`, a self-signed test certificate)."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise FireError(f"--cacert {cafile}: not a CA file it can read ({error})") from None
