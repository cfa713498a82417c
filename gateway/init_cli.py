"""`monetag-gateway init`: a first config.yaml and the environment file holding its key, made
from the postback URL the publisher registers with Monetag and the URL of the app behind.

Flags for scripts; on a terminal, questions for what they leave out. It prints the URL to
register and the commands to run next. The key is the one secret it ever shows, inside that
URL, and only to a terminal or with --show-key: otherwise the URL says ${MONETAG_SECRET}.

Exit status: 0 when both files are written; 2 when something must change first (a missing or
bad answer, a file already there); 1 when a file cannot be written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .config import ConfigError
from .config.model import TlsConfig
from .init_config import (
    KEY_REFERENCE,
    SECRET_VARIABLE,
    UNIQUE_DEDUP_TTL,
    USER_ID_DEDUP_TTL,
    RegisteredUrl,
    Setup,
    YmidUse,
    app_url_problem,
    config_text,
    env_file_text,
    loaded,
    new_key,
    read_registered_url,
    route_name_for,
)

SUMMARY = "write a first config.yaml and its key's env file from your Monetag postback URL"
DEFAULT_CONFIG = "config.yaml"
ENV_FILE_NAME = "monetag-gateway.env"  # beside the config unless --env-file
STORE_FILE_NAME = "gateway.db"  # beside the config unless --store
DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_TLS_LISTEN = "0.0.0.0:8443"  # with --tls-cert: the gateway speaks https itself
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
EXIT_WRITTEN, EXIT_NOT_WRITTEN, EXIT_CHANGE_FIRST = 0, 1, 2

TEMPLATE_QUESTION = (
    "The postback URL you register (or will register) with Monetag, macros in braces,\n"
    "e.g. https://yourdomain.com/postback?uid={ymid}&event={event_type}&zone={zone_id}\n"
    "postback URL: "
)
APP_URL_QUESTION = (
    "The URL of your app's postback handler, where verified postbacks go,\n"
    "e.g. http://127.0.0.1:8000/postback.php\n"
    "app URL: "
)
YMID_QUESTION = (
    "What does your app pass to the ad as ymid?\n"
    "  unique   a fresh id for each ad call (Monetag's advice):\n"
    f"           dedup drops a repeat for {UNIQUE_DEDUP_TTL}\n"
    "  user-id  the user's id, as Monetag's sample handlers suggest (reward_user(ymid)):\n"
    f"           dedup drops a repeat for {USER_ID_DEDUP_TTL} only, so the user's next ad pays\n"
    "ymid [unique]: "
)
_YMID_ANSWERS = {"": YmidUse.UNIQUE, "unique": YmidUse.UNIQUE, "user-id": YmidUse.USER_ID}


class ChangeFirst(Exception):
    """What the operator must change before init can write anything."""


class NoAnswer(ChangeFirst):
    """The terminal closed (end of input) before a question was answered."""


def add_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"the config file to write (default: {DEFAULT_CONFIG})",
    )
    command.add_argument(
        "--template",
        metavar="URL",
        help="the postback URL registered with Monetag, e.g. "
        "'https://yourdomain.com/postback?uid={ymid}&event={event_type}'",
    )
    command.add_argument(
        "--app",
        "--app-url",
        dest="app_url",
        metavar="URL",
        help="your app's postback handler, which the gateway calls",
    )
    command.add_argument(
        "--ymid",
        choices=[use.value for use in YmidUse],
        help="what the app passes as ymid: a unique id per ad call (default) or the user's id",
    )
    command.add_argument("--route", help="the route's name (default: from the URL's path, or app)")
    command.add_argument(
        "--secret-param",
        metavar="NAME",
        help="the URL parameter holding the key (default: the template's token=... or "
        "key=... literal, else token)",
    )
    command.add_argument(
        "--env-file",
        metavar="PATH",
        help=f"where the key goes, as {SECRET_VARIABLE}=... (default: {ENV_FILE_NAME} beside "
        "the config)",
    )
    command.add_argument(
        "--store",
        metavar="PATH",
        help=f"the SQLite store (default: {STORE_FILE_NAME} beside the config; $GATEWAY_STORE "
        "overrides it at run time)",
    )
    command.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"where Monetag's postbacks arrive (default: {DEFAULT_LISTEN}, "
        f"{DEFAULT_TLS_LISTEN} with --tls-cert)",
    )
    command.add_argument(
        "--admin-listen",
        default=DEFAULT_ADMIN_LISTEN,
        metavar="HOST:PORT",
        help=f"health, metrics and the inspector (default: {DEFAULT_ADMIN_LISTEN})",
    )
    command.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a proxy in front whose X-Forwarded-For is believed (nginx on this host: "
        "127.0.0.1); repeat for several",
    )
    command.add_argument("--tls-cert", metavar="PEM", help="TLS on the public port: certificate")
    command.add_argument("--tls-key", metavar="PEM", help="TLS on the public port: private key")
    command.add_argument(
        "--show-key",
        action="store_true",
        help="print the key in the URL to register even when stdout is not a terminal",
    )
    command.add_argument(
        "--force", action="store_true", help="overwrite the config and env file if they exist"
    )


@dataclass
class Terminal:
    """Where questions are asked (the output: stderr, so stdout stays the command's)."""

    answers: TextIO
    questions: TextIO
    asked: bool = False

    def ask(self, question: str, flag: str) -> str:
        """The answer typed, stripped; NoAnswer names `flag` if the input ends first."""
        self.questions.write(("\n" if self.asked else "") + question)
        self.asked = True
        self.questions.flush()
        line = self.answers.readline()
        if not line:
            raise NoAnswer(f"no answer given ({flag} answers it without a question)")
        return line.strip()

    def tell(self, text: str) -> None:
        print(text, file=self.questions)


@dataclass(frozen=True)
class Answers:
    url: RegisteredUrl
    app_url: str
    ymid: YmidUse


def gather(args: argparse.Namespace, terminal: Terminal | None) -> Answers:
    """The three answers init needs, from the flags, or asked when a terminal is there;
    ChangeFirst names the flag that is missing or wrong."""
    if args.template is not None:
        try:
            url = read_registered_url(args.template, args.secret_param)
        except ValueError as error:
            raise ChangeFirst(f"--template {error}") from None
    else:
        url = _ask_template(_needed(terminal, "--template"), args.secret_param)
    if args.app_url is not None:
        if (problem := app_url_problem(args.app_url)) is not None:
            raise ChangeFirst(f"--app {problem}")
        app_url = args.app_url.strip()
    else:
        app_url = _ask_app_url(_needed(terminal, "--app"))
    if args.ymid is not None:
        ymid = YmidUse(args.ymid)
    elif terminal is not None:
        ymid = _ask_ymid(terminal)
    else:
        ymid = YmidUse.UNIQUE
    return Answers(url, app_url, ymid)


def _needed(terminal: Terminal | None, flag: str) -> Terminal:
    if terminal is None:
        raise ChangeFirst(f"{flag} is required (stdin is not a terminal, so nothing is asked)")
    return terminal


def _ask_template(terminal: Terminal, secret_param: str | None) -> RegisteredUrl:
    while True:
        try:
            return read_registered_url(terminal.ask(TEMPLATE_QUESTION, "--template"), secret_param)
        except ValueError as error:
            terminal.tell(f"that URL {error}; try again")


def _ask_app_url(terminal: Terminal) -> str:
    while True:
        answer = terminal.ask(APP_URL_QUESTION, "--app")
        if (problem := app_url_problem(answer)) is None:
            return answer
        terminal.tell(f"that URL {problem}; try again")


def _ask_ymid(terminal: Terminal) -> YmidUse:
    while True:
        answer = terminal.ask(YMID_QUESTION, "--ymid").lower()
        if answer in _YMID_ANSWERS:
            return _YMID_ANSWERS[answer]
        terminal.tell("answer unique or user-id")


def run(args: argparse.Namespace) -> int:
    terminal = Terminal(sys.stdin, sys.stderr) if _is_terminal(sys.stdin) else None
    try:
        files = files_to_write(args)  # before any question: a refusal then wastes no answers
        answers = gather(args, terminal)
        if terminal is not None and terminal.asked:
            terminal.tell("")
        show_key = args.show_key or _is_terminal(sys.stdout)
        return write_and_tell(args, files, answers, show_key=show_key)
    except ChangeFirst as error:
        print(f"init: {error}", file=sys.stderr)
        return EXIT_CHANGE_FIRST


def _is_terminal(stream: TextIO | None) -> bool:
    return stream is not None and stream.isatty()  # None: started without that stream


@dataclass(frozen=True)
class Files:
    config: Path
    env: Path


def files_to_write(args: argparse.Namespace) -> Files:
    """Where the config and the key go; ChangeFirst if a flag is wrong or a file is there."""
    config_file = Path(args.config)
    env_file = Path(args.env_file) if args.env_file else config_file.parent / ENV_FILE_NAME
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ChangeFirst("--tls-cert and --tls-key go together: give both, or neither")
    if env_file.resolve() == config_file.resolve():
        raise ChangeFirst("--env-file must not be the config file")
    if not args.force:
        for path, flag in ((config_file, "--config"), (env_file, "--env-file")):
            if path.exists() or path.is_symlink():
                raise ChangeFirst(
                    f"{path} exists: --force overwrites it, {flag} PATH writes elsewhere"
                )
    return Files(config_file, env_file)


def write_and_tell(
    args: argparse.Namespace, files: Files, answers: Answers, *, show_key: bool
) -> int:
    config_file, env_file = files.config, files.env
    store = os.path.abspath(args.store or config_file.parent / STORE_FILE_NAME)
    if "}" in store:
        raise ChangeFirst("--store: a path with '}' cannot stand in ${GATEWAY_STORE:-...}")
    setup = Setup(
        url=answers.url,
        app_url=answers.app_url,
        route=args.route or route_name_for(answers.url.template.path),
        ymid=answers.ymid,
        store=store,
        env_file=_shell_path(env_file),
        config_file=shlex.quote(str(config_file)),
        listen=args.listen or (DEFAULT_TLS_LISTEN if args.tls_cert else DEFAULT_LISTEN),
        admin_listen=args.admin_listen,
        trusted_proxies=tuple(args.trusted_proxy),
        tls=(
            TlsConfig(os.path.abspath(args.tls_cert), os.path.abspath(args.tls_key))
            if args.tls_cert
            else None
        ),
    )
    key = new_key()
    text = config_text(setup)
    try:
        config = loaded(text, key, os.environ)  # ${APP_KEY} in the app URL: set, say
    except ConfigError as error:
        raise ChangeFirst(
            "the answers make a config the gateway would refuse:\n  " + "\n  ".join(error.problems)
        ) from None
    try:
        _write(env_file, env_file_text(key, setup.config_file, setup.env_file), 0o600, args.force)
    except OSError as error:
        print(f"init: cannot write {env_file}: {error.strerror}", file=sys.stderr)
        return EXIT_NOT_WRITTEN
    try:
        _write(config_file, text, None, args.force)
    except OSError as error:
        env_file.unlink(missing_ok=True)  # a key no config reads, and no URL registered yet
        print(f"init: cannot write {config_file}: {error.strerror}", file=sys.stderr)
        return EXIT_NOT_WRITTEN
    route = config.routes[0]
    print(
        f"wrote {config_file}: route {route.name}, {route.path} -> {route.upstreams[0].label}, "
        f"dedup [{', '.join(route.dedup.key)}] for {setup.dedup_ttl}"
    )
    print(f"wrote {env_file} (mode 0600): {SECRET_VARIABLE}, the route's new key")
    print(_next_steps(setup, key if show_key else None))
    called = setup.url.port
    if called is not None and called != config.server.listen.port:
        print(
            f"note: Monetag will call port {called}, the URL's; the gateway listens on "
            f"{config.server.listen.port}. Forward {called} to it (a proxy, a port mapping), "
            f"or register the URL with :{config.server.listen.port} "
            "(docs/deployment.md, 'Port 443')"
        )
    if setup.url.insecure:
        print(
            "warning: the postback URL is http://, so Monetag would send the key across the "
            "internet readable by every hop: register https:// (server.tls here, or a TLS "
            "proxy in front)",
            file=sys.stderr,
        )
    return EXIT_WRITTEN


def _write(path: Path, text: str, mode: int | None, replace: bool) -> None:
    """Write `text` to a new file (or over an old one, if `replace`); `mode` set whatever the
    umask or an old file had, and a symlink in its place refused: it holds a key."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    if mode is not None:
        flags |= os.O_NOFOLLOW
    descriptor = os.open(path, flags, 0o666 if mode is None else mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        if mode is not None:
            os.fchmod(descriptor, mode)
        file.write(text)


def _shell_path(path: Path) -> str:
    """`path` as a shell word `.` can source: `. name` alone would search $PATH for it."""
    text = str(path)
    if not path.is_absolute() and not text.startswith(("./", "../")):
        text = f"./{text}"
    return shlex.quote(text)


def _next_steps(setup: Setup, key: str | None) -> str:
    url = setup.url
    config, env = setup.config_file, setup.env_file
    if key is not None:
        register = [
            "Register this postback URL with Monetag. It holds the key: paste it into Monetag's",
            "panel, share it with no one:",
            f"  {url.with_key(key)}",
        ]
    else:
        register = [
            f"Register this postback URL with Monetag, {KEY_REFERENCE} replaced by the key in",
            f"{env} (stdout is not a terminal, so the key is not shown; --show-key shows it):",
            f"  {url.with_key(KEY_REFERENCE)}",
        ]
    if url.secret_param in url.template.fixed:
        register.append(f"(the template's {url.secret_param} value is replaced by the new key)")
    lines = [
        "",
        *register,
        "",
        "Next:",
        f"  set -a; . {env}; set +a   # {SECRET_VARIABLE}, for the commands below",
        f"  monetag-gateway check --config {config}",
        f"  monetag-gateway run --config {config}",
        f"  monetag-gateway fire --config {config} --route {shlex.quote(setup.route)} --dry-run"
        "   # every check, nothing sent",
        "",
        f"Once real postbacks arrive: monetag-gateway allowlist suggest --config {config}",
        "(the comments above allow_ips_mode in the config say what to do with it).",
    ]
    if setup.ymid == YmidUse.USER_ID:
        lines.append(
            f"ymid is the user's id, so dedup.ttl is {USER_ID_DEDUP_TTL}: the config's comment "
            "says what that costs; reward sessions (docs/sessions.md) make ymids unique."
        )
    return "\n".join(lines)
