"""Configuration: every variable takes effect, and a bad value names the variable."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from oxidicom_py import settings
from oxidicom_py.setting_parsers import parse_pacs_address
from oxidicom_py.settings import SettingsError, load


def test_defaults_without_any_variable() -> None:
    s = load({})
    assert s.db_connection is None and s.embedded_db
    assert s.db_pool == 10 and s.db_batch_size == 100
    assert s.scp_aet == "ChRIS"
    assert s.listener_port == 11111
    assert s.files_root == Path("oxidicom-data/files")
    assert s.pgdata == Path("oxidicom-data/pgdata")
    assert s.storage_fsync is True
    assert s.log_level == "INFO"


def test_every_documented_variable_takes_effect() -> None:
    env = {
        "OXIDICOM_DB_CONNECTION": "postgresql://u:p@db:5432/chris",
        "OXIDICOM_DB_POOL": "3",
        "OXIDICOM_DB_BATCH_SIZE": "7",
        "OXIDICOM_DB_LINGER_MS": "5",
        "OXIDICOM_STATE_DIR": "/var/lib/ox",
        "OXIDICOM_FILES_ROOT": "/data",
        "OXIDICOM_STORAGE_FSYNC": "false",
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_SCP_STRICT": "true",
        "OXIDICOM_SCP_UNCOMPRESSED_ONLY": "yes",
        "OXIDICOM_SCP_PROMISCUOUS": "1",
        "OXIDICOM_SCP_MAX_PDU_LENGTH": "16384",
        "OXIDICOM_SCP_ARTIM_TIMEOUT": "2.5",
        "OXIDICOM_PACS_ADDRESS": '{OXITESTORTHANC="orthanc:4242"}',
        "OXIDICOM_LISTENER_THREADS": "4",
        "OXIDICOM_LISTENER_PORT": "11112",
        "OXIDICOM_LISTENER_ADDRESS": "127.0.0.1",
        "OXIDICOM_VERBOSE": "yes",
    }
    s = load(env)
    assert s.db_connection == "postgresql://u:p@db:5432/chris" and not s.embedded_db
    assert (s.db_pool, s.db_batch_size, s.db_linger_ms) == (3, 7, 5)
    assert s.state_dir == Path("/var/lib/ox") and s.files_root == Path("/data")
    assert s.storage_fsync is False
    assert s.scp_aet == "OXIDICOMTEST"
    assert s.scp_strict and s.scp_uncompressed_only and s.scp_promiscuous
    assert s.scp_max_pdu_length == 16384 and s.scp_artim_timeout == 2.5
    assert s.pacs_address == {"OXITESTORTHANC": ("orthanc", 4242)}
    assert (s.max_associations, s.listener_port, s.listener_address) == (4, 11112, "127.0.0.1")
    assert s.verbose and s.log_level == "DEBUG"
    assert set(env) <= set(settings.DOCUMENTED)


def test_files_root_defaults_inside_the_state_dir() -> None:
    assert load({"OXIDICOM_STATE_DIR": "/srv/x"}).files_root == Path("/srv/x/files")


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("OXIDICOM_DB_POOL", "zero", "expected an integer"),
        ("OXIDICOM_DB_POOL", "0", "must be between 1"),
        ("OXIDICOM_DB_BATCH_SIZE", "-5", "must be between 1"),
        ("OXIDICOM_LISTENER_PORT", "70000", "between 1 and 65535"),
        ("OXIDICOM_SCP_STRICT", "maybe", "expected true or false"),
        ("OXIDICOM_SCP_AET", "THIS_TITLE_IS_TOO_LONG", "not a valid AE title"),
        ("OXIDICOM_SCP_AET", "A\\B", "not a valid AE title"),
        ("OXIDICOM_SCP_MAX_PDU_LENGTH", "100", "0 (unlimited) or at least 4096"),
        ("OXIDICOM_PACS_ADDRESS", "{BCH=1.2.3.4}", "must be host:port"),
        ("OXIDICOM_PACS_ADDRESS", "BCH", "cannot read"),
        ("OXIDICOM_LOG_LEVEL", "loud", "expected DEBUG"),
        ("OXIDICOM_DB_CONNECTION", "  ", "must not be empty"),
        ("OXIDICOM_SCP_ARTIM_TIMEOUT", "-1", "greater than 0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, expect: str) -> None:
    with pytest.raises(SettingsError) as err:
        load({name: value})
    assert str(err.value).startswith(f"{name}: ")
    assert expect in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("{}", {}),
        ('{BCH="1.2.3.4:4242"}', {"BCH": ("1.2.3.4", 4242)}),
        ('{BCH="1.2.3.4:4242", MGH="pacs.example:104"}', {"BCH": ("1.2.3.4", 4242), "MGH": ("pacs.example", 104)}),
        ("{BCH=1.2.3.4:4242}", {"BCH": ("1.2.3.4", 4242)}),
        ("BCH=1.2.3.4:4242,MGH=5.6.7.8:9090", {"BCH": ("1.2.3.4", 4242), "MGH": ("5.6.7.8", 9090)}),
        ("BCH=1.2.3.4:4242,", {"BCH": ("1.2.3.4", 4242)}),
        ('{"OXITESTORTHANC"="orthanc:4242"}', None),
    ],
)
def test_pacs_address_forms(raw: str, expected: dict[str, tuple[str, int]] | None) -> None:
    if expected is None:
        with pytest.raises(SettingsError):
            parse_pacs_address("OXIDICOM_PACS_ADDRESS", raw)
    else:
        assert parse_pacs_address("OXIDICOM_PACS_ADDRESS", raw) == expected


def test_unknown_variables_are_reported() -> None:
    assert settings.unknown_variables({"OXIDICOM_DB_BATCHSIZE": "5", "OXIDICOM_DB_POOL": "2", "HOME": "/"}) == [
        "OXIDICOM_DB_BATCHSIZE"
    ]


def test_serve_stops_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "serve"],
        env={"OXIDICOM_DB_POOL": "many", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["oxidicom-py: configuration error: OXIDICOM_DB_POOL: expected an integer, got 'many'"]


def test_the_readme_configuration_table_is_the_declarations() -> None:
    """The README's table is made from the one declaration of each variable: a setting added,
    renamed or re-documented in settings.py without regenerating the README fails here."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- settings:")
    block = readme[readme.index("\n", start) + 1 : readme.index("<!-- end settings -->")]
    assert block == settings.readme_table(), "out of date: run scripts/readme_settings.py"
    names = [f.metadata["env"] for f in settings.VARIABLES]
    assert [f"| `{name}` |" in block for name in names] == [True] * len(names)
    aliases = [a for f in settings.VARIABLES for a in f.metadata["aliases"]]
    assert all(f"`{a}`" in block for a in aliases)  # an older name is told in its setting's row


