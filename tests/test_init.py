"""`monetag-gateway init`: from the postback URL registered with Monetag to a config that
`check` accepts, a key in a 0600 env file and nowhere else, and a gateway that serves an app
written like Monetag's sample handlers."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import os
import re
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.cli import main
from gateway.config import GatewayConfig, load_config
from gateway.config.model import AllowIpsMode
from gateway.config.template import parse_template
from gateway.demo_app import GRANTED, create_demo_app
from gateway.init_cli import (
    APP_URL_QUESTION,
    TEMPLATE_QUESTION,
    YMID_QUESTION,
    NoAnswer,
    Terminal,
    add_arguments,
    files_to_write,
    gather,
    write_and_tell,
)
from gateway.init_config import KEY_BYTES, YmidUse
from tests.support.tlscerts import make_certificate

HOST = "https://yourdomain.com"
WITH_ZONE = f"{HOST}/postback?uid={{ymid}}&event={{event_type}}&zone={{zone_id}}"
WITHOUT_ZONE = f"{HOST}/postback?uid={{ymid}}&source={{request_var}}&event={{event_type}}"
EVERY_MACRO = (
    f"{HOST}/monetag/tapper?user={{ymid}}&z={{zone_id}}&sz={{sub_zone_id}}&src={{request_var}}"
    "&tg={telegram_id}&event={event_type}&value={reward_event_type}&price={estimated_price}"
    "&app=tapper"
)
APP_URL = "http://127.0.0.1:8000/postback.php"
KEY_LENGTH = 43  # secrets.token_urlsafe(32)
ENV_LINE = re.compile(r"^MONETAG_SECRET=([A-Za-z0-9_-]+)$", re.MULTILINE)
PLANTED = "planted-literal-value-0123456789"  # a literal in a template: maybe someone's key


def init(
    capsys: pytest.CaptureFixture[str], directory: Path, *args: str, template: str = WITH_ZONE
) -> tuple[int, str, str]:
    """`monetag-gateway init` writing directory/config.yaml: its exit status, stdout, stderr."""
    flags = ["--config", str(directory / "config.yaml"), "--app", APP_URL]
    code = main(["init", *flags, "--template", template, *args])
    out, err = capsys.readouterr()
    return code, out, err


def key_in(env_file: Path) -> str:
    match = ENV_LINE.search(env_file.read_text(encoding="utf-8"))
    assert match is not None, "no MONETAG_SECRET= line"
    return match.group(1)


def check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, directory: Path
) -> str:
    """`monetag-gateway check` on the written config with the env file's key, as the operator
    runs it after `set -a; . monetag-gateway.env; set +a`; its output (it must pass)."""
    monkeypatch.setenv("MONETAG_SECRET", key_in(directory / "monetag-gateway.env"))
    monkeypatch.delenv("GATEWAY_STORE", raising=False)
    code = main(["check", "--config", str(directory / "config.yaml")])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def written(directory: Path) -> GatewayConfig:
    key = key_in(directory / "monetag-gateway.env")
    return load_config(directory / "config.yaml", {"MONETAG_SECRET": key})


def register_url(out: str) -> str:
    """The URL init told the operator to register (the line under 'Register ...')."""
    lines = out.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("Register"))
    return next(line.strip() for line in lines[start:] if line.startswith("  http"))


# -- the config it writes, for several URLs --------------------------------------------------


@pytest.mark.parametrize(
    "template, args, dedup_key, ttl, aliases",
    [
        pytest.param(
            WITH_ZONE,
            [],
            ("ymid", "event_type", "zone_id"),
            24 * 3600,
            {"uid": "ymid", "event": "event_type", "zone": "zone_id"},
            id="with-zone",
        ),
        pytest.param(
            WITHOUT_ZONE,
            [],
            ("ymid", "event_type"),
            24 * 3600,
            {"uid": "ymid", "source": "request_var", "event": "event_type"},
            id="without-zone",
        ),
        pytest.param(
            EVERY_MACRO,
            ["--ymid", "unique"],
            ("ymid", "event_type", "zone_id"),
            24 * 3600,
            {
                "user": "ymid",
                "z": "zone_id",
                "sz": "sub_zone_id",
                "src": "request_var",
                "tg": "telegram_id",
                "event": "event_type",
                "value": "reward_event_type",
                "price": "estimated_price",
            },
            id="every-macro-and-a-fixed-parameter",
        ),
        pytest.param(
            WITH_ZONE,
            ["--ymid", "user-id"],
            ("ymid", "event_type", "zone_id"),
            600,
            {"uid": "ymid", "event": "event_type", "zone": "zone_id"},
            id="ymid-is-the-user-id",
        ),
        pytest.param(
            WITHOUT_ZONE.replace("https:", "http:"),
            [],
            ("ymid", "event_type"),
            24 * 3600,
            {"uid": "ymid", "source": "request_var", "event": "event_type"},
            id="plain-http",
        ),
    ],
)
def test_the_config_written_passes_check(
    capsys, monkeypatch, tmp_path, template, args, dedup_key, ttl, aliases
):
    code, out, err = init(capsys, tmp_path, *args, template=template)
    assert code == 0, err
    summary = check(capsys, monkeypatch, tmp_path)
    assert "OK, 1 route(s)" in summary
    config = written(tmp_path)
    route = config.routes[0]
    assert route.path == parse_template(template).path
    assert dict(route.aliases) == aliases
    assert route.dedup.key == dedup_key
    assert route.dedup.ttl == ttl
    assert route.required == ("ymid", "event_type")
    assert route.secret is not None and route.secret.query_param == "token"
    assert route.allow_ips is None and route.allow_ips_mode == AllowIpsMode.LOG_ONLY
    assert str(route.upstreams[0].url) == APP_URL
    assert config.store is not None and config.store.path == str(tmp_path / "gateway.db")
    assert config.history.enabled
    assert (
        f"warning: routes.{route.name}: no allow_ips" in summary
    )  # said, and the comments say why
    assert "allow_ips any address (log_only: not enforced)" in summary
    if "user-id" in args:
        assert "docs/sessions.md" in (tmp_path / "config.yaml").read_text()
        assert "dedup.ttl is 10m" in out
    if template.startswith("http:"):
        assert "warning: the postback URL is http://" in err
    else:
        assert "http://" not in err


def test_a_url_with_the_canonical_names_gets_no_aliases(capsys, monkeypatch, tmp_path):
    """`ymid=ymid`-style aliases say nothing, and `check` printed them as `none`: a reader
    who saw three aliases in the file took the summary for a bug."""
    template = "https://gw.example.com/postback?ymid={ymid}&event_type={event_type}&zone={zone_id}"
    code, _, err = init(capsys, tmp_path, template=template)
    assert code == 0, err
    assert dict(written(tmp_path).routes[0].aliases) == {"zone": "zone_id"}
    code, _, err = init(
        capsys,
        tmp_path,
        "--force",
        template="https://gw.example.com/postback?ymid={ymid}&event_type={event_type}",
    )
    assert code == 0, err
    assert "aliases:" not in (tmp_path / "config.yaml").read_text()
    summary = check(capsys, monkeypatch, tmp_path)
    assert "aliases   none: the URL uses the canonical names" in summary


def test_every_macro_route_is_named_from_the_path_and_keeps_the_fixed_parameter(capsys, tmp_path):
    code, out, _ = init(capsys, tmp_path, "--show-key", template=EVERY_MACRO)
    assert code == 0
    route = written(tmp_path).routes[0]
    assert route.name == "tapper"
    assert "&app=tapper&token=" in register_url(out)


def test_tls_files_are_written_in_and_loaded_by_check(capsys, monkeypatch, tmp_path):
    certificate = make_certificate(tmp_path / "tls", "gateway")
    tls = ["--tls-cert", str(certificate.cert_file), "--tls-key", str(certificate.key_file)]
    code, out, err = init(capsys, tmp_path, *tls)
    assert code == 0, err
    summary = check(capsys, monkeypatch, tmp_path)
    assert f"tls on, certificate {certificate.cert_file}" in summary
    assert "plain HTTP" not in summary
    # https on the gateway's own port: Monetag calls the URL's, 443, and is told so
    assert written(tmp_path).server.listen.port == 8443
    assert "note: Monetag will call port 443, the URL's; the gateway listens on 8443" in out


def test_a_tls_proxy_in_front_is_written_as_trusted(capsys, monkeypatch, tmp_path):
    """nginx on this host terminating TLS: its X-Forwarded-For names the real sender, and
    the key no longer travels in clear to the gateway (the second trial edited this in)."""
    code, _, err = init(capsys, tmp_path, "--trusted-proxy", "127.0.0.1")
    assert code == 0, err
    trusted = written(tmp_path).server.trusted_proxies
    assert ipaddress.ip_address("127.0.0.1") in trusted
    assert ipaddress.ip_address("127.0.0.2") not in trusted
    assert "plain HTTP" not in check(capsys, monkeypatch, tmp_path)
    code, _, err = init(capsys, tmp_path, "--force", "--trusted-proxy", "10.0.0.300")
    assert code == 2 and "server.trusted_proxies[0]" in err, err


def test_no_port_note_when_the_url_names_the_port_the_gateway_listens_on(capsys, tmp_path):
    template = "https://gw.example.com:8080/postback?uid={ymid}&event={event_type}"
    code, out, err = init(capsys, tmp_path, template=template)
    assert code == 0, err
    assert "note: Monetag will call port" not in out


def test_without_tls_check_warns_that_the_key_travels_in_clear(capsys, monkeypatch, tmp_path):
    assert init(capsys, tmp_path)[0] == 0
    assert "the key travels in the URL over plain HTTP" in check(capsys, monkeypatch, tmp_path)
    assert "# tls:" in (tmp_path / "config.yaml").read_text()  # how to turn it on, commented


def test_the_literal_key_parameter_of_the_template_holds_the_new_key(capsys, tmp_path):
    template = f"{HOST}/postback?uid={{ymid}}&event={{event_type}}&key={PLANTED}"
    code, out, err = init(capsys, tmp_path, "--show-key", template=template)
    assert code == 0, err
    route = written(tmp_path).routes[0]
    assert route.secret is not None and route.secret.query_param == "key"
    key = key_in(tmp_path / "monetag-gateway.env")
    assert register_url(out) == f"{HOST}/postback?uid={{ymid}}&event={{event_type}}&key={key}"
    assert PLANTED not in out + err + (tmp_path / "config.yaml").read_text()


# -- the key ---------------------------------------------------------------------------------


def test_the_key_is_strong_in_a_0600_env_file_and_never_in_the_config(capsys, tmp_path):
    code, out, err = init(capsys, tmp_path)
    assert code == 0, err
    env_file = tmp_path / "monetag-gateway.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    key = key_in(env_file)
    assert len(key) == KEY_LENGTH and KEY_BYTES == 32
    config_text = (tmp_path / "config.yaml").read_text()
    assert key not in config_text
    assert 'keys: ["${MONETAG_SECRET}"]' in config_text
    # stdout is no terminal here: the URL names the key instead of holding it
    assert key not in out + err
    assert register_url(out) == f"{WITH_ZONE}&token=${{MONETAG_SECRET}}"
    assert "--show-key" in out


def test_show_key_prints_it_in_the_url_to_register(capsys, tmp_path):
    code, out, _ = init(capsys, tmp_path, "--show-key")
    assert code == 0
    key = key_in(tmp_path / "monetag-gateway.env")
    url = register_url(out)
    assert url == f"{WITH_ZONE}&token={key}"
    assert out.count(key) == 1  # in the URL, nowhere else
    template = parse_template(url)
    assert template.fixed == {"token": key}
    assert template.aliases == {"uid": "ymid", "event": "event_type", "zone": "zone_id"}


def test_two_runs_make_two_keys(capsys, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert init(capsys, tmp_path / "a")[0] == init(capsys, tmp_path / "b")[0] == 0
    assert key_in(tmp_path / "a" / "monetag-gateway.env") != key_in(
        tmp_path / "b" / "monetag-gateway.env"
    )


def test_the_env_file_can_go_elsewhere(capsys, monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    env_file = tmp_path / "a" / "secrets.env"
    code, out, _ = init(capsys, tmp_path, "--env-file", str(env_file))
    assert code == 0
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert not (tmp_path / "monetag-gateway.env").exists()
    assert f". {env_file}; set +a" in out
    assert f". {env_file}; set +a" in (tmp_path / "config.yaml").read_text()


# -- refusals --------------------------------------------------------------------------------


def test_an_existing_config_or_env_file_is_kept_unless_force(capsys, tmp_path):
    assert init(capsys, tmp_path)[0] == 0
    config, env_file = tmp_path / "config.yaml", tmp_path / "monetag-gateway.env"
    before = config.read_text(), env_file.read_text()
    code, out, err = init(capsys, tmp_path, template=WITHOUT_ZONE)
    assert code == 2 and out == ""
    assert f"{config} exists: --force overwrites it" in err
    assert (config.read_text(), env_file.read_text()) == before
    config.unlink()  # the env file alone still holds a key someone may have registered
    code, _, err = init(capsys, tmp_path, template=WITHOUT_ZONE)
    assert code == 2 and f"{env_file} exists" in err and not config.exists()
    env_file.chmod(0o644)
    code, _, err = init(capsys, tmp_path, "--force", template=WITHOUT_ZONE)
    assert code == 0, err
    assert key_in(env_file) != ENV_LINE.search(before[1]).group(1)  # type: ignore[union-attr]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert written(tmp_path).routes[0].dedup.key == ("ymid", "event_type")


@pytest.mark.parametrize(
    "template, phrase",
    [
        pytest.param("not-a-url", "full postback URL", id="not-a-url"),
        pytest.param("https://x.com/p?uid={ymid} &event={event_type}", "spaces", id="a-space"),
        pytest.param(f"{HOST}/postback", "with its query", id="no-query"),
        pytest.param(
            "/postback?uid={ymid}&event={event_type}", "starting with https://", id="path"
        ),
        pytest.param(
            f"{HOST}/p?uid={{user}}&event={{event_type}}",
            "does not hold a Monetag macro",
            id="macro",
        ),
        pytest.param(
            f"{HOST}/p?event={{event_type}}&zone={{zone_id}}&token={PLANTED}",
            "does not carry {ymid}: add ymid={ymid}",
            id="no-ymid",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&token={PLANTED}",
            "does not carry {event_type}",
            id="no-event-type",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&event={{event_type}}&uid={PLANTED}",
            "names parameter 'uid' twice",
            id="a-parameter-twice",
        ),
        pytest.param(
            f"{HOST}/p?ymid={{event_type}}&uid={{ymid}}",
            "'ymid' is named like the field ymid but carries {event_type}",
            id="names-collide",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&event={{event_type}}&token={{zone_id}}",
            "'token' carries {zone_id}, so it cannot hold the key",
            id="token-carries-a-macro",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&event={{event_type}}&zone_id={PLANTED}",
            "'zone_id' is a field's name but holds a fixed value",
            id="a-field-with-a-fixed-value",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&event={{event_type}}&key={PLANTED}&token=x",
            "several literal parameters that could hold the key",
            id="two-places-for-the-key",
        ),
    ],
)
def test_a_bad_template_is_exit_2_with_what_is_wrong_and_nothing_written(
    capsys, tmp_path, template, phrase
):
    code, out, err = init(capsys, tmp_path, template=template)
    assert code == 2 and out == ""
    assert err.startswith("init: --template ") and phrase in err, err
    assert PLANTED not in err and template not in err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_answer_to_the_config_is_exit_2_naming_the_key(capsys, tmp_path):
    code, _, err = init(capsys, tmp_path, "--listen", "127.0.0.1:9090")
    assert code == 2
    assert "server.admin_listen: must not share server.listen's port" in err
    code, _, err = init(capsys, tmp_path, "--tls-cert", "cert.pem")
    assert code == 2 and "--tls-cert and --tls-key go together" in err
    code, _, err = init(capsys, tmp_path, "--store", str(tmp_path / "a}b.db"))
    assert code == 2 and "--store: a path with '}'" in err
    assert list(tmp_path.iterdir()) == []


def test_the_app_url_may_name_an_environment_variable(capsys, monkeypatch, tmp_path):
    """An app's own key stays out of the config too: `?api_key=${APP_KEY}`, read at start."""
    app_url = "http://127.0.0.1:8000/postback.php?api_key=${APP_KEY}"
    flags = ["init", "--config", str(tmp_path / "config.yaml"), "--template", WITH_ZONE]
    monkeypatch.delenv("APP_KEY", raising=False)
    assert main([*flags, "--app", app_url]) == 2
    err = capsys.readouterr().err
    assert "the answers make a config the gateway would refuse" in err and "APP_KEY" in err
    monkeypatch.setenv("APP_KEY", "the-apps-own-key")
    assert main([*flags, "--app-url", app_url]) == 0  # the longer name says the same
    out = capsys.readouterr().out
    assert "the-apps-own-key" not in out + (tmp_path / "config.yaml").read_text()
    assert "api_key" not in out  # the app URL is named by its host:port only
    assert "127.0.0.1:8000" in out


