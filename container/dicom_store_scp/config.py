"""Configuration: one table of settings, each an environment variable with an equal command-line flag.

The variable names are those of the seed container so its users can switch without renaming anything.
Flags win over the environment. Invalid configuration stops start-up with exit code 2 and one line that
names the setting.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_store_contract import ingest, layout, limits
from dicom_store_contract.layout import normalise_prefix
from pydicom.uid import UID


class ConfigError(ValueError):
    """A setting has a value the SCP cannot run with."""


def _text(value: str) -> str:
    return value.strip()


def _integer(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"{value!r} is not a whole number") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        raise ConfigError(f"{value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"{value!r} must be more than 0 seconds")
    return seconds


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{value!r} is not true or false")


def _words(value: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in value.split(",") if word.strip())


def _list_of(value: str, what: str) -> tuple[str, ...]:
    """A comma list; a semicolon is the usual typo for a comma and would join two entries into one."""
    if ";" in value:
        raise ConfigError(f"{value.strip()!r} holds ';': separate {what} with commas")
    return _words(value)


def _ae_title(value: str) -> str:
    # PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash or control characters,
    # leading/trailing spaces not significant.
    title = value.strip()
    if not title:
        raise ConfigError("an AE title cannot be empty")
    if len(title) > 16:
        raise ConfigError(f"{title!r} is longer than 16 characters")
    if "\\" in title or any(ord(c) < 0x20 or ord(c) > 0x7E for c in title):
        raise ConfigError(f"{title!r} has a character an AE title may not hold")
    return title


def _ae_titles(value: str) -> tuple[str, ...]:
    return tuple(_ae_title(title) for title in _list_of(value, "AE titles"))


def _cidrs(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for word in _list_of(value, "networks"):
        try:
            networks.append(ipaddress.ip_network(word))
        except ValueError:
            try:
                network = ipaddress.ip_network(word, strict=False)
            except ValueError:
                raise ConfigError(f"{word!r} is not a CIDR block such as 10.0.0.0/16") from None
            # 10.0.0.1/8: the network 10.0.0.0/8, or the one address 10.0.0.1? Widening it silently would admit
            # sixteen million addresses where one was meant.
            address = word.partition("/")[0]
            single = f"{address}/{network.max_prefixlen}"
            raise ConfigError(
                f"{word!r} has host bits set: {network} is the network, {single} the one address"
            ) from None
    return tuple(networks)


def _uids(value: str) -> tuple[str, ...]:
    uids = _words(value)
    for uid in uids:
        if not UID(uid).is_valid:
            raise ConfigError(f"{uid!r} is not a valid UID")
    return uids


def _pem(value: str) -> str:
    """PEM text given in the environment (a secret the task definition injects); errors never quote it."""
    text = value.strip()
    if text and "-----BEGIN " not in text:
        raise ConfigError("not PEM text (no -----BEGIN line); the value is not shown")
    return text + "\n" if text else ""


def _existing_file(value: str) -> Path | None:
    if not value.strip():
        return None
    path = Path(value.strip())
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(f"{value!r} is not a readable file")
    return path


def _path(value: str) -> Path:
    return Path(value.strip())


def _peers(value: str) -> tuple[tuple[str, str, int], ...]:
    """``AE=host:port,...``: where each calling AE title takes storage commitment reports on a new association."""
    peers = []
    for word in _list_of(value, "peers"):
        title, equals, address = word.partition("=")
        host, colon, port = address.strip().rpartition(":")
        if not (equals and colon and host and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"{word!r} is not AE=host:port")
        peers.append((_ae_title(title), host.strip("[]"), int(port)))
    return tuple(peers)


@dataclass(frozen=True)
class Setting:
    """One row of the configuration table."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    default: str
    help: str
    check: Callable[[Any], None] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")


