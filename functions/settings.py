"""Configuration and AWS clients, built once per Lambda process.

Built on first use rather than at import, so tests can start their mocks first; handed to plain functions as
arguments so handlers stay a few lines long.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from dicom_store_contract.layout import normalise_prefix

# Standard mode retries throttling and transient errors with exponential backoff and full jitter; every
# client gets it, so a burst of batches never turns into a burst of failures.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})


@dataclass(frozen=True)
class Settings:
    """The environment variables the template gives the functions (each function gets only those it reads)."""

    job_table_name: str = ""
    instance_table_name: str = ""
    state_machine_arn: str = ""
    datastore_id: str = ""
    data_access_role_arn: str = ""
    dicom_bucket: str = ""
    dicom_prefix: str = ""
    results_bucket: str = ""
    sweep_min_age_minutes: int = 60
    # The stack's audit log group (dicom_store_contract.audit_ingest); empty: no ingest audit messages.
    audit_log_group: str = ""
    region: str = ""
    ingest_mode: str = ""
    ahi_stow_url: str = ""  # StoreBatch: the STOW-RS base URL (the data store's DICOMweb endpoint)

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            job_table_name=env.get("JOB_TABLE_NAME", ""),
            instance_table_name=env.get("INSTANCE_TABLE_NAME", ""),
            state_machine_arn=env.get("STATE_MACHINE_ARN", ""),
            datastore_id=env.get("DATASTORE_ID", ""),
            data_access_role_arn=env.get("DATA_ACCESS_ROLE_ARN", ""),
            dicom_bucket=env.get("DICOM_BUCKET", ""),
            dicom_prefix=normalise_prefix(env.get("DICOM_PREFIX", "")),
            results_bucket=env.get("RESULTS_BUCKET", ""),
            sweep_min_age_minutes=int(env.get("SWEEP_MIN_AGE_MINUTES", "60") or 60),
            audit_log_group=env.get("AUDIT_LOG_GROUP", ""),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION", ""),
            ingest_mode=env.get("INGEST_MODE", ""),
            ahi_stow_url=env.get("AHI_STOW_URL", ""),
        )


@cache
def settings() -> Settings:
    return Settings.from_environment()


def client(service: str) -> Any:
    """One boto3 client per service and process, with standard-mode retries."""
    return _client(service)


@cache
def _client(service: str) -> Any:
    return boto3.client(service, config=RETRY_CONFIG)  # type: ignore[call-overload]


# The audit log group's client: dicom_store_contract.audit_ingest retries throttling itself, within seconds;
# botocore's own retries on top would multiply them past the function's timeout.
AUDIT_LOGS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=5, read_timeout=10)


@cache
def audit_logs() -> Any:
    return boto3.client("logs", config=AUDIT_LOGS_CONFIG)


def reset() -> None:
    """Forget cached settings and clients (tests change the environment and the mocks between cases)."""
    settings.cache_clear()
    _client.cache_clear()
    audit_logs.cache_clear()
