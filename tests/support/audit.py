"""Audit trail helpers: the DICOM audit message schema, the audit file, and a syslog-over-TLS receiver."""

from __future__ import annotations

import functools
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import rnc2rng
from lxml import etree

SCHEMA = Path(__file__).parent.parent / "container" / "data" / "dicom-audit-message.rnc"


@functools.cache
def schema() -> etree.RelaxNG:
    """PS3.15 A.5.1.1's schema. Its "##" documentation comments sit after the values they describe, where rnc2rng
    does not take annotations: they are read as plain comments (they constrain nothing)."""
    text = SCHEMA.read_text().replace("##", "#")
    grammar = rnc2rng.dumps(rnc2rng.loads(text))
    return etree.RelaxNG(etree.fromstring(grammar.encode()))


def validated(line: str) -> Any:
    """The message parsed, after asserting it is one valid DICOM audit message."""
    message = etree.fromstring(line.encode())
    checker = schema()
    assert checker.validate(message), f"{checker.error_log}\n{line}"
    return message


def read_messages(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [validated(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def wait_for_messages(path: Path, count: int, timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = read_messages(path)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def event_id(message: Any) -> str:
    return str(message.find("EventIdentification/EventID").get("csd-code"))


def of_kind(messages: list[Any], code: str) -> list[Any]:
    return [message for message in messages if event_id(message) == code]


_FRAME = re.compile(rb"^(\d+) ")


class SyslogReceiver:
    """An audit repository stand-in: syslog over TLS (RFC 5425 octet counting), on loopback, stoppable."""

    def __init__(self, cert: Path, key: Path, ca: Path | None = None, port: int = 0) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        if ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(str(ca))
        self.frames: list[bytes] = []
        self.port = port
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(5)
            connection = self.context.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        connection.settimeout(0.2)
        buffer = b""
        with connection:
            while not self._stop.is_set():
                try:
                    chunk = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while True:
                    match = _FRAME.match(buffer)
                    if not match:
                        break
                    length = int(match.group(1))
                    end = match.end() + length
                    if len(buffer) < end:
                        break
                    self.frames.append(buffer[match.end() : end])
                    buffer = buffer[end:]

    def messages(self) -> list[Any]:
        """Each frame's RFC 5424 header checked; its XML validated."""
        found = []
        for frame in self.frames:
            header, bom, xml = frame.partition("\ufeff".encode())
            assert bom, frame[:200]
            fields = header.decode().split(" ")
            assert fields[0] == "<85>1", fields  # authpriv.notice, syslog protocol version 1
            assert fields[3] == "dicom-store-scp" and fields[5] == "IHE+RFC-3881" and fields[6:] == ["-", ""], fields
            found.append(validated(xml.decode()))
        return found

    def wait_for(self, count: int, timeout: float = 20) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages()
