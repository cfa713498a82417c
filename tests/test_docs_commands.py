"""Every `monetag-gateway` command line in the docs' shell blocks runs as written and exits 0: a
reader who pastes one gets its answer, not a usage error, a placeholder the shell cannot read,
or "nothing found" for the very user the page names.

Each line runs with bash in an empty directory of its own (`> postbacks.csv` is a file there),
`monetag-gateway` (or `.venv/bin/monetag-gateway`, `python -m gateway` ...) being this
checkout's, its venv first on the PATH. They run against one
environment this module builds for real: a gateway process on loopback ports in front of a
recording app (route `tapper`, forwarded) and of an app that answers 500 (route `runner`,
queued: its events become dead letters), its SQLite store holding a history with the users,
ymid and request id the docs name, and events 1 to 45 in the outbox (`queue show 42`).
`--config ANYTHING` becomes that environment's config; nothing else on a line is changed. A
`run` line gets a config of its own (the same routes on other ports, another store: the
environment's gateway holds its ports and its SQLite file), must answer /readyz with 200, and
exit 0 on SIGTERM. The lines that delete what others read (`history purge`, `queue purge`)
run last.

README's "In front of your app" is a walk-through from nothing: `init` writes the config and
the env file that the lines after it use. Those lines run in order in one empty directory (the
`mkdir -p ~/my-gateway && cd ~/my-gateway` of the page; its install line is the test's venv),
each after the lines above it that set the environment (`export PATH=...`, `set -a; .
./monetag-gateway.env; set +a`), without MONETAG_SECRET in the test's environment and with
`--config` as written.

The lines' own tests start processes (marked `process`); the collector's run in the quick loop.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support import docpages
from tests.support.docpages import ShellLine
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.processes import SECRET, Reply, command_env, free_port, http_get, spawn_gateway
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually

VENV_BIN = Path(sys.executable).parent  # where `monetag-gateway` of this checkout is
COMMAND_TIMEOUT = 30.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
WORKERS = 4

# What the docs' lines name, and the environment's history and outbox hold
USER = "123456"  # --telegram-id 123456
OTHER_USER = "123"  # --telegram-id 123 (docs/history.md)
YMID = "9f2c41d7"  # --ymid 9f2c41d7
CALLER_REQUEST_ID = "7a1b93c0"  # --request-id 7a1b93c0: the caller's X-Request-ID
QUEUED = 45  # events on the queued route, numbered from 1: `queue show 42`
WRONG_KEY = "not-the-key-0000000000"  # --reason secret_wrong

# The docs' walk-through from nothing: its lines belong together (page, section)
WALKTHROUGH = ("README.md", "In front of your app")
# (command, action) of the lines that delete what other lines read: run after all the others
DESTROYS = {("history", "purge"), ("queue", "purge")}


@dataclass(frozen=True)
class Otherwise:
    status: int
    says: str  # in its stderr
    why: str


# The lines that the docs themselves say do not exit 0 as the test runs them, by their text
OTHERWISE = {
    "monetag-gateway init": Otherwise(
        2,
        "--template is required",
        "it prompts on a terminal (README); without one, as here, it is exit 2 naming the flag "
        "(docs/configuration.md)",
    ),
}

CONFIG_OPTION = re.compile(r"\s--config(?:=|\s+)\S+")
# a word the shell cannot run as the docs mean it: `9f2c...`, `[--since 7d]`, `<id>`, `NAME`
PLACEHOLDER = re.compile(r"\.\.\.|…|\[|\]|<[\w -]+>|(?<!\S)[A-Z][A-Z0-9_]*(?!\S)")


# -- the lines --------------------------------------------------------------------------------


def arguments(line: ShellLine) -> list[str]:
    """The gateway's arguments on the line, without `--config PATH`."""
    match = line.gateway
    assert match is not None
    return shlex.split(CONFIG_OPTION.sub("", line.text[match.end() :]))


def command_of(line: ShellLine) -> tuple[str, str]:
    """(command, action): ("history", "purge"), ("run", "") ..."""
    words = arguments(line)
    return words[0], words[1] if len(words) > 1 else ""


