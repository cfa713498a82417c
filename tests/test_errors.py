"""gateway.errors: every rejection has a named reason, and the metric's label set is theirs."""

from __future__ import annotations

import pytest

from gateway.errors import REJECTIONS, GatewayError, Reason, reasons_for
from gateway.metrics import Metrics
from gateway.record import RequestRecord


def raisable() -> list[type[GatewayError]]:
    """Every error class that names its own reason (the ones the pipeline raises)."""
    found, pending = [], [GatewayError]
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        if "reason" in vars(kind) and kind is not GatewayError:
            found.append(kind)
    return found


def test_the_rejection_reasons_are_the_named_ones() -> None:
    assert reasons_for(REJECTIONS) == {
        "method_not_allowed",
        "query_too_long",
        "malformed_request",
        "no_peer",
        "peer_unparseable",
        "xff_unparseable",
        "ip_not_allowed",
        "secret_missing",
        "secret_repeated",
        "secret_wrong",
        "ymid_not_issued",
        "ymid_forged",
        "ymid_expired",
        "telegram_id_mismatch",
        "placement_mismatch",
        "not_utf8",
        "ambiguous_fields",
        "invalid_fields",
        "filtered",
    }


@pytest.mark.parametrize("kind", raisable(), ids=lambda kind: kind.__name__)
def test_a_rejection_is_counted_under_its_own_reason(kind: type[GatewayError]) -> None:
    metrics = Metrics()
    record = RequestRecord("r1", route="tapper", reason=kind.reason)

    metrics.request_done(record, kind.outcome, 0.001)

    counted = metrics.registry.get_sample_value(
        "gateway_rejections_total", {"route": "tapper", "reason": kind.reason}
    )
    assert counted == (1.0 if kind.outcome in REJECTIONS else None)


def test_a_reason_no_error_class_has_is_counted_as_other() -> None:
    metrics = Metrics()

    metrics.request_done(RequestRecord("r1", route="tapper", reason="x" * 500), "invalid", 0.1)

    labels = {"route": "tapper", "reason": "other"}
    assert metrics.registry.get_sample_value("gateway_rejections_total", labels) == 1.0


def test_no_two_error_classes_share_a_reason() -> None:
    reasons = [kind.reason for kind in raisable()]
    assert len(reasons) == len(set(reasons)), sorted(reasons)


def test_the_reasons_no_error_carries_are_none_an_error_carries() -> None:
    named = {value for name, value in vars(Reason).items() if name.isupper()}
    assert named == {"upstream_refused", "shutdown"}
    assert not named & {kind.reason for kind in raisable()}
