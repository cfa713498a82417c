"""Building test configs by editing a valid base, and asserting on the problems they cause."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, GatewayConfig, parse_config

DROP = object()  # a change that removes the key


def edited(base: Mapping[str, Any], changes: Mapping[str, Any]) -> str:
    """`base` as YAML, with each dotted key ("routes.tapper.upstreams.0.retries") set or DROPped."""
    document = copy.deepcopy(dict(base))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node: Any = document
        for part in parents:
            if isinstance(node, list):
                node = node[int(part)]
                continue
            if not isinstance(node.get(part), dict | list):
                node[part] = {}  # a key below a scalar (`store: memory`) makes it a section
            node = node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is DROP:
            del node[key]
        else:
            node[key] = value
    return yaml.safe_dump(document, sort_keys=False)


def problems_of(text: str, environ: Mapping[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ)
    return caught.value.problems


def assert_problem_at(problems: list[str], key_path: str, phrase: str) -> None:
    at_path = [problem for problem in problems if problem.startswith(f"{key_path}: ")]
    assert at_path, f"no problem names {key_path!r}: {problems}"
    assert any(phrase in problem for problem in at_path), f"{phrase!r} not in {at_path}"


@dataclass(frozen=True)
class ConfigEdits:
    """A valid base config and its environment, for tables of cases that each change a few
    keys: `text` writes it with the changes, `parse` loads it, `problems` lists what is wrong."""

    base: Mapping[str, Any]
    environ: Mapping[str, str]

    def text(self, changes: Mapping[str, Any]) -> str:
        return edited(self.base, changes)

    def parse(
        self, changes: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> GatewayConfig:
        return parse_config(self.text(changes), self.environ if environ is None else environ)

    def problems(self, text: str, environ: Mapping[str, str] | None = None) -> list[str]:
        return problems_of(text, self.environ if environ is None else environ)
