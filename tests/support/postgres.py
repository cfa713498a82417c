"""A throwaway PostgreSQL for tests: its own data directory, on a free loopback port.

`PostgresCluster` runs the installed server (`initdb`, then `postgres` as a child of the test
process) with trust authentication, listening on 127.0.0.1 only, `fsync` on (durability is
what its tests are about). PostgreSQL refuses to run as root: as root, both run as the
`postgres` user, in a temporary directory that user owns. Never skipped: `./scripts/test`
installs the Debian package `postgresql`.

The server is started directly rather than with `pg_ctl`, which detaches it: a killed detached
postmaster stays a zombie until init reaps it (seconds in some containers), and a restart
refuses to run while the pid in its lock file exists. A child is reaped at once.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.processes import free_port

SERVER_USER = "postgres"  # as root, the server and its files belong to this user
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",  # the default, said anyway: the tests are about durability
    "max_connections": "200",  # several gateway processes may share one server
}
PATIENCE = 30.0  # seconds for the server to start or stop


def server_binaries() -> Path:
    """The directory of `initdb` and `postgres`: Debian's highest version, else the PATH's."""
    debian = sorted(
        (Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: _version(path.parts[-3]),
    )
    found = debian[-1] if debian else shutil.which("initdb")
    if found is None:
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on"
            " PATH): ./scripts/test installs it (Debian package `postgresql`)",
            pytrace=False,
        )
    return Path(found).parent


class PostgresCluster:
    """A PostgreSQL server of its own (`initdb` in a fresh directory), which a test may stop,
    start again on the same data, or kill as a crash would. `remove` deletes it all."""

    def __init__(self) -> None:
        self._bin = server_binaries()
        self._as_server = os.geteuid() == 0
        self.port = free_port()
        # Not pytest's tmp_path: as root that is private to root, and the server runs as postgres.
        self.directory = Path(tempfile.mkdtemp(prefix="test-postgres-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self._server: subprocess.Popen[bytes] | None = None
        try:
            if self._as_server:
                server = _server_account()
                os.chown(self.directory, server.pw_uid, server.pw_gid)
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-instructions",
            )
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (recovering after a kill)."""
        assert self._server is None, "already started"
        with self.log.open("ab") as log:
            self._server = subprocess.Popen(
                [
                    str(self._bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.directory),
                    *(f"-c{name}={value}" for name, value in SETTINGS.items()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                **self._server_user(),
            )
        deadline = time.monotonic() + PATIENCE
        while not self._ready(self._server.pid):
            if self._server.poll() is not None or time.monotonic() > deadline:
                self._server.kill()
                self._server.wait()
                self._server = None
                self._fail("PostgreSQL did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open sessions are ended, the data is left consistent."""
        if self._server is not None:
            self._server.send_signal(signal.SIGINT)
            try:
                self._server.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.kill()
                self._fail("PostgreSQL did not stop")
            self._server = None

    def kill(self) -> None:
        """SIGKILL the postmaster and every server process, as a crash of its host would; the
        next `start` recovers from the write-ahead log."""
        if self._server is not None:
            postmaster = self._server.pid
            os.kill(postmaster, signal.SIGSTOP)  # starts no more backends meanwhile
            for child in _children(postmaster):  # each in a session of its own: no killpg
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            os.kill(postmaster, signal.SIGKILL)
            self._server.wait()  # reaped at once: the stale postmaster.pid names no process
            self._server = None

    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, ending the sessions a test left open on it."""
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; its output, unaligned, without headers."""
        done = subprocess.run(
            [
                str(self._bin / "psql") if (self._bin / "psql").exists() else "psql",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
        if done.returncode != 0:
            pytest.fail(f"psql {statement!r}: {done.stderr.strip()}", pytrace=False)
        return done.stdout

    def remove(self) -> None:
        """Stop the server if it runs (killing it if it will not stop), delete its files."""
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _ready(self, pid: int) -> bool:
        """Whether the lock file says this postmaster accepts connections (as `pg_ctl -w`
        reads it: pid on the first line, status on the eighth)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) >= 8 and lines[0] == str(pid) and lines[7].strip() == "ready"

    def _server_user(self) -> dict[str, Any]:
        """As root, the settings of Popen that run the server as SERVER_USER."""
        if not self._as_server:
            return {}
        server = _server_account()
        return {"user": server.pw_uid, "group": server.pw_gid, "extra_groups": []}

    def _fail(self, what: str, detail: str = "") -> NoReturn:
        log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        pytest.fail(f"{what}\n{detail}\n--- {self.log}:\n{log}", pytrace=False)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._as_server:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(
            command, cwd=self.directory, capture_output=True, text=True, timeout=PATIENCE + 30
        )
        if done.returncode != 0:
            self._fail(
                f"{program} {' '.join(args)} failed ({done.returncode})", done.stdout + done.stderr
            )


def _server_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(
            f"PostgreSQL will not run as root, and there is no `{SERVER_USER}` user to run it"
            " as: ./scripts/test installs the Debian package `postgresql`, which creates it",
            pytrace=False,
        )


def _children(parent: int) -> list[int]:
    """The pids of a process's children, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (command)"
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _version(name: str) -> tuple[int, ...]:
    """`15` -> (15,), `9.6` -> (9, 6); anything else sorts first."""
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()
