"""The shipped alerting rules (deploy/prometheus/alerts.yml) as the deployment tests read them:
which scrape job their selectors name, so that compose's Prometheus and the Kubernetes
PodMonitor can be checked to scrape under that very name."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.support.processes import REPO

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
_JOB_MATCHER = re.compile(r"""\bjob\s*(=~|!~|!=|=)\s*(["'`])(.*?)\2""")


def job_matchers(rules: Path = RULES) -> set[tuple[str, str]]:
    """Every `job` label matcher in the rules' expressions, as (operator, value)."""
    document = yaml.safe_load(rules.read_text(encoding="utf-8"))
    exprs = [str(rule["expr"]) for group in document["groups"] for rule in group["rules"]]
    return {(match[1], match[3]) for expr in exprs for match in _JOB_MATCHER.finditer(expr)}
