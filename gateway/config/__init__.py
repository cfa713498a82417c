"""config.yaml -> validated, frozen config objects.

Everything is checked before the server listens, and every error names its key path
(`routes.tapper.allow_ips[2]`). `${NAME}` and `${NAME:-default}` in string values are replaced
from the environment so secrets stay out of the file. The key names are a contract with
operators (`tests/data/contract.yaml`); every key is described in `docs/config-reference.yaml`.
"""

import hashlib
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from .model import (
    ConfigError,
    DedupConfig,
    GatewayConfig,
    HistoryConfig,
    ListenAddress,
    QueueConfig,
    RouteConfig,
    ServerConfig,
    StoreConfig,
    UpstreamConfig,
)
from .reader import DocumentReader
from .values import DURATION_EXAMPLES, duration_words, parse_duration
from .yamlfile import read_yaml

__all__ = [
    "DURATION_EXAMPLES",
    "ConfigError",
    "DedupConfig",
    "GatewayConfig",
    "HistoryConfig",
    "ListenAddress",
    "QueueConfig",
    "RouteConfig",
    "ServerConfig",
    "StoreConfig",
    "UpstreamConfig",
    "duration_words",
    "load_config",
    "parse_config",
    "parse_duration",
]


MAX_CONFIG_BYTES = 1024 * 1024  # far above any real config: 40,000 allow_ips entries fit


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read, substitute and validate a config file; raise ConfigError listing every problem."""
    try:
        with Path(path).open("rb") as file:
            # bytes, not text mode: the checksum must match `sha256sum` even for CRLF files
            raw = file.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"config file {os.fspath(path)!r} is larger than {MAX_CONFIG_BYTES} bytes"]
            )
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"config file {os.fspath(path)!r} is not UTF-8 text"]) from None
    except OSError as error:  # the operator's own path: shown whole
        message = f"cannot read config file {os.fspath(path)!r}: {error.strerror}"
        raise ConfigError([message]) from None
    return parse_config(text, os.environ if environ is None else environ)


def parse_config(text: str, environ: Mapping[str, str]) -> GatewayConfig:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"the config is larger than {MAX_CONFIG_BYTES} bytes"])
    document = read_yaml(text)
    if document is None:
        raise ConfigError(["config is empty"])
    reader = DocumentReader(environ)
    config = reader.gateway(document)
    if reader.problems or config is None:
        more = [f"... and {reader.unlisted} more problems"] if reader.unlisted else []
        raise ConfigError((reader.problems or ["config is empty"]) + more)
    return replace(config, checksum=hashlib.sha256(text.encode()).hexdigest()[:16])
