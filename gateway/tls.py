"""TLS on the public port, with certificates re-read when their files change.

The postback URL carries the key in its query, so over plain HTTP every hop between Monetag and
the gateway can read it. Where no TLS-terminating proxy stands in front, the gateway terminates
TLS itself: TLS 1.2 and newer only, with Python's default (secure) cipher choice.

Renewals need no restart: the files are checked for changes and a new certificate is loaded
into a *new* context, which new handshakes switch to (`sni_callback` runs for every
ClientHello, with or without a server name). A certificate that does not load (a key written
before its certificate, a typo) leaves the current one serving and is tried again at the next
check, so a half-finished renewal never takes the port down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

from .config import ConfigError, GatewayConfig
from .config.model import TlsConfig

log = logging.getLogger("gateway.tls")


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """A server context for the files; raises OSError or ssl.SSLError if they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.cert_file, config.key_file)
    return context


def expiry(cert_file: str) -> float:
    """Unix time the file's (first) certificate expires; OSError or ssl.SSLError if it cannot
    be read. The stdlib has no public way to read a certificate that is not a peer's, and the
    `cryptography` package would be a dependency for one date: `_test_decode_cert` is the
    decoder Python's own `getpeercert()` uses (there since Python 2.7), and
    tests/test_listeners.py fails if it ever goes."""
    decode: Callable[[str], dict[str, Any]] = ssl._ssl._test_decode_cert  # type: ignore[attr-defined]
    return float(ssl.cert_time_to_seconds(decode(cert_file)["notAfter"]))


def check_certificates(config: GatewayConfig) -> None:
    """Raise ConfigError (`server.tls: ...`) if the config's certificate and key do not load.
    Parsing a config reads their paths only; `check`, `run` and a reload call this, so a
    missing file or a key of another certificate is reported as a config problem there."""
    if config.server.tls is None:
        return
    try:
        server_context(config.server.tls)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError([f"server.tls: {describe_load_error(error)}"]) from None


def describe_load_error(error: OSError | ssl.SSLError) -> str:
    """What went wrong loading a certificate, for config errors and logs (no file content)."""
    if isinstance(error, ssl.SSLError):
        return f"not a usable certificate and key: {error.reason or error.strerror or error}"
    return f"cannot read: {error.strerror or error}"


class CertificateReloader:
    """Owns the context the listener was started with and the certificate it currently serves."""

    def __init__(
        self, config: TlsConfig, on_reload: Callable[[bool], None] = lambda ok: None
    ) -> None:
        self._config = config
        self._on_reload = on_reload
        self.context = server_context(config)  # given to the listener, for good
        self.expires = expiry(config.cert_file)  # the serving certificate's notAfter
        self._serving = self.context
        self.context.sni_callback = self._pick
        self._stamp = self._files_stamp()
        self._failed: tuple[tuple[int, int, int] | None, ...] | None = None

    def _pick(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if connection.context is not self._serving:
            connection.context = self._serving  # this handshake uses the newest certificate

    def reload_if_changed(self) -> bool | None:
        """Load the files if they changed: True if loaded, False if they did not load (the old
        certificate stays), None if nothing changed."""
        stamp = self._files_stamp()
        if stamp in (self._stamp, self._failed):
            return None
        try:
            fresh = server_context(self._config)
        except (OSError, ssl.SSLError) as error:
            # tried again once either file changes again (the key may still be on its way)
            self._failed = stamp
            log.error("TLS certificate not reloaded", extra={"detail": describe_load_error(error)})
            self._on_reload(False)
            return False
        try:
            expires = expiry(self._config.cert_file)
        except (OSError, ssl.SSLError):  # replaced again since it loaded: tried at the next
            return None
        self._stamp, self._serving, self.expires = stamp, fresh, expires
        log.info("TLS certificate reloaded", extra={"cert_file": self._config.cert_file})
        self._on_reload(True)
        return True

    async def watch(self, interval: Callable[[], float]) -> None:
        """Check the files every `interval()` seconds (0: every second) until cancelled."""
        while True:
            await asyncio.sleep(interval() or 1.0)
            self.reload_if_changed()

    def _files_stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_stamp(path) for path in (self._config.cert_file, self._config.key_file))


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
