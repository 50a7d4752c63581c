"""The hospital's audit repository: IHE ATNA's Record Audit Event (ITI-20) over syslog with TLS.

Each message is an RFC 5424 syslog message (facility authpriv, severity notice, MSGID ``IHE+RFC-3881``, the XML as
UTF-8 after a byte order mark) sent with RFC 5425's octet-counted framing over TLS, the repository's certificate
checked against ``AUDIT_SYSLOG_CA_FILE`` (and the SCP's own from ``AUDIT_SYSLOG_CERT_FILE`` when it asks for one).

Messages are queued on disk first (one file each, in order), removed once sent: a repository that is down gets
them when it is back, the SCP's restarts included. The queue holds at most ``AUDIT_QUEUE_LIMIT`` messages; beyond
it new messages are dropped, counted in the log and the AuditMessagesDropped metric. A receiver's orderly close is
noticed before the next message is written to its connection; bytes a receiver took into its socket buffer and
never read when it died are beyond what TCP can tell a sender.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import select
import shutil
import socket
import ssl
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .sinks import Sink

LOG = logging.getLogger("dicom_store_scp.audit")

# <PRI>: facility 10 (security/authorization, authpriv) * 8 + severity 5 (notice), as ITI-20 prescribes.
_PRI = 10 * 8 + 5
_APP_NAME = "dicom-store-scp"
_MSGID = "IHE+RFC-3881"
_BOM = "\ufeff"
_SEND_BATCH = 200
_CONNECT_TIMEOUT = 10.0


def parse_url(url: str) -> tuple[str, int]:
    """``tls://host:port`` -> (host, port); raises ValueError naming what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme != "tls":
        raise ValueError(f"{url!r} must start with tls:// (syslog over TLS, RFC 5425)")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"{url!r} is not tls://host:port")
    return parts.hostname, port


def syslog_message(xml: str, when: float | None = None, host: str = "", process: int = 0) -> bytes:
    """One RFC 5424 message carrying one audit message, framed with its octet count (RFC 5425 4.3)."""
    stamp = datetime.fromtimestamp(time.time() if when is None else when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    hostname = (host or socket.gethostname() or "-")[:255].replace(" ", "-")
    body = f"<{_PRI}>1 {stamp} {hostname} {_APP_NAME} {process or os.getpid()} {_MSGID} - {_BOM}{xml}".encode()
    return f"{len(body)} ".encode("ascii") + body


def load_cert_chain_from_text(
    context: ssl.SSLContext, cert_pem: str, key_pem: str, cert_file: Path | None, key_file: Path | None
) -> None:
    """Load a client certificate and key given (either or both) as PEM text.

    Python's ssl module loads a certificate chain from files only: the text goes to files in a private folder
    (0700, its files 0600, named by nobody else), loaded and removed at once, whatever happens.
    """
    folder = tempfile.mkdtemp(prefix="dicom-store-scp-audit-tls-")
    try:
        cert_path = str(cert_file) if cert_file is not None else _private_file(folder, "cert.pem", cert_pem)
        key_path = str(key_file) if key_file is not None else _private_file(folder, "key.pem", key_pem)
        context.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _private_file(folder: str, name: str, text: str) -> str:
    path = os.path.join(folder, name)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)
    return path


