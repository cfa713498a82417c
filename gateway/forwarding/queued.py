"""A queued route as the store and its deliverer see it: a small value of their own, so the
storage package never imports the request path (which builds it at config load)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..config import QueueConfig, RouteConfig
from .forward import Upstream


@dataclass(frozen=True)
class QueuedRoute:
    name: str
    upstreams: tuple[Upstream, ...]
    queue: QueueConfig
    dedup_ttl: float  # how long the store keeps an accepted event's dedup key
    # labels a route's deliveries may be stored under from before -> the upstream's label now
    relabels: Mapping[str, str]

    @classmethod
    def of(cls, config: RouteConfig, upstreams: tuple[Upstream, ...]) -> QueuedRoute:
        return cls(config.name, upstreams, config.queue, config.dedup.ttl, _relabels(config))


def _relabels(config: RouteConfig) -> Mapping[str, str]:
    """An old label that could be two of today's upstreams is left alone."""
    owners: dict[str, set[str]] = {}
    for upstream in config.upstreams:
        for old in upstream.labels_before:
            owners.setdefault(old, set()).add(upstream.label)
    current = {upstream.label for upstream in config.upstreams}
    return MappingProxyType(
        {
            old: next(iter(labels))
            for old, labels in owners.items()
            if len(labels) == 1 and old not in current
        }
    )