def runnable(line: ShellLine, config: Path | None) -> str:
    """The line for bash: the program as found on the PATH, `--config` given `config`."""
    match = line.gateway
    assert match is not None
    program = "python -m gateway" if "python" in match.group("program") else "monetag-gateway"
    rest = line.text[match.end() :]
    if config is not None:
        rest = CONFIG_OPTION.sub(f" --config {shlex.quote(str(config))}", rest)
    return program + rest


def shared_lines() -> list[ShellLine]:
    """The lines that run against the shared environment."""
    return [line for line in docpages.gateway_lines() if (line.page, line.section) != WALKTHROUGH]


def walkthrough_lines() -> list[ShellLine]:
    return [line for line in docpages.shell_lines() if (line.page, line.section) == WALKTHROUGH]


def is_environment(line: ShellLine) -> bool:
    """`set -a; . ./monetag-gateway.env; set +a`, `export X=1`: what the lines after it run
    in (not an install line, `python3 -m venv ...`, nor `mkdir ... && cd ...`: the test has its
    venv and its directory)."""
    return all(
        part.split()[0] in ("set", "export", ".", "source")
        for part in line.text.split(";")
        if part.strip()
    )


def params(lines: list[ShellLine]) -> list[Any]:
    return [pytest.param(line, id=line.where) for line in lines]


# -- running one ------------------------------------------------------------------------------


