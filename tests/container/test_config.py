"""Configuration: the seed container's variable names, an equal flag for each, exit 2 on anything invalid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dicom_store_scp.config import SETTINGS, ConfigError, load, settings_table

README = Path(__file__).parents[2] / "README.md"


def run_scp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_store_scp", *args],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), {"AE_TITLE": "A_VERY_LONG_AE_TITLE"}, "AE_TITLE (--ae-title)"),
        (("--scp-port", "70000"), {}, "SCP_PORT (--scp-port)"),
        (("--scp-port", "eleven"), {}, "SCP_PORT (--scp-port)"),
        ((), {"PEER_CIDRS": "10.0.0.0/8,not-a-network"}, "PEER_CIDRS (--peer-cidrs)"),
        (("--tls-cert-file", "/nonexistent/cert.pem"), {}, "TLS_CERT_FILE (--tls-cert-file)"),
        (("--require-calling-ae-title", "OK,BAD\\AE"), {}, "REQUIRE_CALLING_AE_TITLE"),
        ((), {"BATCH_MAX_INSTANCES": "50001"}, "BATCH_MAX_INSTANCES"),
        ((), {"DIMSE_TIMEOUT": "0"}, "DIMSE_TIMEOUT"),
    ],
)
def test_invalid_configuration_stops_start_up_with_exit_2_and_one_line(args, env, named):
    result = run_scp(*args, env=env)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dicom-store-scp: invalid configuration: ")
    assert named in lines[0]


def test_tls_key_without_certificate_is_refused(tmp_path):
    key = tmp_path / "server.key"
    key.write_text("not really a key")

    with pytest.raises(ConfigError, match="TLS_CERT_FILE"):
        load(["--tls-key-file", str(key)], environ={})


def test_every_variable_has_an_equal_flag_and_flags_win():
    config = load(["--ae-title", "FROM_FLAG", "--dimse-timeout", "5"], environ={"AE_TITLE": "FROM_ENV"})
    assert config.ae_title == "FROM_FLAG"
    assert config.dimse_timeout == 5

    config = load([], environ={"AE_TITLE": "FROM_ENV", "REQUIRE_CALLING_AE_TITLE": "CT01, MR01"})
    assert config.ae_title == "FROM_ENV"
    assert config.require_calling_ae_titles == ("CT01", "MR01")

    flags = {setting.flag for setting in SETTINGS}
    assert len(flags) == len(SETTINGS)
    for setting in SETTINGS:
        assert setting.flag == "--" + setting.env.lower().replace("_", "-")


def test_seed_defaults():
    config = load([], environ={})
    assert (config.port, config.ae_title, config.maximum_associations) == (11112, "STORESCP", 300)
    assert (config.dimse_timeout, config.network_timeout) == (60, 90)
    assert config.require_called_ae_title is False
    assert config.dicom_bucket == ""
    assert str(config.storage_dir) == "storage"
    assert config.shutdown_grace_seconds < 120  # ECS's default stop timeout
    assert config.workers == 0  # one receiving process per available CPU


def test_help_lists_every_variable():
    result = run_scp("--help")
    assert result.returncode == 0
    for setting in SETTINGS:
        assert setting.flag in result.stdout
        assert setting.env in result.stdout


def test_readme_configuration_table_is_the_generated_one():
    assert settings_table() in README.read_text(), "regenerate the README table from config.settings_table()"