def test_every_field_of_settings_is_a_declared_variable() -> None:
    names = [f.metadata.get("env") for f in dataclasses.fields(settings.Settings)]
    assert all(name and name.startswith("OXIDICOM_") for name in names)
    assert len(set(names)) == len(names)
    assert settings.unknown_variables(dict.fromkeys(names, "")) == []


def test_an_unreachable_database_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    """Before: the pool retried in silence for 30 s, then a traceback."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "oxidicom_py", "serve"],
        env={
            "OXIDICOM_DB_CONNECTION": f"postgresql://oxi@127.0.0.1:{port}/db",
            "OXIDICOM_LISTENER_PROCESSES": "1",
            "OXIDICOM_LISTENER_ADDRESS": "127.0.0.1",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    critical = [json.loads(line) for line in proc.stderr.splitlines() if '"critical"' in line]
    assert len(critical) == 1 and "exception" not in critical[0], proc.stderr
    assert critical[0]["msg"].startswith("start-up failed: OXIDICOM_DB_CONNECTION: cannot connect to the database: ")
    assert "Connection refused" in critical[0]["msg"]


def test_version_and_help() -> None:
    version = subprocess.run([sys.executable, "-m", "oxidicom_py", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("oxidicom-py 0.")
    helptext = subprocess.run([sys.executable, "-m", "oxidicom_py", "--help"], capture_output=True, text=True).stdout
    assert "SUPPRESS" not in helptext and "worker" not in helptext and "serve" in helptext