def _port_range(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{port} is not a TCP port (1-65535)")


def _at_least(minimum: int) -> Callable[[int], None]:
    def check(value: int) -> None:
        if value < minimum:
            raise ConfigError(f"{value} is less than {minimum}")

    return check


# What MAXIMUM_PDU_SIZE=0 (PS3.8's "no limit") stands for: memory must not depend on what a peer sends, so the SCP
# announces and enforces this instead (protocol.receive_pdu_size).
PDU_SIZE_FOR_NO_LIMIT = 1024 * 1024


def _pdu_size(size: int) -> None:
    floor, ceiling = limits.PDU_SIZE_FLOOR.whole, limits.PDU_SIZE_CEILING.whole
    if size != 0 and not floor <= size <= ceiling:
        raise ConfigError(f"{size} must be 0 ({PDU_SIZE_FOR_NO_LIMIT} bytes) or between {floor} and {ceiling}")


# A batch is one import job: it stays within AHI's files and bytes per job.
def _batch_instances(value: int) -> None:
    # The default is AHI's default quota; a customer whose quota was raised may go up to the ceiling.
    most = limits.BATCH_MAX_INSTANCES_CEILING.whole
    if not 1 <= value <= most:
        raise ConfigError(f"{value} must be between 1 and {most} (set it to your files-per-import-job quota)")


def _batch_bytes(value: int) -> None:
    most = limits.BYTES_PER_IMPORT_JOB.whole
    if not 1 <= value <= most:
        raise ConfigError(f"{value} must be between 1 and {most} (AHI's bytes per import job)")


def _instance_bytes(value: int) -> None:
    most = limits.BYTES_PER_FILE.whole
    if not 1 <= value <= most:
        raise ConfigError(f"{value} must be between 1 and {most} (AHI's bytes per file)")


def _sse(value: str) -> None:
    if value not in {"AES256", "aws:kms"}:
        raise ConfigError(f"{value!r} must be AES256 or aws:kms")


def _log_level(value: str) -> None:
    if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{value!r} must be DEBUG, INFO, WARNING or ERROR")


def _ingest_mode(value: str) -> None:
    if value not in ingest.MODES:
        raise ConfigError(f"{value!r} must be {', '.join(ingest.MODES[:-1])} or {ingest.MODES[-1]}")


def _lower(value: str) -> str:
    return value.strip().lower()


def _http_url(value: str) -> None:
    if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ConfigError(f"{value!r} is not an http(s) URL without query or fragment")


def _datastore_id(value: str) -> None:
    # AWS HealthImaging data store ids: 32 characters of [0-9a-z] (its API reference's pattern).
    if value and not re.fullmatch(r"[0-9a-z]{32}", value):
        raise ConfigError(f"{value!r} is not a data store id (32 lowercase letters and digits)")


def _not_empty(value: str) -> None:
    if not value:
        raise ConfigError("cannot be empty")


def _syslog_url(value: str) -> None:
    if value:
        from .audit.syslog import parse_url

        try:
            parse_url(value)
        except ValueError as error:
            raise ConfigError(str(error)) from None


# The audit trail (audit/): DICOM audit messages to a file, a CloudWatch Logs group, the hospital's ATNA repository.
AUDIT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "AUDIT_FILE", "audit_file", _text, "", "file DICOM audit messages are appended to, one per line (empty: none)"
    ),
    Setting(
        "AUDIT_LOG_GROUP",
        "audit_log_group",
        _text,
        "",
        "CloudWatch Logs group DICOM audit messages are written to, one per event (empty: none)",
    ),
    Setting(
        "AUDIT_SYSLOG_URL",
        "audit_syslog_url",
        _text,
        "",
        "tls://host:port of the audit repository (IHE ATNA: syslog over TLS, RFC 5424/5425; empty: none)",
        _syslog_url,
    ),
    Setting(
        "AUDIT_SYSLOG_CA_FILE",
        "audit_syslog_ca_file",
        _existing_file,
        "",
        "PEM CA bundle the audit repository's certificate is checked with (empty: the system's)",
    ),
    Setting(
        "AUDIT_SYSLOG_CERT_FILE",
        "audit_syslog_cert_file",
        _existing_file,
        "",
        "PEM client certificate presented to the audit repository (empty: none)",
    ),
    Setting("AUDIT_SYSLOG_KEY_FILE", "audit_syslog_key_file", _existing_file, "", "PEM key of AUDIT_SYSLOG_CERT_FILE"),
    # The same three as PEM text, for a task whose secrets arrive as environment variables (ECS ``Secrets``, from
    # Secrets Manager): loaded from memory (the CA) or a private temporary file removed at once; never logged.
    Setting(
        "AUDIT_SYSLOG_CA_PEM",
        "audit_syslog_ca_pem",
        _pem,
        "",
        "the audit repository's CA bundle as PEM text (instead of AUDIT_SYSLOG_CA_FILE)",
    ),
    Setting(
        "AUDIT_SYSLOG_CERT_PEM",
        "audit_syslog_cert_pem",
        _pem,
        "",
        "the client certificate as PEM text (instead of AUDIT_SYSLOG_CERT_FILE)",
    ),
    Setting(
        "AUDIT_SYSLOG_KEY_PEM",
        "audit_syslog_key_pem",
        _pem,
        "",
        "the client certificate's key as PEM text (instead of AUDIT_SYSLOG_KEY_FILE; never logged)",
    ),
    Setting(
        "AUDIT_QUEUE_DIR",
        "audit_queue_dir",
        _text,
        "",
        "where messages wait for the audit repository (empty: a folder in the system temp dir)",
    ),
    Setting(
        "AUDIT_QUEUE_LIMIT",
        "audit_queue_limit",
        _integer,
        "100000",
        "messages kept while the audit repository is unreachable; newer ones are dropped and counted",
        _at_least(1),
    ),
    Setting("AUDIT_SOURCE_ID", "audit_source_id", _text, "", "AuditSourceID of the messages (empty: AE_TITLE)"),
    Setting("AUDIT_SITE_ID", "audit_site_id", _text, "", "AuditEnterpriseSiteID of the messages (empty: none)"),
    Setting(
        "AUDIT_STUDIES_PER_ASSOCIATION",
        "audit_studies_per_association",
        _integer,
        "1000",
        "studies an association's audit record holds; at more, those so far are reported (bounds memory)",
        _at_least(1),
    ),
)

