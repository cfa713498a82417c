"""The checks' order has one source, `CompiledRoute.CHECKS`: what `verify` runs, what the
record notes, and what `fire` and the inspector list all follow it."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.checks.clientip import ClientAddressResolver
from gateway.checks.query import read_query
from gateway.config import GatewayConfig, parse_config
from gateway.dedup import RouteDedup
from gateway.errors import GatewayError
from gateway.inspector.present import FAILED, PASSED, SKIPPED, steps
from gateway.journal import Journal
from gateway.record import RequestRecord
from gateway.route import STEPS, Arrival, CompiledRoute
from tests.support.processes import SECRET

from .support.gatewayconfig import gateway_config

VALID = "uid=u1&event=click&zone=9&token=" + SECRET


def compiled(**settings: object) -> tuple[CompiledRoute, GatewayConfig]:
    config = parse_config(
        gateway_config("http://127.0.0.1:9/app", required=["ymid", "event_type"], **settings),
        {"MONETAG_SECRET": SECRET},
    )
    route = config.routes[0]
    return CompiledRoute(route, RouteDedup(1, 1), ClientAddressResolver(())), config


def run(route: CompiledRoute, query: str, peer: str = "127.0.0.1") -> RequestRecord:
    url = URL("/postback/tapper?" + query)
    headers = CIMultiDictProxy(CIMultiDict[str]())
    record = RequestRecord("test", route="tapper")
    try:
        route.verify(Arrival(peer, (), read_query(url), headers), record)
    except GatewayError as error:
        record.outcome, record.reason = error.outcome, error.reason
    return record


def test_steps_are_the_checks_verify_runs_in_their_order() -> None:
    route, _ = compiled()
    assert tuple(check.name for check in CompiledRoute.CHECKS) == STEPS
    record = run(route, VALID)
    assert record.passed == list(STEPS) and record.failed_check is None


@pytest.mark.parametrize(
    ("failing", "query", "peer", "settings"),
    [
        pytest.param("allowlist", VALID, "127.0.0.9", {"allow_ips": ["127.0.0.1"]}, id="allowlist"),
        pytest.param("secret", "uid=u1&event=click&token=wrong", "127.0.0.1", {}, id="secret"),
        pytest.param("normalize", VALID + "&uid=u2", "127.0.0.1", {}, id="normalize"),
        pytest.param("validate", "zone=9&token=" + SECRET, "127.0.0.1", {}, id="validate"),
        pytest.param("match", VALID, "127.0.0.1", {"match": {"zone_id": "1"}}, id="match"),
    ],
)
def test_a_refusal_names_its_check_and_every_check_before_it_passed(
    failing: str, query: str, peer: str, settings: dict[str, object]
) -> None:
    route, config = compiled(**settings)
    record = run(route, query, peer)
    assert record.failed_check == failing
    assert record.passed == list(STEPS[: STEPS.index(failing)])

    journal = Journal(10)
    journal.add(record, 403, 0.001)
    told = steps(journal.recent()[0], config)
    assert [step.name for step in told] == ["route", *STEPS]
    states = {step.name: step.state for step in told}
    assert [states[name] for name in STEPS] == [
        PASSED if name in record.passed else FAILED if name == failing else SKIPPED
        for name in STEPS
    ]
