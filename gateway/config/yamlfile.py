"""Reading the YAML text: safe_load semantics, but a key repeated in a mapping is an error, and
a document may not expand to more than MAX_VALUES values.

Anchors and aliases let 1,181 bytes stand for a billion strings ("billion laughs"): the loader
shares them, but whatever walks the document (the config reader, a problem message) would
expand them, for seconds and gigabytes. So the document's size as it expands, each alias
counted each time it is used, is measured once (memoized, so in time linear in the text)
and a larger one refused."""

from __future__ import annotations

from typing import Any

import yaml

from ..shown import quoted
from .model import ConfigError

MAX_VALUES = 250_000  # scalars, lists and mappings a config may expand to


def read_yaml(text: str) -> Any:
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
        size = _expanded_size(document, {})
    except yaml.YAMLError as error:
        raise ConfigError([f"config is not valid YAML: {_describe_yaml_error(error)}"]) from None
    except RecursionError:
        raise ConfigError(["config is nested too deeply"]) from None
    if size > MAX_VALUES:
        raise ConfigError(
            [
                f"config expands to more than {MAX_VALUES} values (YAML anchors and aliases "
                "repeat what they point at): write it out, or use fewer of them"
            ]
        )
    return document


def _expanded_size(value: Any, known: dict[int, int]) -> int:
    """How many values `value` is once every alias is expanded; `known` is memoized per
    object (an alias is the very same object in the loaded document)."""
    if not isinstance(value, dict | list):
        return 1
    size = known.get(id(value))
    if size is None:
        parts = (*value.keys(), *value.values()) if isinstance(value, dict) else value
        size = 1 + sum(_expanded_size(part, known) for part in parts)
        known[id(value)] = size
    return size


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a repeated mapping key is an error instead of silently winning."""


def _construct_mapping_without_duplicates(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges are resolved by construct_mapping below
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {quoted(key)} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates
)


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    """Where and what, never the offending source text: that line may hold a secret."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return type(error).__name__