SETTINGS: tuple[Setting, ...] = (
    Setting("SCP_PORT", "port", _integer, "11112", "TCP port to listen on", _port_range),
    Setting("BIND_ADDRESS", "bind_address", _text, "0.0.0.0", "address to listen on"),
    Setting("AE_TITLE", "ae_title", _ae_title, "STORESCP", "this SCP's AE title"),
    Setting(
        "REQUIRE_CALLED_AE_TITLE",
        "require_called_ae_title",
        _boolean,
        "false",
        "reject associations whose called AE title is not AE_TITLE",
    ),
    Setting(
        "REQUIRE_CALLING_AE_TITLE",
        "require_calling_ae_titles",
        _ae_titles,
        "",
        "comma list of calling AE titles allowed to associate (empty: any)",
    ),
    Setting("PEER_CIDRS", "peer_cidrs", _cidrs, "", "comma list of networks peers may connect from (empty: any)"),
    Setting("DIMSE_TIMEOUT", "dimse_timeout", _seconds, "60", "seconds to wait for a DIMSE message"),
    Setting("NETWORK_TIMEOUT", "network_timeout", _seconds, "90", "seconds a silent connection is kept"),
    Setting("ACSE_TIMEOUT", "acse_timeout", _seconds, "30", "seconds to wait for association messages"),
    Setting(
        "MAXIMUM_ASSOCIATIONS",
        "maximum_associations",
        _integer,
        "300",
        "concurrent associations; more are rejected (local limit exceeded)",
        _at_least(1),
    ),
    Setting(
        "MAXIMUM_PDU_SIZE",
        "maximum_pdu_size",
        _integer,
        str(limits.MAXIMUM_PDU_SIZE.whole),
        f"largest PDU accepted, bytes (0: {PDU_SIZE_FOR_NO_LIMIT // 1024**2} MiB); a longer one is aborted; bounds"
        " memory per association",
        _pdu_size,
    ),
    Setting(
        "SUPPORTED_SOP_CLASS_UIDS",
        "supported_sop_class_uids",
        _uids,
        "",
        "comma list of storage SOP class UIDs to accept (empty: every storage class)",
    ),
    Setting("LOG_LEVEL", "log_level", _text, "INFO", "DEBUG, INFO, WARNING or ERROR", _log_level),
    Setting(
        "METRICS_ENABLED",
        "metrics_enabled",
        _boolean,
        "true",
        "write CloudWatch embedded-metric-format lines and a summary line to standard error every METRICS_INTERVAL",
    ),
    Setting(
        "METRICS_INTERVAL",
        "metrics_interval",
        _seconds,
        "60",
        "seconds of activity each metrics record sums up (aligned to the clock; flushed at shutdown too)",
    ),
    Setting(
        "METRICS_SERVICE",
        "metrics_service",
        _text,
        "dicom-store-scp",
        "value of the metrics' service dimension (the stack name in the product)",
        _not_empty,
    ),
    Setting("STORAGE_DIR", "storage_dir", _path, "./storage", "local store, used when DICOM_BUCKET is empty"),
    Setting("DICOM_BUCKET", "dicom_bucket", _text, "", "S3 bucket to store into (selects the S3 backend)"),
    Setting("DICOM_PREFIX", "dicom_prefix", normalise_prefix, "", "key prefix inside DICOM_BUCKET"),
    Setting("S3_SSE", "s3_sse", _text, "AES256", "S3 server-side encryption: AES256 or aws:kms", _sse),
    Setting("S3_KMS_KEY_ID", "s3_kms_key_id", _text, "", "KMS key for aws:kms (empty: the bucket's default)"),
    Setting(
        "MAX_POOL_CONNECTIONS",
        "max_pool_connections",
        _integer,
        "0",
        "S3 connection pool size (0: sized to the association limit)",
        _at_least(0),
    ),
    Setting(
        "INGEST_MODE",
        "ingest_mode",
        _lower,
        ingest.DEFAULT,
        "import: success once stored (S3 or STORAGE_DIR), then import jobs; stow: success only once AWS HealthImaging's"
        " STOW-RS response lists the instance as stored; stow-batched: success once stored in DICOM_BUCKET, as import,"
        " then the workflow stores the batch by STOW-RS instead of an import job",
        _ingest_mode,
    ),
    Setting(
        "AHI_STOW_URL",
        "ahi_stow_url",
        _text,
        "",
        "with INGEST_MODE=stow: the STOW-RS base URL, instances go to <url>/studies (empty: the region's AWS"
        " HealthImaging DICOMweb endpoint and /datastore/DATASTORE_ID)",
        _http_url,
    ),
    Setting("DATASTORE_ID", "datastore_id", _text, "", "the AWS HealthImaging data store id", _datastore_id),
    Setting(
        "STOW_KEEP_S3_COPY",
        "stow_keep_s3_copy",
        _boolean,
        "false",
        "with INGEST_MODE=stow: also keep every stored instance in the store (DICOM_BUCKET, else STORAGE_DIR) under"
        " stowed/, where no import job reads it",
    ),
    Setting(
        "SPOOL_DIR",
        "spool_dir",
        _text,
        "",
        "where instances are streamed while received (empty: inside STORAGE_DIR, else the system temp dir)",
    ),
    Setting(
        "BATCH_MAX_INSTANCES",
        "batch_max_instances",
        _integer,
        str(limits.BATCH_MAX_INSTANCES.whole),
        "instances per batch (one import job) before a new batch starts; AHI's default quota, raise it only with yours",
        _batch_instances,
    ),
    Setting(
        "BATCH_MAX_BYTES",
        "batch_max_bytes",
        _integer,
        str(limits.BATCH_MAX_BYTES.whole),
        "bytes per batch before a new batch starts",
        _batch_bytes,
    ),
    Setting(
        "MAXIMUM_INSTANCE_BYTES",
        "maximum_instance_bytes",
        _integer,
        str(limits.BYTES_PER_FILE.whole),
        "largest data set accepted; a larger one is refused while it arrives (at most AHI's bytes per file)",
        _instance_bytes,
    ),
    Setting(
        "SHUTDOWN_GRACE_SECONDS",
        "shutdown_grace_seconds",
        _seconds,
        "100",
        "on SIGTERM, how long running associations may finish (keep below ECS's 120 s stop timeout)",
    ),
    Setting(
        "COMMITMENT_PEERS",
        "commitment_peers",
        _peers,
        "",
        "comma list of AE=host:port: where storage commitment reports go once the requesting association has closed",
    ),
    Setting(
        "COMMITMENT_REPORT_TIMEOUT",
        "commitment_report_timeout",
        _seconds,
        "3600",
        "seconds a storage commitment report is retried (with backoff) before it is given up",
    ),
    Setting(
        "COMMITMENT_MISSING_SECONDS",
        "commitment_missing_seconds",
        _seconds,
        "900",
        "with DICOM_BUCKET or INGEST_MODE=stow: seconds after a storage commitment request an instance with no outcome"
        " recorded (in the instance table; in stow mode without one, under STORAGE_DIR) is reported as never received",
    ),
    Setting(
        "INSTANCE_TABLE_NAME",
        "instance_table",
        _text,
        "",
        "with DICOM_BUCKET or INGEST_MODE=stow: the stack's instance table: storage commitment reads outcomes from"
        " it, refused C-STOREs are recorded in it (and in stow mode what HealthImaging answered)",
    ),
    Setting(
        "COMMITMENT_TABLE_NAME",
        "commitment_table",
        _text,
        "",
        "with DICOM_BUCKET or INGEST_MODE=stow: the table storage commitment transactions are recorded in (both set:"
        " SOP class offered; in stow mode without INSTANCE_TABLE_NAME and DICOM_BUCKET, offered from STORAGE_DIR)",
    ),
    Setting("WORKERS", "workers", _integer, "0", "receiving processes sharing the port (0: one per available CPU)"),
    Setting("TLS_CERT_FILE", "tls_cert_file", _existing_file, "", "PEM certificate (chain): enables TLS"),
    Setting("TLS_KEY_FILE", "tls_key_file", _existing_file, "", "PEM private key of TLS_CERT_FILE"),
    Setting(
        "TLS_CA_FILE",
        "tls_ca_file",
        _existing_file,
        "",
        "PEM CA bundle: when set, peers must present a certificate it signed",
    ),
    *AUDIT_SETTINGS,
)


