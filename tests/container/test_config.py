"""Configuration: the seed container's variable names, an equal flag for each, exit 2 on anything invalid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dicom_store_scp
import pytest
from dicom_store_scp.config import SETTINGS, ConfigError, load, settings_table

README = Path(__file__).parents[2] / "README.md"


def run_scp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_store_scp", *args],
        # This checkout's package, whichever one the interpreter has installed.
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
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
        # Typos that used to be taken as something else (issue 24 item 3).
        ((), {"REQUIRE_CALLING_AE_TITLE": "MODALITY1;PACS1"}, "separate AE titles with commas"),
        ((), {"PEER_CIDRS": "10.0.0.1/8"}, "10.0.0.0/8 is the network, 10.0.0.1/32 the one address"),
        ((), {"PEER_CIDRS": "192.168.1.0/24;10.0.0.0/8"}, "separate networks with commas"),
        ((), {"COMMITMENT_PEERS": "PACS1=10.0.0.5:104;PACS2=10.0.0.6:104"}, "separate peers with commas"),
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


def test_access_lists_in_their_right_form_are_taken():
    config = load([], environ={"REQUIRE_CALLING_AE_TITLE": "MODALITY1, PACS 1", "PEER_CIDRS": "10.0.0.0/8,10.1.2.3"})
    assert config.require_calling_ae_titles == ("MODALITY1", "PACS 1")  # a space is a legal AE title character
    assert [str(network) for network in config.peer_cidrs] == ["10.0.0.0/8", "10.1.2.3/32"]


def test_the_listening_line_shows_who_may_associate(start_scp):
    scp = start_scp(
        "--require-called-ae-title", "--require-calling-ae-title", "MODALITY1,PACS1", "--peer-cidrs", "127.0.0.0/8"
    )
    [listening] = scp.events("listening")
    assert listening["calledAeTitle"] == "STORESCP"
    assert listening["callingAeTitles"] == ["MODALITY1", "PACS1"]
    assert listening["peers"] == ["127.0.0.0/8"]
    assert "STORESCP" in listening["message"] and "MODALITY1" in listening["message"]

    anyone = start_scp()
    [listening] = anyone.events("listening")
    assert (listening["calledAeTitle"], listening["callingAeTitles"], listening["peers"]) == ("any", "any", "any")


def test_a_true_false_flag_alone_means_true_and_still_takes_a_value():
    assert load(["--require-called-ae-title"], environ={}).require_called_ae_title is True
    config = load(["--require-called-ae-title", "--ae-title", "NEXT"], environ={})
    assert (config.require_called_ae_title, config.ae_title) == (True, "NEXT")
    assert (
        load(
            ["--require-called-ae-title", "false"], environ={"REQUIRE_CALLED_AE_TITLE": "true"}
        ).require_called_ae_title
        is False
    )
    assert load(["--metrics-enabled", "no"], environ={}).metrics_enabled is False
    assert load(["--metrics-enabled"], environ={"METRICS_ENABLED": "false"}).metrics_enabled is True


def test_version():
    result = run_scp("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dicom-store-scp {dicom_store_scp.__version__}"


def test_help_says_what_the_program_does_first_and_lists_the_commands():
    lines = run_scp("--help").stdout.splitlines()
    usage = lines[: lines.index("")]
    assert len(usage) <= 4 and usage[0].startswith("usage: dicom-store-scp")
    assert any("status --help" in line for line in usage) and any("preflight --help" in line for line in usage)
    assert any("redrive --help" in line for line in usage)
    assert lines[len(usage) + 1].startswith("DICOM Store SCP for AWS HealthImaging: receives C-STORE")
    text = "\n".join(lines)
    assert text.index("commands:") < text.index("--scp-port")
    for heading in ("listening:", "who may associate:", "where instances go:", "TLS:"):
        assert heading in lines


def test_the_instance_table_flag_has_one_name_everywhere():
    assert load(["--instance-table", "T1"], environ={}).instance_table == "T1"
    assert load(["--instance-table-name", "T2"], environ={}).instance_table == "T2"


PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUSECRET\n-----END CERTIFICATE-----"
SYSLOG = {"AUDIT_SYSLOG_URL": "tls://audit.example:6514"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({**SYSLOG, "AUDIT_SYSLOG_CERT_PEM": PEM}, "a client certificate needs its key"),
        ({**SYSLOG, "AUDIT_SYSLOG_KEY_PEM": PEM}, "a client certificate needs its key"),
        ({"AUDIT_SYSLOG_CA_PEM": PEM}, "AUDIT_SYSLOG_CA_PEM (--audit-syslog-ca-pem): needs AUDIT_SYSLOG_URL"),
        (
            {**SYSLOG, "AUDIT_SYSLOG_KEY_PEM": "hunter2-not-pem"},
            "AUDIT_SYSLOG_KEY_PEM (--audit-syslog-key-pem): not PEM",
        ),
    ],
)
def test_audit_syslog_pem_settings_are_checked_without_showing_them(env, named):
    with pytest.raises(ConfigError) as refused:
        load([], env)
    assert named in str(refused.value)
    assert "SECRET" not in str(refused.value) and "hunter2" not in str(refused.value)


def test_a_pem_and_a_file_for_the_same_thing_are_refused(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    with pytest.raises(ConfigError, match="give AUDIT_SYSLOG_CA_FILE or AUDIT_SYSLOG_CA_PEM, not both"):
        load([], {**SYSLOG, "AUDIT_SYSLOG_CA_FILE": str(ca), "AUDIT_SYSLOG_CA_PEM": PEM})


def test_pem_values_stay_out_of_the_configurations_repr():
    config = load([], {**SYSLOG, "AUDIT_SYSLOG_CA_PEM": PEM, "AUDIT_SYSLOG_CERT_PEM": PEM, "AUDIT_SYSLOG_KEY_PEM": PEM})
    assert config.audit_syslog_key_pem == PEM + "\n"
    assert "SECRET" not in repr(config)
