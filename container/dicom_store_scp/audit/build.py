"""The audit trail as the configuration asks for it (None when no destination is set)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from .sinks import FileSink, LogGroupSink, Sink
from .syslog import DiskQueue, SyslogSink
from .trail import AuditTrail


def queue_folder(config: Config) -> Path:
    return (
        Path(config.audit_queue_dir)
        if config.audit_queue_dir
        else Path(tempfile.gettempdir()) / "dicom-store-scp-audit"
    )


def build_trail(config: Config, on_drop: Callable[[str, int], None] | None = None) -> AuditTrail | None:
    sinks: list[Sink] = []
    if config.audit_file:
        sinks.append(FileSink(Path(config.audit_file), on_drop=on_drop))
    if config.audit_log_group:
        sinks.append(LogGroupSink(config.audit_log_group, on_drop=on_drop))
    if config.audit_syslog_url:
        sinks.append(
            SyslogSink(
                config.audit_syslog_url,
                DiskQueue(queue_folder(config), config.audit_queue_limit),
                ca_file=config.audit_syslog_ca_file,
                cert_file=config.audit_syslog_cert_file,
                key_file=config.audit_syslog_key_file,
                ca_pem=config.audit_syslog_ca_pem,
                cert_pem=config.audit_syslog_cert_pem,
                key_pem=config.audit_syslog_key_pem,
                on_drop=on_drop,
            )
        )
    if not sinks:
        return None
    return AuditTrail(
        sinks,
        config.ae_title,
        source_id=config.audit_source_id,
        enterprise_site_id=config.audit_site_id,
        studies_per_association=config.audit_studies_per_association,
    )
