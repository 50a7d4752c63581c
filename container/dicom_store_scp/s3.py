"""The S3 backend: each received instance is uploaded from its spool file, the batch manifest last.

Same layout and manifest as the local folder (docs/contracts.md). A ``store_*`` call returns only after S3
answered success for the object; anything else raises :class:`StorageError`, and the SCP answers a failure
status so the sender retries.

- Integrity: every object goes up with the CRC64NVME computed while it was received (checksum.py), which S3
  checks against the bytes it received and refuses on a mismatch, so the file is not read again for it. A multipart
  upload sends each part's CRC64NVME (botocore computes those) and the whole object's value with the completion:
  CRC64NVME is a full-object checksum in S3, so a large instance is checked against the same value as a small one.
- Memory: bodies are streamed from the spool file, never read whole; above the multipart threshold the transfer
  manager sends parts of a bounded size, a few at a time.
- Time: botocore's standard retry mode with a small attempt count and socket timeouts derived from the DIMSE
  timeout, so a store against a failing endpoint gives up (and the sender hears 0xA700) well before the sender's
  own DIMSE timeout would cut the association. A brown-out (S3 answering in seconds, or 503 SlowDown) is retried
  with jittered backoff inside that bound (``worst_case_store_seconds``), then answered 0xA700: "retry later".
- Credentials come only from botocore's default chain (the ECS task role in the product); nothing here reads,
  logs or passes them. ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` are honoured by botocore itself.
- The spool file is left where it is: pynetdicom removes it once the C-STORE handler has returned, on success
  and failure alike.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from .checksum import of_bytes as checksum_of
from .config import Config
from .metrics import Recorder
from .storage import StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024

# Below this an instance is one PutObject (one round trip, checksum precomputed); above it, a multipart upload.
# Almost every DICOM instance (CT/MR slices, even most DX/MG) is far smaller; whole-volume objects are not.
MULTIPART_THRESHOLD = 16 * MIB
MULTIPART_PART_SIZE = 16 * MIB
# S3 allows at most 10,000 parts per upload; larger objects get larger parts.
_MAX_PARTS = 10_000
# Parts of one instance in flight at once: fills the link for a single huge instance without letting one
# association take the whole connection pool.
MULTIPART_CONCURRENCY = 4

# botocore's standard mode retries throttling (S3's 503 SlowDown among it), 5xx and connection errors, each retry
# after a full-jitter backoff: rand(0, 1) x min(2^i s, 20 s) for throttling, a twentieth of that for the others.
# Not adaptive mode: it also makes a request wait for the client's own send rate to recover, a wait with no bound we
# can set, which would hold an association past its DIMSE timeout. Three attempts in total ride out a blip; a real
# outage is reported to the sender, who retries the instance later. Past a few hundred retries in a row the mode's
# retry quota is spent and further failures are answered at once, until successes refill it.
RETRY_MODE = "standard"
DEFAULT_MAX_ATTEMPTS = 3
_THROTTLING_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 20.0
_CONNECT_TIMEOUT_CAP = 5.0
_READ_TIMEOUT_CAP = 30.0
# The share of an attempt's time given to opening the connection (S3 answers a SYN in milliseconds when it is up).
_CONNECT_SHARE = 0.25

_STORAGE_ERRORS = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    boto3.exceptions.Boto3Error,
    OSError,
)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    sse: str = "AES256"
    kms_key_id: str = ""
    pool_connections: int = 10
    connect_timeout: float = _CONNECT_TIMEOUT_CAP
    read_timeout: float = _READ_TIMEOUT_CAP
    max_attempts: int | None = None
    spool: Path | None = None

    @classmethod
    def from_config(cls, config: Config) -> S3Settings:
        # A failing store costs up to max_attempts * (connect + read timeout) plus the backoffs between them; keep
        # it within half the DIMSE timeout so the failure status reaches the sender before it gives up on us.
        configured = _configured_max_attempts()
        attempts = configured or DEFAULT_MAX_ATTEMPTS
        per_attempt = max(1.0, (config.dimse_timeout / 2 - longest_backoff(attempts)) / attempts)
        return cls(
            bucket=config.dicom_bucket,
            prefix=config.dicom_prefix,
            sse=config.s3_sse,
            kms_key_id=config.s3_kms_key_id,
            # Every association may be uploading at once; a pool smaller than that makes them queue for sockets.
            pool_connections=config.max_pool_connections or config.maximum_associations,
            connect_timeout=min(_CONNECT_TIMEOUT_CAP, per_attempt * _CONNECT_SHARE),
            read_timeout=min(_READ_TIMEOUT_CAP, per_attempt * (1 - _CONNECT_SHARE)),
            max_attempts=None if configured else DEFAULT_MAX_ATTEMPTS,
            spool=Path(config.spool_dir) if config.spool_dir else None,
        )


def longest_backoff(attempts: int) -> float:
    """The most standard mode sleeps between ``attempts`` attempts (throttling: the longest of its backoffs)."""
    return sum(min(_THROTTLING_BACKOFF_BASE * 2**retry, _BACKOFF_CAP) for retry in range(attempts - 1))


def worst_case_store_seconds(settings: S3Settings) -> float:
    """How long one PutObject may take before it fails: every attempt timing out, every backoff at its longest."""
    attempts = settings.max_attempts or _configured_max_attempts() or DEFAULT_MAX_ATTEMPTS
    return attempts * (settings.connect_timeout + settings.read_timeout) + longest_backoff(attempts)


def _configured_max_attempts() -> int | None:
    """AWS_MAX_ATTEMPTS (or max_attempts in the shared config file), which then wins over our default."""
    value = boto3.session.Session()._session.get_config_variable("max_attempts")
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


class S3Storage:
    """Objects in one bucket under ``DICOM_PREFIX``; one client per process, shared by every association."""

    def __init__(self, settings: S3Settings, recorder: Recorder | None = None) -> None:
        self.settings = settings
        self.recorder = recorder or Recorder(enabled=False)
        self._client: S3Client | None = None
        self._client_pid = 0
        self._client_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, recorder: Recorder | None = None) -> S3Storage:
        return cls(S3Settings.from_config(config), recorder)

    def spool_dir(self) -> Path | None:
        # Nothing is renamed into place here, so any local folder will do (None: the system temp dir).
        return self.settings.spool

    def describe(self) -> str:
        return f"s3://{self.settings.bucket}/{self.settings.prefix}"

    # -- the Storage interface ----------------------------------------------------------------------------------

    def store_instance(self, source: Path, key: str, checksum: str) -> None:
        started = time.monotonic()
        try:
            size = source.stat().st_size
            if size < MULTIPART_THRESHOLD:
                with source.open("rb") as body:
                    self._put(key, body, checksum, content_type="application/dicom")
            else:
                self._upload_in_parts(source, key, size, checksum)
        except _STORAGE_ERRORS as error:
            raise StorageError(f"s3://{self.settings.bucket}/{key}: {_describe_error(error)}") from error
        self.recorder.s3_upload(time.monotonic() - started)

    def store_manifest(self, key: str, body: bytes) -> None:
        try:
            self._put(key, body, checksum_of(body), content_type="application/json")
        except _STORAGE_ERRORS as error:
            raise StorageError(f"s3://{self.settings.bucket}/{key}: {_describe_error(error)}") from error

    # -- S3 requests --------------------------------------------------------------------------------------------

    def client(self) -> S3Client:
        """This process's client, made on first use: a client (and its sockets) must not cross a fork."""
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            with self._client_lock:
                if self._client is None or self._client_pid != pid:
                    self._client = self._make_client()
                    self._client_pid = pid
        return self._client

    def _make_client(self) -> S3Client:
        settings = self.settings
        retries: dict[str, Any] = {"mode": RETRY_MODE}
        if settings.max_attempts is not None:
            retries["max_attempts"] = settings.max_attempts
        client_config = botocore.config.Config(
            retries=retries,  # type: ignore[arg-type]
            max_pool_connections=settings.pool_connections,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )
        # A session of our own: boto3's default session is not safe to share between threads.
        session = boto3.session.Session()
        return session.client("s3", config=client_config)

    def _encryption(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.settings.sse}
        if self.settings.sse == "aws:kms" and self.settings.kms_key_id:
            args["SSEKMSKeyId"] = self.settings.kms_key_id
        return args

    def _put(self, key: str, body: Any, crc64nvme: str, content_type: str) -> None:
        self.client().put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            # Given the value, botocore sends it as it is (x-amz-checksum-crc64nvme) instead of computing its own.
            ChecksumAlgorithm="CRC64NVME",
            ChecksumCRC64NVME=crc64nvme,
            **self._encryption(),  # type: ignore[arg-type]
        )

    def _upload_in_parts(self, source: Path, key: str, size: int, crc64nvme: str) -> None:
        part_size = max(MULTIPART_PART_SIZE, -(-size // _MAX_PARTS))
        transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=part_size,
            max_concurrency=MULTIPART_CONCURRENCY,
            # With awscrt installed, boto3 picks its CRT transfer client on instance types it deems optimized: a
            # second HTTP stack outside this client's retry, timeout and pool settings. One road on every host.
            preferred_transfer_client="classic",
        )
        # The transfer manager aborts the multipart upload when a part fails, so no orphaned parts are billed.
        # A full-object checksum in ExtraArgs makes it create the upload as CRC64NVME FULL_OBJECT, checksum each part,
        # and send this value with CompleteMultipartUpload, where S3 checks it against the assembled object.
        self.client().upload_file(
            str(source),
            self.settings.bucket,
            key,
            ExtraArgs={"ContentType": "application/dicom", "ChecksumCRC64NVME": crc64nvme, **self._encryption()},
            Config=transfer,
        )


def _describe_error(error: BaseException) -> str:
    # ClientError carries the S3 error code and message; connection errors name the endpoint. Neither holds
    # credentials, and request headers (which hold the signature) are never part of the text.
    if isinstance(error, boto3.exceptions.S3UploadFailedError) and error.__context__ is not None:
        return _describe_error(error.__context__)
    if isinstance(error, botocore.exceptions.ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'error')}: {details.get('Message', '')}".strip()
    return f"{type(error).__name__}: {error}"