@dataclass(frozen=True)
class Config:
    port: int = 11112
    bind_address: str = "0.0.0.0"
    ae_title: str = "STORESCP"
    require_called_ae_title: bool = False
    require_calling_ae_titles: tuple[str, ...] = ()
    peer_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    dimse_timeout: float = 60
    network_timeout: float = 90
    acse_timeout: float = 30
    maximum_associations: int = 300
    maximum_pdu_size: int = limits.MAXIMUM_PDU_SIZE.whole
    supported_sop_class_uids: tuple[str, ...] = ()
    log_level: str = "INFO"
    metrics_enabled: bool = True
    metrics_interval: float = 60
    metrics_service: str = "dicom-store-scp"
    storage_dir: Path = field(default_factory=lambda: Path("./storage"))
    dicom_bucket: str = ""
    dicom_prefix: str = ""
    s3_sse: str = "AES256"
    s3_kms_key_id: str = ""
    max_pool_connections: int = 0
    ingest_mode: str = ingest.DEFAULT
    ahi_stow_url: str = ""
    datastore_id: str = ""
    stow_keep_s3_copy: bool = False
    spool_dir: str = ""
    batch_max_instances: int = limits.BATCH_MAX_INSTANCES.whole
    batch_max_bytes: int = limits.BATCH_MAX_BYTES.whole
    maximum_instance_bytes: int = limits.BYTES_PER_FILE.whole
    shutdown_grace_seconds: float = 100
    commitment_peers: tuple[tuple[str, str, int], ...] = ()
    commitment_report_timeout: float = 3600
    commitment_missing_seconds: float = 900
    instance_table: str = ""
    commitment_table: str = ""
    workers: int = 0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    audit_file: str = ""
    audit_log_group: str = ""
    audit_syslog_url: str = ""
    audit_syslog_ca_file: Path | None = None
    audit_syslog_cert_file: Path | None = None
    audit_syslog_key_file: Path | None = None
    # Secrets: kept out of the configuration's repr (and so out of any log line or traceback that shows it).
    audit_syslog_ca_pem: str = field(default="", repr=False)
    audit_syslog_cert_pem: str = field(default="", repr=False)
    audit_syslog_key_pem: str = field(default="", repr=False)
    audit_queue_dir: str = ""
    audit_queue_limit: int = 100000
    audit_source_id: str = ""
    audit_site_id: str = ""
    audit_studies_per_association: int = 1000

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def storage_prefix(self) -> str:
        """Key prefix in the store: ``DICOM_PREFIX`` in S3, nothing in a local folder; in stow mode, under
        ``stowed/`` (layout.STOWED), out of the import's way."""
        prefix = self.dicom_prefix if self.dicom_bucket else ""
        return prefix + layout.STOWED if self.ingest_mode == ingest.STOW else prefix

    @property
    def instance_byte_limit(self) -> int:
        """The largest data set received: MAXIMUM_INSTANCE_BYTES, and in stow mode what one StoreDICOM request
        takes with its multipart framing (a few hundred bytes; 64 KiB kept for it)."""
        if self.ingest_mode == ingest.STOW:
            return min(self.maximum_instance_bytes, limits.BYTES_PER_STOW_REQUEST.whole - 64 * 1024)
        return self.maximum_instance_bytes