def bash(
    script: str, cwd: Path, env: dict[str, str], timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shell_env() -> dict[str, str]:
    """The tests' environment (MONETAG_SECRET the configs' key), this venv first on the PATH."""
    program = VENV_BIN / "monetag-gateway"
    assert program.exists(), f"no {program}: run the tests with the venv's python"
    env = command_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    # as `scripts/test --quick` does: without bytecode, each of ~50 processes compiles the
    # gateway again (a third of its second)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("GATEWAY_STORE", None)  # the configs init writes read it: theirs, not this shell's
    return env


def admin_address(process: subprocess.Popen[bytes], stdout: Path) -> str | None:
    """The admin address of the `listening` log line, once it is there."""
    if process.poll() is not None:
        raise AssertionError(f"exit {process.returncode} before listening")
    for text in stdout.read_text(errors="replace").splitlines():
        try:
            logged = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(logged, dict) and logged.get("message") == "listening":
            return str(logged["admin"][0])
    return None


def ready(address: str) -> bool:
    host, _, port = address.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def serve_briefly(script: str, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> str:
    """A `run` line: started, ready (/readyz 200 on the admin address it logs), stopped with
    SIGTERM; "" if it then exits 0, else what went wrong."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            ["bash", "-c", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=err,
        )  # fmt: skip
    try:
        address = eventually(lambda: admin_address(process, stdout), START_TIMEOUT, 0.05)
        eventually(lambda: ready(address), START_TIMEOUT, 0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT)
        return f"exit {code} after SIGTERM" if code else ""
    except (AssertionError, pytest.fail.Exception) as error:
        return str(error)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def assert_runs(
    line: ShellLine, command: str, cwd: Path, env: dict[str, str], setup: Sequence[str] = ()
) -> None:
    """The line (as `command`, after the `setup` lines) exits 0, or as OTHERWISE says; a `run`
    line serves first."""
    serves = command_of(line)[0] == "run"
    # exec: the SIGTERM goes to the gateway, not to a bash waiting for it
    script = "\n".join([*setup, "exec " + command if serves else command])
    if serves:
        stdout, stderr = cwd / "run.out", cwd / "run.err"
        problem = serve_briefly(script, cwd, env, stdout, stderr)
        out, err = stdout.read_text(errors="replace"), stderr.read_text(errors="replace")
    else:
        done = bash(script, cwd, env)
        out, err = done.stdout, done.stderr
        expected = OTHERWISE.get(line.text, Otherwise(0, "", "as the docs promise"))
        problem = f"exit {done.returncode}, not {expected.status}: {expected.why}"
        if done.returncode == expected.status and expected.says in err:
            problem = ""
    if problem:
        pytest.fail(
            f"{line.where}: {line.text}\nran: {script}\n{problem}\nstdout:\n{out}\nstderr:\n{err}",
            pytrace=False,
        )


# -- the shared environment -------------------------------------------------------------------


def write_config(directory: Path, app: str, failing: str) -> tuple[Path, int, int]:
    """The config of the docs' routes on new ports, its store in `directory`: `tapper`
    forwards to `app`, `runner` queues for `failing` and gives up after one attempt."""
    public_port, admin_port = free_port(), free_port()
    server = {
        "listen": f"127.0.0.1:{public_port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "reload_interval": 0,
        "drain_delay": "0s",
        "shutdown_grace": "2s",
    }
    queue = {"max_attempts": 1, "retry_base": "100ms", "retry_cap": "500ms"}
    routes = {
        "tapper": route([upstream(app, retries=0)]),
        "runner": route([upstream(failing, retries=0)], delivery="queued", queue=queue),
    }
    path = directory / "config.yaml"
    path.write_text(gateway_config(routes=routes, server=server, store=directory / "gw.db"))
    return path, public_port, admin_port


@dataclass
class Environment:
    config: Path
    public_port: int
    app: RecordingUpstream
    failing: RecordingUpstream
    env: dict[str, str]

    def run_config(self, directory: Path) -> Path:
        """For a `run` line: the same routes on other ports, another store."""
        return write_config(directory, self.app.postback_url, self.failing.postback_url)[0]

    def postback(
        self, route_name: str, ymid: str, user: str, key: str, headers: dict[str, str]
    ) -> Reply:
        query = {"uid": ymid, "event": "click", "zone": "42", "telegram_id": user, "token": key}
        target = f"/postback/{route_name}?{urlencode(query)}"
        return http_get(self.public_port, target, headers=headers)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`monetag-gateway COMMAND --config CONFIG ARGS`"""
        command = [str(VENV_BIN / "monetag-gateway"), args[0], "--config", str(self.config)]
        return subprocess.run(
            [*command, *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )


def seed(environment: Environment) -> None:
    """The postbacks whose history and queue the docs' lines read."""
    sent = [
        ("tapper", "u-123456-a", USER, SECRET, {}, "forwarded"),
        ("tapper", "u-123456-a", USER, SECRET, {}, "duplicate"),
        ("tapper", "u-123456-b", USER, WRONG_KEY, {}, "rejected"),
        ("tapper", "u-123-a", OTHER_USER, SECRET, {}, "forwarded"),
        ("tapper", YMID, "7", SECRET, {}, "forwarded"),
        ("tapper", "u-8-a", "8", SECRET, {"X-Request-ID": CALLER_REQUEST_ID}, "forwarded"),
        *(("runner", f"q-{n:02d}", "9", SECRET, {}, "queued") for n in range(1, QUEUED + 1)),
        ("tapper", "u-last", "10", SECRET, {}, "forwarded"),
    ]
    for route_name, ymid, user, key, headers, outcome in sent:
        reply = environment.postback(route_name, ymid, user, key, headers)
        assert reply.outcome == outcome, (route_name, ymid, reply.status, reply.body)
    # the history is written every half second; the queued events fail once, then are dead
    last = ("history", "search", "--ymid", "u-last")
    eventually(lambda: environment.cli(*last).returncode == 0, START_TIMEOUT)
    eventually(
        lambda: f"route runner: dead {QUEUED}\n" in environment.cli("queue", "stats").stdout,
        START_TIMEOUT,
        explain=lambda: environment.cli("queue", "stats").stdout,
    )
    listed = environment.cli("queue", "list", "--state", "dead", "--limit", "100").stdout
    assert "42" in [row.split("\t")[0] for row in listed.splitlines()], listed


@pytest.fixture(scope="module")
def docs_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    directory = tmp_path_factory.mktemp("docs-environment")
    app, failing = RecordingUpstream(), RecordingUpstream(default=500)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        config, public_port, admin_port = write_config(
            directory, app.postback_url, failing.postback_url
        )
        environment = Environment(config, public_port, app, failing, shell_env())
        stdout, stderr = directory / "gateway.out", directory / "gateway.err"
        gateway = spawn_gateway(config, environment.env, stdout, stderr)
        eventually(
            lambda: ready(f"127.0.0.1:{admin_port}"), START_TIMEOUT, explain=stderr.read_text
        )
        seed(environment)
        yield environment
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=STOP_TIMEOUT) == 0, stderr.read_text()
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait(timeout=STOP_TIMEOUT)
        app.close()
        failing.close()


def failure_of(environment: Environment, line: ShellLine, directory: Path) -> str | None:
    """How the line failed to do what the docs say (None: it did), run in `directory`."""
    config = environment.config
    if command_of(line)[0] == "run":  # the environment's gateway holds its ports and store
        config = environment.run_config(directory)
    try:
        assert_runs(line, runnable(line, config), directory, environment.env)
    except (Exception, pytest.fail.Exception) as error:  # said by the line's own test
        return str(error)
    return None


@pytest.fixture(scope="module")
def failures(
    request: pytest.FixtureRequest,
    docs_environment: Environment,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str | None]:
    """What each selected shared line did, by `page:line`. A line's exit status does not
    depend on the others' running beside it (each in its own directory; a `run` line on its
    own ports and store; `queue retry` finds its dead letters dead or pending again), so they
    run WORKERS at a time (one after another, ~45 processes of a second each took over 30 s).
    The lines that delete what others read run after all the others."""
    selected = [
        item.callspec.params["line"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_each_docs_command_line_runs"
        and item.path == Path(__file__)
    ]
    found: dict[str, str | None] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for destroys in (False, True):
            lines = [line for line in selected if (command_of(line) in DESTROYS) == destroys]
            directories = [tmp_path_factory.mktemp("line") for _ in lines]
            outcomes = pool.map(partial(failure_of, docs_environment), lines, directories)
            found.update(zip([line.where for line in lines], outcomes, strict=True))
    return found


@pytest.mark.process
@pytest.mark.parametrize("line", params(shared_lines()))
def test_each_docs_command_line_runs(line: ShellLine, failures: dict[str, str | None]) -> None:
    failure = failures[line.where]
    if failure is not None:
        pytest.fail(failure, pytrace=False)


# -- the walk-through from init ---------------------------------------------------------------


@dataclass
class Walkthrough:
    directory: Path  # one for all its lines: init writes the files the others read
    env: dict[str, str]


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Walkthrough:
    env = shell_env()
    del env["MONETAG_SECRET"]  # the env file init writes has the key
    return Walkthrough(tmp_path_factory.mktemp("docs-walkthrough"), env)


@pytest.mark.process
@pytest.mark.parametrize(
    "line", params([line for line in walkthrough_lines() if line.gateway is not None])
)
def test_the_walkthrough_from_init_runs_in_order(line: ShellLine, walkthrough: Walkthrough) -> None:
    """Each gateway line of the walk-through, after the environment lines above it."""
    above = [
        other.text
        for other in walkthrough_lines()
        if other.gateway is None and other.line < line.line and is_environment(other)
    ]
    assert_runs(line, runnable(line, None), walkthrough.directory, walkthrough.env, above)


# -- the collector ----------------------------------------------------------------------------


def test_the_docs_have_command_lines_of_every_kind() -> None:
    """Not an empty collection passing: the docs' ~45 lines, every command among them, the
    forms the pages use read (a venv's program, a comment left off, a continued line)."""
    lines = docpages.gateway_lines()
    assert len(lines) >= 40, [line.where for line in lines]
    commands = {command_of(line)[0] for line in lines}
    assert commands >= {"init", "run", "check", "fire", "health", "queue", "history", "allowlist"}
    assert {line.page for line in lines} >= {"README.md", "docs/history.md", "docs/durability.md"}
    assert any(line.text.startswith(".venv/bin/monetag-gateway ") for line in lines)
    assert not [line.text for line in lines if "#" in line.text]
    assert any(line.text.endswith("--ymid unique") for line in lines if "init" in line.text)
    walkthrough = walkthrough_lines()
    assert [command_of(line)[0] for line in walkthrough if line.gateway] == [
        "init",
        "check",
        "run",
        "fire",
    ], [line.text for line in walkthrough]
    assert [line.text for line in walkthrough if is_environment(line)] == [
        'export PATH="$PWD/.venv/bin:$PATH"',
        "set -a; . ./monetag-gateway.env; set +a",
    ]
    assert set(OTHERWISE) <= {line.text for line in lines}, "an exception for no line"


@pytest.mark.parametrize(
    "line", [pytest.param(line, id=line.where) for line in docpages.gateway_lines()]
)
def test_every_docs_command_line_is_concrete(line: ShellLine) -> None:
    """A placeholder (`NAME`, `9f2c...`, `[--since 7d]`, `<id>`) belongs in prose: in a
    shell block the line must run as written."""
    assert not PLACEHOLDER.search(line.text), f"{line.where}: {line.text}"


PAGE = """\
# Title

```sh
# a comment line, then the forms of the program
monetag-gateway check --config config.yaml   # a comment
.venv/bin/monetag-gateway health --config c.yaml
/opt/monetag-gateway/bin/monetag-gateway queue --config c.yaml stats
python -m gateway run --config c.yaml
.venv/bin/python3 -m gateway check --config c.yaml
monetag-gateway init \\
  --template 'https://x/postback?uid={ymid}#frag' --ymid unique
docker compose exec gateway-2 python -m gateway queue stats
monetag-gateway-other check
```

## Lists

1. Step:

   ```bash
   monetag-gateway history --config c.yaml export --format csv > out.csv
   ```

```console
$ monetag-gateway check --config c.yaml
config c.yaml: 1 route
monetag-gateway looks like a command here, but is output
```

```
Monetag ──▶ monetag-gateway ──▶ app: a diagram
monetag-gateway queue --config c.yaml stats
```

```yaml
run: monetag-gateway run
```
"""


def test_the_collector_reads_each_form_of_a_command_line() -> None:
    found = [
        (line.line, line.section, line.text)
        for block in docpages.blocks_in(PAGE, "page.md")
        if block.lang in docpages.SHELL_LANGUAGES
        for line in docpages.shell_lines_of(block)
        if line.gateway
    ]
    assert found == [
        (5, "Title", "monetag-gateway check --config config.yaml"),
        (6, "Title", ".venv/bin/monetag-gateway health --config c.yaml"),
        (7, "Title", "/opt/monetag-gateway/bin/monetag-gateway queue --config c.yaml stats"),
        (8, "Title", "python -m gateway run --config c.yaml"),
        (9, "Title", ".venv/bin/python3 -m gateway check --config c.yaml"),
        (
            10,
            "Title",
            "monetag-gateway init   --template 'https://x/postback?uid={ymid}#frag' --ymid unique",
        ),
        (21, "Lists", "monetag-gateway history --config c.yaml export --format csv > out.csv"),
        (25, "Lists", "monetag-gateway check --config c.yaml"),
        (32, "Lists", "monetag-gateway queue --config c.yaml stats"),
    ]


def test_a_line_runs_as_written_but_for_its_program_and_its_config() -> None:
    block = next(block for block in docpages.blocks_in(PAGE, "page.md") if block.lang == "sh")
    lines = {line.line: line for line in docpages.shell_lines_of(block) if line.gateway}
    config = Path("/tmp/the test's/config.yaml")
    assert [runnable(line, config) for line in lines.values()][1:5] == [
        "monetag-gateway health --config '/tmp/the test'\"'\"'s/config.yaml'",
        "monetag-gateway queue --config '/tmp/the test'\"'\"'s/config.yaml' stats",
        "python -m gateway run --config '/tmp/the test'\"'\"'s/config.yaml'",
        "python -m gateway check --config '/tmp/the test'\"'\"'s/config.yaml'",
    ]
    assert runnable(lines[6], None) == "monetag-gateway health --config c.yaml"
    assert command_of(lines[7]) == ("queue", "stats")
    assert command_of(lines[8]) == ("run", "")
    [export] = [
        line
        for block in docpages.blocks_in(PAGE, "page.md")
        if block.lang == "bash"
        for line in docpages.shell_lines_of(block)
    ]
    assert runnable(export, Path("/c.yaml")).endswith("--format csv > out.csv")
    assert command_of(export) == ("history", "export")
    for placeholder in ("--ymid 9f2c...", "--since …", "[--since 7d]", "show <id>", "--route NAME"):
        assert PLACEHOLDER.search(f"monetag-gateway history {placeholder}"), placeholder
    assert not PLACEHOLDER.search("monetag-gateway export --since 30d --format csv > out.csv")