def test_without_a_terminal_a_missing_flag_is_exit_2_naming_it(capsys, tmp_path):
    config = str(tmp_path / "config.yaml")
    assert main(["init", "--config", config, "--app", APP_URL]) == 2
    assert "init: --template is required" in capsys.readouterr().err
    assert main(["init", "--config", config, "--template", WITH_ZONE]) == 2
    assert "init: --app is required" in capsys.readouterr().err
    assert main(["init", "--config", config, "--template", WITH_ZONE, "--app", "ftp://x"]) == 2
    assert "init: --app must be an http:// or https:// URL" in capsys.readouterr().err


def test_init_reads_no_config(capsys, monkeypatch, tmp_path):
    """GATEWAY_CONFIG names the config the other commands read; init writes its own."""
    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "missing.yaml"))
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--template", WITH_ZONE, "--app", APP_URL]) == 0
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "monetag-gateway.env").exists()
    assert ". ./monetag-gateway.env; set +a" in capsys.readouterr().out


# -- the gateway it configures, in front of a sample app -------------------------------------


async def test_the_printed_url_rewards_a_click_once(capsys, tmp_path, start_gateway):
    """The demo app reads ymid and event_type as Monetag's PHP sample does, and rewards a
    click. Monetag calls the URL init printed, macros filled in; then retries it."""
    app = create_demo_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        app_url = f"http://127.0.0.1:{runner.addresses[0][1]}/postback"
        config_file = tmp_path / "config.yaml"
        flags = ["--config", str(config_file), "--app", app_url, "--template", WITHOUT_ZONE]
        assert main(["init", *flags, "--show-key"]) == 0
        url = register_url(capsys.readouterr().out)
        key = key_in(tmp_path / "monetag-gateway.env")
        gateway = await start_gateway(config_file.read_text(), env={"MONETAG_SECRET": key})
        filled = url.replace(HOST, gateway.url).format(
            ymid="ad-call-7f3a", request_var="level_end", event_type="click"
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(filled) as first:
                assert first.status == 200, await first.text()
                assert first.headers["X-Gateway-Outcome"] == "forwarded"
            assert app[GRANTED] == [{"ymid": "ad-call-7f3a", "event_type": "click"}]
            async with http.get(filled) as again:
                assert again.status == 200
                assert again.headers["X-Gateway-Outcome"] == "duplicate"
            async with http.get(filled.replace(key, "not-the-key")) as forged:
                assert forged.status == 403
    finally:
        await runner.cleanup()
    assert app[GRANTED] == [{"ymid": "ad-call-7f3a", "event_type": "click"}]


# -- questions on a terminal ------------------------------------------------------------------


def init_arguments(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(args))


def test_questions_ask_again_until_the_answer_is_usable():
    typed = io.StringIO(
        "https://yourdomain.com/postback?uid={ymid}\n"  # no {event_type}
        f"{WITH_ZONE}\n"
        "ftp://app\n"
        f"{APP_URL}\n"
        "maybe\n"
        "user-id\n"
    )
    shown = io.StringIO()
    answers = gather(init_arguments(), Terminal(typed, shown))
    assert answers.url.template.aliases == {"uid": "ymid", "event": "event_type", "zone": "zone_id"}
    assert answers.app_url == APP_URL
    assert answers.ymid is YmidUse.USER_ID
    text = shown.getvalue()
    assert text.count(TEMPLATE_QUESTION) == 2 and "that URL does not carry {event_type}" in text
    assert text.count(APP_URL_QUESTION) == 2 and "that URL must be an http://" in text
    assert text.count(YMID_QUESTION) == 2 and "answer unique or user-id" in text


def test_questions_skip_what_the_flags_say_and_ymid_defaults_to_unique(
    capsys, monkeypatch, tmp_path
):
    shown = io.StringIO()
    typed = io.StringIO(f"\n{APP_URL}\n\n")  # an empty app URL, then one; Enter for ymid
    answers = gather(init_arguments("--template", WITH_ZONE), Terminal(typed, shown))
    assert TEMPLATE_QUESTION not in shown.getvalue()
    assert shown.getvalue().count(APP_URL_QUESTION) == 2
    assert answers.app_url == APP_URL and answers.ymid is YmidUse.UNIQUE
    args = init_arguments("--config", str(tmp_path / "config.yaml"))
    assert write_and_tell(args, files_to_write(args), answers, show_key=False) == 0
    assert written(tmp_path).routes[0].dedup.ttl == 24 * 3600
    check(capsys, monkeypatch, tmp_path)


def test_input_ending_before_an_answer_names_the_flag():
    with pytest.raises(NoAnswer, match="--app answers it"):
        gather(init_arguments("--template", WITH_ZONE), Terminal(io.StringIO(""), io.StringIO()))


@pytest.mark.process
def test_init_on_a_terminal_asks_and_shows_the_key(capsys, monkeypatch, tmp_path):
    """The real command on a pseudo-terminal: three questions answered as a person types."""
    with on_a_terminal(tmp_path) as (process, screen):
        screen.wait_for("postback URL: ")
        screen.type(WITHOUT_ZONE)
        screen.wait_for("app URL: ")
        screen.type(APP_URL)
        screen.wait_for("ymid [unique]: ")
        screen.type("user-id")
        assert process.wait(timeout=30) == 0, screen.text
    key = key_in(tmp_path / "monetag-gateway.env")
    assert f"{WITHOUT_ZONE}&token={key}" in screen.text  # a terminal: the key, to paste
    assert key not in (tmp_path / "config.yaml").read_text()
    assert written(tmp_path).routes[0].dedup.ttl == 600
    check(capsys, monkeypatch, tmp_path)
    # run again: refused at once, before a question is asked for nothing
    with on_a_terminal(tmp_path) as (process, screen):
        assert process.wait(timeout=30) == 2
    assert "config.yaml exists: --force overwrites it" in screen.text
    assert "postback URL:" not in screen.text


@contextlib.contextmanager
def on_a_terminal(directory: Path) -> Iterator[tuple[subprocess.Popen[bytes], Screen]]:
    """`monetag-gateway init` in `directory`, its stdin, stdout and stderr a pseudo-terminal;
    what it wrote is all in the screen once the block ends."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "init"],
        cwd=directory,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    screen = Screen(controller)
    try:
        yield process, screen
        screen.read_to_end()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)


class Screen:
    """What a pseudo-terminal's program wrote, read as it comes."""

    TIMEOUT = 20.0

    def __init__(self, controller: int) -> None:
        self.controller = controller
        self.text = ""
        self.seen = 0  # where the text waited for last ended

    def wait_for(self, text: str) -> None:
        """Until `text` is shown after what was waited for before."""
        deadline = time.monotonic() + self.TIMEOUT
        while (found := self.text.find(text, self.seen)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"never shown: {text!r}; the screen: {self.text!r}"
            assert self._read(left), f"the program ended before {text!r}: {self.text!r}"
        self.seen = found + len(text)

    def type(self, line: str) -> None:
        os.write(self.controller, line.encode() + b"\r")

    def read_to_end(self) -> None:
        while self._read(self.TIMEOUT):
            pass

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.controller], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.controller, 4096)
        except OSError:  # EIO: the program closed the terminal
            return False
        self.text += chunk.decode(errors="replace").replace("\r\n", "\n")
        return bool(chunk)