class DiskQueue:
    """Messages waiting for the repository: one file each, named by sequence number, in a folder this process locks.

    Each receiving process takes the first ``slot-N`` folder no other live process holds (an exclusive ``flock``),
    so a replaced worker's queue is sent by whichever process takes its slot next.
    """

    def __init__(self, root: Path, limit: int) -> None:
        self.limit = limit
        root.mkdir(parents=True, exist_ok=True)
        slot = 0
        while True:
            folder = root / f"slot-{slot}"
            folder.mkdir(exist_ok=True)
            lock = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                slot += 1
                continue
            break
        self.folder = folder
        self._lock_fd = lock
        names = sorted(entry.name for entry in os.scandir(folder) if entry.name.endswith(".msg"))
        self._names: collections.deque[str] = collections.deque(names)
        self._next = int(names[-1][:-4]) + 1 if names else 0

    def __len__(self) -> int:
        return len(self._names)

    def put(self, data: bytes) -> bool:
        """Keep one message; False (not kept) when the queue is full."""
        if len(self._names) >= self.limit:
            return False
        name = f"{self._next:020d}.msg"
        self._next += 1
        temporary = self.folder / (name + ".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, self.folder / name)  # a message is in the queue whole or not at all
        self._names.append(name)
        return True

    def oldest(self, count: int) -> list[tuple[str, bytes]]:
        found = []
        for name in list(self._names)[:count]:
            try:
                found.append((name, (self.folder / name).read_bytes()))
            except FileNotFoundError:  # removed by hand: nothing to send
                self._names.remove(name)
        return found

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()
        if self._names and self._names[0] == name:
            self._names.popleft()
        else:
            with contextlib.suppress(ValueError):
                self._names.remove(name)

    def close(self) -> None:
        os.close(self._lock_fd)


class SyslogSink(Sink):
    """``AUDIT_SYSLOG_URL``: queued on disk, sent in order over TLS, retried with backoff while the repository is
    down."""

    name = "syslog"

    def __init__(
        self,
        url: str,
        queue: DiskQueue,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        ca_pem: str = "",
        cert_pem: str = "",
        key_pem: str = "",
        **kwargs: Any,
    ) -> None:
        """``*_pem``: the same as the files, as PEM text (AUDIT_SYSLOG_*_PEM, from the task's secrets)."""
        super().__init__(**kwargs)
        self.host, self.port = parse_url(url)
        self.queue = queue
        self.context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None, cadata=ca_pem or None
        )
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_pem or key_pem:
            load_cert_chain_from_text(self.context, cert_pem, key_pem, cert_file, key_file)
        elif cert_file is not None:
            self.context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        self._connection: ssl.SSLSocket | None = None
        self._hostname = socket.gethostname()
        self._pid = os.getpid()
        self._queue_lock = threading.Lock()

    def queued(self) -> int:
        with self._queue_lock:
            return len(self.queue)

    def _persist(self) -> None:
        """Move what the SCP's threads queued in memory to the disk queue (in order)."""
        with self._ready:
            lines = list(self._lines)
            self._lines.clear()
        for moment, line in lines:
            with self._queue_lock:
                kept = self.queue.put(syslog_message(line, moment, self._hostname, self._pid))
            if not kept:
                self._dropped(1)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._ready:
                if not self._lines and not self._stopping and not len(self.queue):
                    self._ready.wait(1.0)
                stopping = self._stopping
            self._persist()
            if not len(self.queue):
                if stopping:
                    break
                continue
            try:
                self._send_some()
            except (OSError, ValueError) as error:
                self._disconnect()
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    LOG.warning(
                        "audit repository unreachable; messages stay queued on disk",
                        extra={
                            "fields": {
                                "event": "audit-retry",
                                "sink": self.name,
                                "repository": f"{self.host}:{self.port}",
                                "queued": len(self.queue),
                                "error": str(error),
                            }
                        },
                    )
                if stopping:
                    break  # what is left stays on disk for the next start
                self._pause(failures)
                continue
            failures = 0
        self._disconnect()
        self.queue.close()

    def _connect(self) -> ssl.SSLSocket:
        if self._connection is not None and not self._closed_by_peer(self._connection):
            return self._connection
        self._disconnect()
        raw = socket.create_connection((self.host, self.port), timeout=_CONNECT_TIMEOUT)
        try:
            connection = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self._connection = connection
        return connection

    @staticmethod
    def _closed_by_peer(connection: ssl.SSLSocket) -> bool:
        """A repository never writes to us (RFC 5425): anything readable is its close (or a TLS alert)."""
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        try:
            connection.setblocking(False)
            return connection.recv(1) == b""
        except ssl.SSLWantReadError:
            return False  # a TLS record that is not data (a session ticket)
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                connection.setblocking(True)
                connection.settimeout(_CONNECT_TIMEOUT)

    def _send_some(self) -> None:
        with self._queue_lock:
            batch = self.queue.oldest(_SEND_BATCH)
        for name, data in batch:
            connection = self._connect()
            connection.sendall(data)
            with self._queue_lock:
                self.queue.remove(name)
            self.delivered += 1

    def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
            self._connection = None