def settings_table() -> str:
    """The configuration table of the README, generated so it cannot drift from the code."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.env}` | `{setting.flag}` | {default} | {setting.help} |")
    return "\n".join(rows) + "\n"


# --help shows the settings in these groups, in this order (a setting in none is listed under "other").
HELP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("listening", ("SCP_PORT", "BIND_ADDRESS", "AE_TITLE", "WORKERS")),
    ("who may associate", ("REQUIRE_CALLED_AE_TITLE", "REQUIRE_CALLING_AE_TITLE", "PEER_CIDRS")),
    (
        "limits and timeouts",
        (
            "MAXIMUM_ASSOCIATIONS",
            "MAXIMUM_PDU_SIZE",
            "MAXIMUM_INSTANCE_BYTES",
            "SUPPORTED_SOP_CLASS_UIDS",
            "DIMSE_TIMEOUT",
            "NETWORK_TIMEOUT",
            "ACSE_TIMEOUT",
            "SHUTDOWN_GRACE_SECONDS",
        ),
    ),
    ("where instances go", ("STORAGE_DIR", "SPOOL_DIR", "BATCH_MAX_INSTANCES", "BATCH_MAX_BYTES")),
    ("ingest mode", ("INGEST_MODE", "AHI_STOW_URL", "DATASTORE_ID", "STOW_KEEP_S3_COPY")),
    ("Amazon S3", ("DICOM_BUCKET", "DICOM_PREFIX", "S3_SSE", "S3_KMS_KEY_ID", "MAX_POOL_CONNECTIONS")),
    (
        "storage commitment",
        (
            "COMMITMENT_PEERS",
            "COMMITMENT_REPORT_TIMEOUT",
            "COMMITMENT_MISSING_SECONDS",
            "INSTANCE_TABLE_NAME",
            "COMMITMENT_TABLE_NAME",
        ),
    ),
    ("TLS", ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")),
    ("logs and metrics", ("LOG_LEVEL", "METRICS_ENABLED", "METRICS_INTERVAL", "METRICS_SERVICE")),
    (
        "audit trail",
        (
            "AUDIT_FILE",
            "AUDIT_LOG_GROUP",
            "AUDIT_SYSLOG_URL",
            "AUDIT_SYSLOG_CA_FILE",
            "AUDIT_SYSLOG_CERT_FILE",
            "AUDIT_SYSLOG_KEY_FILE",
            "AUDIT_QUEUE_DIR",
            "AUDIT_QUEUE_LIMIT",
            "AUDIT_STUDIES_PER_ASSOCIATION",
            "AUDIT_SOURCE_ID",
            "AUDIT_SITE_ID",
        ),
    ),
)

# Other spellings a flag is accepted under (the status command's, say); --help and the README show the first.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {"INSTANCE_TABLE_NAME": ("--instance-table",)}

_USAGE = """dicom-store-scp [--OPTION VALUE ...]      receive and store (the default)
       dicom-store-scp status --help             did these instances reach HealthImaging?
       dicom-store-scp preflight --help          check an AWS account before launching
       dicom-store-scp redrive --help            start again the batches that ended without importing"""

_DESCRIPTION = (
    "DICOM Store SCP for AWS HealthImaging: receives C-STORE over DIMSE on SCP_PORT and lands every instance\n"
    "durably in a local folder (STORAGE_DIR, the default) or in Amazon S3 (DICOM_BUCKET), one batch per association.\n"
    "\n"
    """commands:
  (none)     receive and store until SIGTERM or Ctrl-C
  status     which instances of a study, series or batch reached HealthImaging
  preflight  check an AWS account before launching the stack
  redrive    start again the batches whose import workflow ended without importing"""
)

_EPILOG = """Every option has an equal environment variable (in brackets); options win. A true/false option given alone
means true. Exit status: 0 stopped by a signal, 1 could not start (port in use, storage, TLS files), 2 invalid
configuration, 3 workers kept dying at start-up."""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dicom-store-scp",
        usage=_USAGE,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dicom-store-scp {__version__}")
    by_env = {setting.env: setting for setting in SETTINGS}
    grouped = [(title, [by_env[env] for env in envs if env in by_env]) for title, envs in HELP_GROUPS]
    seen = {setting.env for _, settings in grouped for setting in settings}
    grouped.append(("other", [setting for setting in SETTINGS if setting.env not in seen]))
    for title, settings in grouped:
        if not settings:
            continue
        group = parser.add_argument_group(title)
        for setting in settings:
            default = setting.default or "empty"
            extra: dict[str, Any] = {"metavar": "VALUE"}
            if setting.parse is _boolean:
                # `--require-called-ae-title` alone means true; `--require-called-ae-title false` still works.
                extra = {"metavar": "true|false", "nargs": "?", "const": "true"}
            group.add_argument(
                setting.flag,
                *FLAG_ALIASES.get(setting.env, ()),
                dest=setting.attr,
                default=None,
                help=f"{setting.help} [{setting.env}, default: {default}]",
                **extra,
            )
    return parser


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read flags (first) and environment (second) into a checked :class:`Config`.

    Raises :class:`ConfigError` with a message naming the setting; argparse exits on unknown flags.
    """
    environ = os.environ if environ is None else environ
    flags = _parser().parse_args(argv)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(flags, setting.attr)
        if raw is None:
            raw = environ.get(setting.env, setting.default)
        try:
            value = setting.parse(raw)
            if setting.check is not None:
                setting.check(value)
        except ConfigError as error:
            raise ConfigError(f"{setting.env} ({setting.flag}): {error}") from None
        values[setting.attr] = value
    _check_together(values)
    return Config(**values)


