"""Server options: each declared once in service/config.py, read from a flag, an
IMPROV_STORE_* variable or the default, and documented by a generated table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from improv_store.service.config import (
    REGENERATE,
    TABLE_END,
    TABLE_START,
    ServerConfig,
    add_arguments,
    config_from_args,
    flag_name,
    format_size,
    markdown_table,
    options,
    parse_size,
    variable_name,
    with_table,
)

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def no_server_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the IMPROV_STORE_* variables it sets itself."""
    for config_field, _ in options():
        monkeypatch.delenv(variable_name(config_field.name), raising=False)


def parse(*argv: str) -> ServerConfig:
    """The config ``serve`` would run with for these flags and the current environment."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_documented_table_matches_the_declarations() -> None:
    """docs/configuration.md carries exactly the table the declarations generate."""
    document = DOCUMENT.read_text()
    start = document.index(TABLE_START) + len(TABLE_START)
    committed = document[start : document.index(TABLE_END, start)].strip("\n") + "\n"
    assert committed == markdown_table(), f"the option table is stale: run {REGENERATE}"


def test_with_table_rewrites_only_between_the_markers() -> None:
    document = f"before\n{TABLE_START}\nold rows\n{TABLE_END}\nafter\n"
    assert with_table(document) == f"before\n{TABLE_START}\n{markdown_table()}{TABLE_END}\nafter\n"


def test_every_option_has_a_flag_a_variable_and_a_documented_row() -> None:
    table = markdown_table()
    for config_field, _ in options():
        flag, variable = flag_name(config_field.name), variable_name(config_field.name)
        assert f"| `{flag}` | `{variable}` |" in table
    assert variable_name("wal_size") == "IMPROV_STORE_WAL_SIZE"
    assert flag_name("wal_size") == "--wal-size"


def test_no_flags_and_no_variables_give_the_defaults() -> None:
    assert parse() == ServerConfig()


def test_variables_are_converted_like_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable's text goes through the flag's parser: sizes, octal modes, switches."""
    for name, text in {
        "WAL_SIZE": "64M",
        "MEMORY": "1.5g",
        "SOCKET_MODE": "0660",
        "LANE": "off",
        "INSECURE": "1",
        "COMMIT_INTERVAL": "0.25",
        "MAX_STREAMS": "6",
        "LOG_LEVEL": "debug",
        "DURABILITY": "sync",
        "METRICS_LISTEN": "127.0.0.1:9100",
    }.items():
        monkeypatch.setenv("IMPROV_STORE_" + name, text)
    config = parse()
    assert config.wal_size == 64 << 20
    assert config.memory == 3 << 29
    assert config.socket_mode == 0o660
    assert config.lane is False
    assert config.insecure is True
    assert config.commit_interval == 0.25
    assert config.max_streams == 6
    assert config.log_level == "DEBUG"
    assert config.durability == "sync"
    assert config.metrics_listen == "127.0.0.1:9100"


def test_a_flag_wins_over_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPROV_STORE_DURABILITY", "sync")
    monkeypatch.setenv("IMPROV_STORE_MAX_OBJECT_SIZE", "1M")
    monkeypatch.setenv("IMPROV_STORE_LANE", "off")
    config = parse("--durability", "none", "--max-object-size", "3M", "--lane", "on")
    assert (config.durability, config.max_object_size, config.lane) == ("none", 3 << 20, True)


def test_insecure_alone_means_yes() -> None:
    assert parse("--insecure").insecure is True
    assert parse("--insecure", "0").insecure is False
    assert parse().insecure is False


@pytest.mark.parametrize("text,expected", [("on", True), ("1", True), ("yes", True),
                                           ("off", False), ("0", False), ("NO", False)])
def test_the_lane_switch_takes_the_clients_spellings(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: bool
) -> None:
    """Clients read IMPROV_STORE_LANE too, as 1/0 or on/off: the server reads it the same."""
    monkeypatch.setenv("IMPROV_STORE_LANE", text)
    assert parse().lane is expected


@pytest.mark.parametrize(
    "argv,variables,message",
    [
        (("--lane", "maybe"), {}, "argument --lane: invalid choice: 'maybe'"),
        ((), {"IMPROV_STORE_LANE": "sometimes"}, "argument --lane: invalid choice: 'sometimes'"),
        (("--durability", "fast"), {}, "argument --durability: invalid choice: 'fast'"),
        ((), {"IMPROV_STORE_LOG_FORMAT": "xml"}, "argument --log-format: invalid choice"),
        (("--max-workers", "many"), {}, "argument --max-workers: invalid int value: 'many'"),
        ((), {"IMPROV_STORE_COMMIT_INTERVAL": "soon"}, "invalid float value: 'soon'"),
        (("--wal-size", "big"), {}, "argument --wal-size: not a size: 'big'"),
        ((), {"IMPROV_STORE_SOCKET_MODE": "rw"}, "argument --socket-mode: not an octal mode"),
        (("--insecure", "perhaps"), {}, "argument --insecure: not a boolean"),
    ],
)
def test_a_bad_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    variables: dict[str, str],
    message: str,
) -> None:
    """A bad flag, or a bad variable, stops argparse with exit 2 and the reason."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        parse(*argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_combinations_are_still_checked_by_the_config() -> None:
    with pytest.raises(ValueError, match="power of two"):
        parse("--index-slots", "100")
    with pytest.raises(ValueError, match="below max_workers"):
        parse("--max-workers", "64")


@pytest.mark.parametrize(
    "text,size",
    [("512", 512), ("64K", 64 << 10), ("64M", 64 << 20), ("2GiB", 2 << 30), ("1.5g", 3 << 29),
     ("1t", 1 << 40), ("0", 0), (" 8mb ", 8 << 20)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "12Q", "lots"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("size", [0, 1000, 1536, 64 << 10, 32 << 20, 2 << 30, 1 << 40])
def test_format_size_reads_back(size: int) -> None:
    assert parse_size(format_size(size)) == size
