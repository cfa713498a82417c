"""The canonical vocabulary of a Monetag postback and the `Postback` value the pipeline passes on.

Canonical names are Monetag's macro names. Whatever names the publisher chose in the URL
registered with Monetag, after normalization the rest of the gateway speaks only these.
"""

from __future__ import annotations

from dataclasses import dataclass

YMID = "ymid"
ZONE_ID = "zone_id"
SUB_ZONE_ID = "sub_zone_id"
REQUEST_VAR = "request_var"
TELEGRAM_ID = "telegram_id"
EVENT_TYPE = "event_type"
REWARD_EVENT_TYPE = "reward_event_type"
ESTIMATED_PRICE = "estimated_price"

CANONICAL_FIELDS: tuple[str, ...] = (
    YMID,
    ZONE_ID,
    SUB_ZONE_ID,
    REQUEST_VAR,
    TELEGRAM_ID,
    EVENT_TYPE,
    REWARD_EVENT_TYPE,
    ESTIMATED_PRICE,
)

EVENT_TYPES = frozenset({"impression", "click"})
REWARD_EVENT_TYPES = frozenset({"valued", "not_valued"})
INTEGER_FIELDS = frozenset({ZONE_ID, SUB_ZONE_ID, TELEGRAM_ID})
LOWERCASED_FIELDS = frozenset({EVENT_TYPE, REWARD_EVENT_TYPE})
TEXT_FIELDS = frozenset({YMID, REQUEST_VAR})  # free text chosen by the app


@dataclass(frozen=True, slots=True)
class Postback:
    """One normalized postback: canonical fields, plus unknown parameters kept as they came.

    The secret never gets in here, so everything downstream (forwarding, logs) is clean.
    `fields` holds only non-empty values in their canonical form (see normalize.py); `empty`
    names the fields that were sent empty, for a precise message if one is required; `dropped`
    names incoming parameters that were not passed on because they pose as a name the gateway
    writes (for the log).
    """

    fields: dict[str, str]
    extras: tuple[tuple[str, str], ...] = ()
    empty: frozenset[str] = frozenset()
    dropped: tuple[str, ...] = ()

    def get(self, name: str) -> str | None:
        return self.fields.get(name)