def _check_together(values: dict[str, Any]) -> None:
    cert, key = values["tls_cert_file"], values["tls_key_file"]
    if (cert is None) != (key is None):
        missing = "TLS_KEY_FILE (--tls-key-file)" if key is None else "TLS_CERT_FILE (--tls-cert-file)"
        raise ConfigError(f"{missing}: TLS needs both a certificate and its key")
    if values["tls_ca_file"] is not None and cert is None:
        raise ConfigError("TLS_CA_FILE (--tls-ca-file): client verification needs TLS_CERT_FILE as well")
    if values["s3_kms_key_id"] and values["s3_sse"] != "aws:kms":
        raise ConfigError("S3_KMS_KEY_ID (--s3-kms-key-id): a KMS key needs S3_SSE=aws:kms")
    if values["ingest_mode"] == ingest.STOW and not (values["ahi_stow_url"] or values["datastore_id"]):
        raise ConfigError("INGEST_MODE (--ingest-mode): stow needs DATASTORE_ID (or AHI_STOW_URL)")
    if values["ingest_mode"] == ingest.STOW_BATCHED and not values["dicom_bucket"]:
        # The workflow stores the batch from S3: a local folder has no workflow to take it.
        raise ConfigError("INGEST_MODE (--ingest-mode): stow-batched needs DICOM_BUCKET (the workflow reads S3)")
    if values["workers"] < 0:
        raise ConfigError("WORKERS (--workers): must be 0 (one per CPU) or more")
    _check_audit(values)


