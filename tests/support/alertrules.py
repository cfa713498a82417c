"""The shipped alerting rules (deploy/prometheus/alerts.yml) as the tests read them: the
alerts, and which scrape job their selectors name, so that compose's Prometheus and the
Kubernetes PodMonitor can be checked to scrape under that very name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import REPO

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
_JOB_MATCHER = re.compile(r"""\bjob\s*(=~|!~|!=|=)\s*(["'`])(.*?)\2""")


def alerts(rules: Path = RULES) -> list[dict[str, Any]]:
    """Every alerting rule of the file, in order, across its groups."""
    document = yaml.safe_load(rules.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def job_matchers(rules: Path = RULES) -> set[tuple[str, str]]:
    """Every `job` label matcher in the rules' expressions, as (operator, value)."""
    exprs = [str(rule["expr"]) for rule in alerts(rules)]
    return {(match[1], match[3]) for expr in exprs for match in _JOB_MATCHER.finditer(expr)}
