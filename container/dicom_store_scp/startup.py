"""What would stop every receiving process the same way, found once before any starts, and said in one line.

A port in use, a storage folder that cannot be written, TLS files that do not load: with WORKERS > 1 each worker
would hit the same failure in turn (and the supervisor would replace it, again and again). The supervisor, or the one
receiving process, checks them first and stops with EXIT_START_FAILED and one ``start-failed`` line naming the
setting and its value, instead of the operating system's or OpenSSL's words (``[Errno 98]``, ``PEM lib``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

from .config import Config

# Exit status of a receiver (or supervisor) that could not start: port in use, storage not writable, TLS files that
# do not load. Invalid settings exit 2 before this (__main__.EXIT_CANNOT_START).
EXIT_START_FAILED = 1


class StartError(Exception):
    """A start-up failure, with the setting and value it comes from."""

    def __init__(self, setting: str, value: object, reason: str) -> None:
        super().__init__(f"{setting}={value}: {reason}")
        self.setting = setting
        self.value = str(value)
        self.reason = reason

    def fields(self) -> dict[str, Any]:
        return {"event": "start-failed", "setting": self.setting, "value": self.value, "error": str(self)}


def check(config: Config) -> None:
    """Raise :class:`StartError` for what every receiving process would fail on (the port is checked by binding)."""
    if config.dicom_bucket:
        if config.spool_dir:
            _writable_folder("SPOOL_DIR", Path(config.spool_dir))
        else:
            _writable_temp_dir()
    else:
        _writable_folder("STORAGE_DIR", config.storage_dir)
        if config.spool_dir:
            _writable_folder("SPOOL_DIR", Path(config.spool_dir))
    build_tls_context(config)


def _writable_folder(setting: str, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise StartError(setting, folder, "is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartError(setting, folder, f"cannot be created: {_words(error)}") from None
    try:
        # Writing is the only sure test (a read-only file system passes os.access).
        handle, probe = tempfile.mkstemp(prefix=".start-check-", dir=folder)
    except OSError as error:
        raise StartError(setting, folder, f"cannot be written by user {os.getuid()}: {_words(error)}") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _writable_temp_dir() -> None:
    try:
        tempfile.gettempdir()
    except OSError as error:  # no usable temporary folder at all
        raise StartError("TMPDIR", os.environ.get("TMPDIR", "/tmp"), _words(error)) from None
    _writable_folder("TMPDIR", Path(tempfile.gettempdir()))


def _words(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def bind_failure(config: Config, error: OSError) -> StartError:
    """The listening socket could not be bound: which setting to change."""
    if error.errno == errno.EADDRINUSE:
        return StartError(
            "SCP_PORT",
            config.port,
            f"port in use on {config.bind_address} (another program, or another dicom-store-scp, listens on it)",
        )
    if error.errno == errno.EACCES:
        return StartError("SCP_PORT", config.port, "a port below 1024 needs root or CAP_NET_BIND_SERVICE")
    if error.errno == errno.EADDRNOTAVAIL:
        return StartError("BIND_ADDRESS", config.bind_address, "not an address of this host")
    if isinstance(error, OSError) and error.errno is None:  # socket.gaierror and the like
        return StartError("BIND_ADDRESS", config.bind_address, f"cannot listen there: {error}")
    return StartError("SCP_PORT", config.port, f"cannot listen on {config.bind_address}: {_words(error)}")


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # OpenSSL asks for a passphrase on the terminal otherwise: a server must not wait for one.
    raise _EncryptedKey


def build_tls_context(config: Config) -> ssl.SSLContext | None:
    """The server side TLS context, or :class:`StartError` naming the file that does not load."""
    if not config.tls_enabled:
        return None
    assert config.tls_cert_file is not None and config.tls_key_file is not None
    cert, key = config.tls_cert_file, config.tls_key_file
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # Loads only when the file holds a PEM certificate: tells a bad certificate from a bad key below.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=str(cert))
    except (ssl.SSLError, OSError):
        raise StartError("TLS_CERT_FILE", cert, "no PEM certificate in it") from None
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_password)
    except _EncryptedKey:
        raise StartError("TLS_KEY_FILE", key, "encrypted; the SCP takes an unencrypted key") from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise StartError("TLS_KEY_FILE", key, f"not the private key of the certificate in {cert}") from None
        raise StartError("TLS_KEY_FILE", key, "no PEM private key in it") from None
    except OSError as error:
        raise StartError("TLS_KEY_FILE", key, _words(error)) from None
    if config.tls_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(str(config.tls_ca_file))
        except (ssl.SSLError, OSError):
            raise StartError("TLS_CA_FILE", config.tls_ca_file, "no PEM certificate in it") from None
    return context
