"""One duration grammar, read the same by the config (`ttl: 7d`) and by the command line
(`queue purge --older-than 500ms`): before, each had its own, and each refused what the
other accepted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway import queue_cli
from gateway.cli import main
from gateway.config import ConfigError, StoreConfig, parse_config
from tests.support.configedit import assert_problem_at
from tests.support.gatewayconfig import gateway_config
from tests.support.processes import SECRET

APP = "http://127.0.0.1:9/postback"

DURATIONS = [
    pytest.param("500ms", 0.5, id="milliseconds"),
    pytest.param("5s", 5.0, id="seconds"),
    pytest.param("1.5s", 1.5, id="fractional-seconds"),
    pytest.param("10m", 600.0, id="minutes"),
    pytest.param("24h", 86400.0, id="hours"),
    pytest.param("7d", 7 * 86400.0, id="days"),
    pytest.param("0.5d", 43200.0, id="fractional-days"),
    pytest.param("30", 30.0, id="a-plain-number-is-seconds"),
    pytest.param("2.5", 2.5, id="a-plain-fraction-is-seconds"),
    pytest.param(" 12h ", 43200.0, id="surrounding-spaces"),
]

NOT_DURATIONS = [
    pytest.param("5 parsecs", id="unknown-unit"),
    pytest.param("2w", id="weeks-are-no-unit"),
    pytest.param("-1s", id="negative"),
    pytest.param("soon", id="a-word"),
    pytest.param("1e3", id="exponent"),
    pytest.param("h", id="a-unit-alone"),
    pytest.param("", id="empty"),
]


def ttl_problems(written: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(gateway_config(APP, dedup={"ttl": written}), {"MONETAG_SECRET": SECRET})
    return caught.value.problems


class RecordingOutbox:
    """Stands in for the store: `purge` asks it to forget what was delivered before a time."""

    def __init__(self) -> None:
        self.cutoffs: list[float] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def purge_delivered(self, older_than: float) -> int:
        self.cutoffs.append(older_than)
        return 0


@pytest.fixture
def purge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, RecordingOutbox]:
    path = tmp_path / "config.yaml"
    path.write_text(gateway_config(APP, store=tmp_path / "queue.db"))
    monkeypatch.setenv("MONETAG_SECRET", SECRET)
    outbox = RecordingOutbox()

    def open_outbox(store: StoreConfig) -> RecordingOutbox:
        return outbox

    monkeypatch.setattr(queue_cli, "open_outbox", open_outbox)
    return path, outbox


def older_than(config: Path, written: str) -> list[str]:
    return ["queue", "--config", str(config), "purge", "--delivered", f"--older-than={written}"]


@pytest.mark.parametrize(("written", "seconds"), DURATIONS)
def test_a_duration_in_the_config_is_read_as_seconds(written: str, seconds: float) -> None:
    text = gateway_config(APP, dedup={"ttl": written}, queue={"max_age": written})
    (route,) = parse_config(text, {"MONETAG_SECRET": SECRET}).routes
    assert (route.dedup.ttl, route.queue.max_age) == (seconds, seconds)


@pytest.mark.parametrize(("written", "seconds"), DURATIONS)
def test_a_duration_on_the_command_line_is_read_as_seconds(
    written: str, seconds: float, purge: tuple[Path, RecordingOutbox]
) -> None:
    config, outbox = purge
    before = time.time()
    assert main(older_than(config, written)) == 0
    after = time.time()
    (cutoff,) = outbox.cutoffs
    assert before - seconds <= cutoff <= after - seconds


@pytest.mark.parametrize("written", NOT_DURATIONS)
def test_what_is_no_duration_in_the_config_is_a_problem_naming_the_key(written: str) -> None:
    assert_problem_at(ttl_problems(written), "routes.tapper.dedup.ttl", "is not a duration")


@pytest.mark.parametrize("written", [*NOT_DURATIONS, pytest.param("9" * 400, id="infinite")])
def test_what_is_no_duration_on_the_command_line_is_refused_naming_the_flag(
    written: str, purge: tuple[Path, RecordingOutbox]
) -> None:
    config, outbox = purge
    with pytest.raises(SystemExit) as refused:
        main(older_than(config, written))
    assert str(refused.value.code).startswith("--older-than "), refused.value.code
    assert "not a duration like 500ms, 5s, 10m, 24h, 7d" in str(refused.value.code)
    assert outbox.cutoffs == []  # refused before the store is touched


def test_a_duration_too_long_to_count_is_a_problem_in_the_config() -> None:
    assert_problem_at(ttl_problems("9" * 400), "routes.tapper.dedup.ttl", "must be finite")


def test_zero_purges_everything_delivered_but_is_no_ttl(
    purge: tuple[Path, RecordingOutbox],
) -> None:
    config, outbox = purge
    assert main(older_than(config, "0s")) == 0
    assert len(outbox.cutoffs) == 1
    assert_problem_at(ttl_problems("0s"), "routes.tapper.dedup.ttl", "longer than zero")
