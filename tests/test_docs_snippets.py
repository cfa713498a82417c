"""The YAML in README and docs/ is YAML, and every block that is a whole config loads: a
reader who pastes one gets the gateway's answer about their values, not a parser error
(`keys: [${MONETAG_SECRET}]` was not YAML: `expected ',' or ']', but got '{'`)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from tests.support import docpages
from tests.support.telegram import TEST_BOT_TOKEN

# values of the shape each variable the docs use must have; any other gets a plain key
ENVIRONMENT = {
    "TELEGRAM_BOT_TOKEN": TEST_BOT_TOKEN,
    "YMID_SIGNING_KEY": "docs-signing-key-0123456789abcdef0123",
    "ADMIN_TOKEN": "docs-admin-token-0123456789",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "STORE_URL": "postgresql://gateway:pw@127.0.0.1:5432/gateway",
}
PLAIN_VALUE = "docs-value-0123456789abcdef"


def blocks() -> list[Any]:
    return [pytest.param(block.body, id=block.where) for block in docpages.blocks("yaml", "yml")]


def is_whole_config(document: Any) -> bool:
    routes = document.get("routes") if isinstance(document, dict) else None
    return isinstance(routes, dict) and all(
        isinstance(route, dict) and "upstreams" in route for route in routes.values()
    )


def test_the_docs_have_yaml_blocks_and_whole_configs_among_them() -> None:
    documents = [yaml.safe_load(block.values[0]) for block in blocks()]
    assert len(documents) >= 5
    assert sum(is_whole_config(document) for document in documents) >= 2


@pytest.mark.parametrize("block", blocks())
def test_each_yaml_block_is_yaml_and_each_whole_config_loads(block: str) -> None:
    document = yaml.safe_load(block)  # a YAMLError names the line
    if not is_whole_config(document):
        return  # a fragment of a config: valid YAML is what it can promise
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", block))
    environ = {name: ENVIRONMENT.get(name, PLAIN_VALUE) for name in names}
    parse_config(block, environ)  # ConfigError lists every problem
