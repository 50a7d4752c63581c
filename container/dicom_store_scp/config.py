"""Configuration: one table of settings, each an environment variable with an equal command-line flag.

The variable names are those of the seed container so its users can switch without renaming anything.
Flags win over the environment. Invalid configuration stops start-up with exit code 2 and one line that
names the setting.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_store_contract import limits
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
    return tuple(_ae_title(title) for title in _words(value))


def _cidrs(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for word in _words(value):
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ConfigError(f"{word!r} is not a CIDR block such as 10.0.0.0/16") from None
    return tuple(networks)


def _uids(value: str) -> tuple[str, ...]:
    uids = _words(value)
    for uid in uids:
        if not UID(uid).is_valid:
            raise ConfigError(f"{uid!r} is not a valid UID")
    return uids


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
    for word in _words(value):
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


def _not_empty(value: str) -> None:
    if not value:
        raise ConfigError("cannot be empty")


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
        "with DICOM_BUCKET: seconds after a storage commitment request an instance absent from the instance table is"
        " reported as never received",
    ),
    Setting(
        "INSTANCE_TABLE_NAME",
        "instance_table",
        _text,
        "",
        "with DICOM_BUCKET: the stack's instance table: storage commitment reads import outcomes from it, refused"
        " C-STOREs are recorded in it",
    ),
    Setting(
        "COMMITMENT_TABLE_NAME",
        "commitment_table",
        _text,
        "",
        "with DICOM_BUCKET: the table storage commitment transactions are recorded in (both set: SOP class offered)",
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

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def storage_prefix(self) -> str:
        """Key prefix in the store: ``DICOM_PREFIX`` in S3, nothing in a local folder."""
        return self.dicom_prefix if self.dicom_bucket else ""


def settings_table() -> str:
    """The configuration table of the README, generated so it cannot drift from the code."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.env}` | `{setting.flag}` | {default} | {setting.help} |")
    return "\n".join(rows) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-store-scp",
        description="DICOM Store SCP: receives C-STORE and lands every instance durably in a folder or S3.",
        epilog="Every flag has an equal environment variable (shown in brackets); flags win. "
        "'dicom-store-scp status --help': which instances reached HealthImaging.",
    )
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.attr,
            metavar="VALUE",
            default=None,
            help=f"{setting.help} [{setting.env}, default: {setting.default or 'empty'}]",
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
    if values["workers"] < 0:
        raise ConfigError("WORKERS (--workers): must be 0 (one per CPU) or more")
