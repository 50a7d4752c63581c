"""A loopback stand-in for AWS HealthImaging's StoreDICOM (``POST .../datastore/<id>/studies``), as its developer
guide and PS3.18 describe it.

It checks what the real service needs of a request (SigV4 with service ``medical-imaging``, the payload's SHA-256 in
``x-amz-content-sha256`` matching the body, ``multipart/related; type="application/dicom"`` with a boundary,
``Accept: application/dicom+json``), holds each part it stores by SOP Instance UID, and answers with a PS3.18 JSON
response (Referenced SOP Sequence with a Retrieve URL naming the image set, or Failed SOP Sequence with a Failure
Reason). Each request takes the next behaviour of ``script`` (then ``default``):

- ``"store"``: store every part, 200;
- ``"fail:<hex reason>"``: store nothing, 409 listing every part as failed with that Failure Reason;
- ``"unlisted"``: store nothing, 200 with a response that lists nothing;
- ``"http:<status>"``: store nothing, that status with an AWS JSON error body (400, 403, 413, 429, 503 ...);
- ``"slow:<seconds>"``: store, then wait that long before answering 200;
- ``"drop"``: read the request, store nothing, close the connection without an answer.

With ``streaming`` set, a request's body is read piece by piece and never held: each part's size and SHA-256 are
kept (``digests``, by SOP Instance UID) instead of its bytes (``held`` stays empty), so a 1 GB request costs this
process a few MiB (bench/stow_memory.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydicom import dcmread

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/(?P<region>[a-z0-9-]+)/(?P<service>[a-z-]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=[0-9a-f]{64}$"
)
_ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    409: "ConflictException",
    413: "PayloadTooLargeException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


@dataclass
class Received:
    """One request as the fake saw it."""

    path: str
    headers: dict[str, str]
    behaviour: str
    problems: list[str]
    sop_instance_uids: list[str] = field(default_factory=list)


class FakeStow:
    def __init__(self, datastore_id: str = "0123456789abcdef0123456789abcdef") -> None:
        self.datastore_id = datastore_id
        self.script: list[str] = []
        self.default = "store"
        # Seconds added to every request before its answer (a proxy's or a region's round trip; bench/stow_modes.py).
        self.delay = 0.0
        self.held: dict[str, bytes] = {}
        self.streaming = False
        # SOP Instance UID -> (bytes, SHA-256) of each part stored (every part, streaming or not).
        self.digests: dict[str, tuple[int, str]] = {}
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm on, the body would wait for the client's
            # delayed ACK (40 ms a request on Linux), a cost of this fake, not of the client under test.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake._serve(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/datastore/{self.datastore_id}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        behaviour = self._next()
        length = int(handler.headers.get("Content-Length", "0"))
        headers = {name.lower(): value for name, value in handler.headers.items()}
        if self.streaming:
            body_sha256, streamed = _read_streamed(handler.rfile, length, headers.get("content-type", ""))
            problems = _check_request(handler.path, headers, body_sha256, self.datastore_id)
            problems += streamed.problems
            found = [] if problems else streamed.parts
            parts: list[bytes] = []
            heads: list[Any] = [part.head for part in found]
            digests = [(part.size, part.digest.hexdigest()) for part in found]
        else:
            body = handler.rfile.read(length)
            problems = _check_request(handler.path, headers, hashlib.sha256(body).hexdigest(), self.datastore_id)
            parts = _parts(headers.get("content-type", ""), body) if not problems else []
            heads = list(parts)
            digests = [(len(part), hashlib.sha256(part).hexdigest()) for part in parts]
        datasets = [dcmread(io.BytesIO(head), force=True, stop_before_pixels=True) for head in heads]
        uids = [str(dataset.SOPInstanceUID) for dataset in datasets]
        received = Received(handler.path, headers, behaviour, problems, uids)
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.requests.append(received)
        if problems:
            self._answer(handler, 400, _error(400, "; ".join(problems)))
            return
        kind, _, argument = behaviour.partition(":")
        if kind == "drop":
            handler.close_connection = True
            handler.connection.close()
            return
        if kind in ("store", "slow"):
            with self._lock:
                if not self.streaming:
                    self.held.update(zip(uids, parts, strict=True))
                self.digests.update(zip(uids, digests, strict=True))
            if kind == "slow":
                time.sleep(float(argument))
            self._answer(handler, 200, self._stored(datasets))
        elif kind == "fail":
            self._answer(handler, 409, _failed(datasets, int(argument, 16)))
        elif kind == "unlisted":
            self._answer(handler, 200, {})
        elif kind == "http":
            status = int(argument)
            self._answer(handler, status, _error(status, f"fake {_ERROR_TYPES.get(status, 'error')}"), status)
        else:
            raise AssertionError(f"unknown behaviour {behaviour!r}")

    def _stored(self, datasets: list[Any]) -> dict[str, Any]:
        items = []
        for dataset in datasets:
            uid = str(dataset.SOPInstanceUID)
            image_set = hashlib.md5(str(dataset.StudyInstanceUID).encode()).hexdigest()  # noqa: S324 (an id)
            url = (
                f"{self.base_url}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
                f"/instances/{uid}?imageSetId={image_set}"
            )
            items.append(
                {
                    "00081150": {"vr": "UI", "Value": [str(dataset.SOPClassUID)]},
                    "00081155": {"vr": "UI", "Value": [uid]},
                    "00081190": {"vr": "UR", "Value": [url]},
                }
            )
        return {"00081199": {"vr": "SQ", "Value": items}}

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, document: dict[str, Any], error: int = 0) -> None:
        payload = json.dumps(document).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json" if error else "application/dicom+json")
        if error:
            handler.send_header("x-amzn-ErrorType", _ERROR_TYPES.get(error, "UnknownError"))
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def _check_request(path: str, headers: dict[str, str], body_sha256: str, datastore_id: str) -> list[str]:
    problems = []
    if path != f"/datastore/{datastore_id}/studies":
        problems.append(f"path {path}")
    match = _AUTHORIZATION.match(headers.get("authorization", ""))
    if match is None:
        problems.append("no SigV4 Authorization")
    else:
        if match["service"] != "medical-imaging":
            problems.append(f"signed for {match['service']}")
        signed = match["signed"].split(";")
        for name in ("host", "x-amz-date", "x-amz-content-sha256", "content-type"):
            if name not in signed:
                problems.append(f"{name} not signed")
    if headers.get("x-amz-content-sha256") != body_sha256:
        problems.append("x-amz-content-sha256 is not the body's SHA-256")
    if headers.get("accept") != "application/dicom+json":
        problems.append(f"Accept {headers.get('accept')}")
    content_type = headers.get("content-type", "")
    if not re.match(r'multipart/related;\s*type="application/dicom";\s*boundary=\S+$', content_type):
        problems.append(f"Content-Type {content_type}")
    if "transfer-encoding" in headers:
        problems.append("chunked (a Content-Length was expected)")
    return problems


def _parts(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body (RFC 2046 framing), each checked to be application/dicom."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    delimiter = b"\r\n--" + boundary
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:80]
    sections = (b"\r\n" + body).split(delimiter)
    assert sections[-1].startswith(b"--"), "no close delimiter"
    parts = []
    for section in sections[1:-1]:
        head, _, content = section[2:].partition(b"\r\n\r\n")
        assert b"content-type: application/dicom" in head.lower(), head
        parts.append(content)
    return parts


_PIECE = 1024 * 1024
# What of a part is kept when streaming: its header (every element before the pixel data) fits.
_HEAD_BYTES = 1024 * 1024


@dataclass
class _StreamedPart:
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    head: bytearray = field(default_factory=bytearray)

    def add(self, data: bytes | bytearray) -> None:
        self.size += len(data)
        self.digest.update(data)
        if len(self.head) < _HEAD_BYTES:
            self.head += data[: _HEAD_BYTES - len(self.head)]


class _StreamedParts:
    """A multipart/related body (RFC 2046 framing) read piece by piece: each part's size, SHA-256 and first bytes.
    Holds at most a piece and a delimiter's length at a time."""

    def __init__(self, content_type: str) -> None:
        boundary = content_type.split("boundary=", 1)[1].strip('"').encode() if "boundary=" in content_type else b""
        self.delimiter = b"\r\n--" + boundary
        self.buffer = bytearray(b"\r\n")  # the first delimiter has no line break before it
        self.state = "preamble"  # then headers, content, headers, content ..., closed
        self.parts: list[_StreamedPart] = []
        self.problems: list[str] = [] if boundary else ["no boundary"]

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while self._step():
            pass

    def finish(self) -> None:
        if self.state != "closed" and not self.problems:
            self.problems.append("no close delimiter")

    def _step(self) -> bool:
        if self.state in ("preamble", "content"):
            index = self.buffer.find(self.delimiter)
            after = index + len(self.delimiter)
            if index == -1 or len(self.buffer) < after + 2:
                # Keep what may be the start of a delimiter; the part's bytes before it are counted now.
                keep = len(self.delimiter) + 1 if index == -1 else len(self.buffer) - index
                if len(self.buffer) > keep:
                    if self.state == "content":
                        self.parts[-1].add(self.buffer[:-keep])
                    del self.buffer[:-keep]
                return False
            if self.state == "content":
                self.parts[-1].add(self.buffer[:index])
            ending = bytes(self.buffer[after : after + 2])
            del self.buffer[: after + 2]
            if ending == b"--":
                self.state = "closed"
                return False
            if ending != b"\r\n":
                self.problems.append("a delimiter not followed by a line break")
                self.state = "closed"
                return False
            self.state = "headers"
            return True
        if self.state == "headers":
            index = self.buffer.find(b"\r\n\r\n")
            if index == -1:
                return False
            head = bytes(self.buffer[:index]).lower()
            del self.buffer[: index + 4]
            if b"content-type: application/dicom" not in head:
                self.problems.append(f"a part that is not application/dicom: {head[:80]!r}")
            self.parts.append(_StreamedPart())
            self.state = "content"
            return True
        self.buffer.clear()  # the epilogue
        return False


def _read_streamed(stream: Any, length: int, content_type: str) -> tuple[str, _StreamedParts]:
    """(the body's SHA-256, its parts) read ``_PIECE`` bytes at a time."""
    digest = hashlib.sha256()
    parts = _StreamedParts(content_type)
    remaining = length
    while remaining:
        piece = stream.read(min(_PIECE, remaining))
        if not piece:
            parts.problems.append(f"body ended {remaining} bytes short of its Content-Length")
            break
        remaining -= len(piece)
        digest.update(piece)
        parts.feed(piece)
    parts.finish()
    return digest.hexdigest(), parts


def _failed(datasets: list[Any], reason: int) -> dict[str, Any]:
    items = []
    for dataset in datasets:
        items.append(
            {
                "00081150": {"vr": "UI", "Value": [str(dataset.SOPClassUID)]},
                "00081155": {"vr": "UI", "Value": [str(dataset.SOPInstanceUID)]},
                "00081197": {"vr": "US", "Value": [reason]},
            }
        )
    return {"00081198": {"vr": "SQ", "Value": items}}


def _error(status: int, message: str) -> dict[str, Any]:
    return {"message": message}