def _check_audit(values: dict[str, Any]) -> None:
    for what in ("ca", "cert", "key"):
        if values[f"audit_syslog_{what}_file"] is not None and values[f"audit_syslog_{what}_pem"]:
            file, pem = f"AUDIT_SYSLOG_{what.upper()}_FILE", f"AUDIT_SYSLOG_{what.upper()}_PEM"
            raise ConfigError(f"{pem} (--{pem.lower().replace('_', '-')}): give {file} or {pem}, not both")
    cert = values["audit_syslog_cert_file"] is not None or bool(values["audit_syslog_cert_pem"])
    key = values["audit_syslog_key_file"] is not None or bool(values["audit_syslog_key_pem"])
    if cert != key:
        missing = "AUDIT_SYSLOG_KEY_FILE" if not key else "AUDIT_SYSLOG_CERT_FILE"
        raise ConfigError(
            f"{missing} (--{missing.lower().replace('_', '-')}) or its _PEM form: a client certificate needs its key"
        )
    if not values["audit_syslog_url"]:
        for name in ("audit_syslog_ca_file", "audit_syslog_cert_file", "audit_syslog_ca_pem", "audit_syslog_cert_pem"):
            if values[name]:
                env = name.upper()
                raise ConfigError(f"{env} (--{name.replace('_', '-')}): needs AUDIT_SYSLOG_URL")
