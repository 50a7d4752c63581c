"""The STOW-RS protocol as AWS HealthImaging's StoreDICOM speaks it (PS3.18 10.5; the AHI developer guide's
"storing" pages): the request body, its SigV4 signature, and what the response says about each instance.

One owner for both callers: the SCP's stow mode (``dicom_store_scp/stow.py``, one instance per request, from the
spool file) and the workflow's stow-batched step (``functions/store_batch.py``, many instances per request, from
S3). Neither holds an instance whole: a body is a list of parts, each opened as a stream of bounded pieces, read
twice (once for the SHA-256 SigV4 signs, ``x-amz-content-sha256``, once onto the wire); its Content-Length is the
parts' sizes plus the multipart framing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from .ingest import SIGNING_SERVICE

CHUNK = 1024 * 1024
# A store response lists each instance in a few hundred bytes: this bounds what is read of one.
RESPONSE_LIMIT = 16 * 1024 * 1024

# PS3.18 Store response attributes (DICOM JSON keys).
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
RETRIEVE_URL = "00081190"

# Failure Reasons (PS3.18 / PS3.4 C-STORE statuses) worth another try later: the store is out of resources (A7xx),
# or its processing failed (0x0110); anything else is the store refusing this instance.
PROCESSING_FAILURE = 0x0110


def retry_later(failure_reason: int | None) -> bool:
    return failure_reason is not None and (failure_reason >> 8 == 0xA7 or failure_reason == PROCESSING_FAILURE)


# -- the request --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One instance of a request: ``open()`` yields its bytes in pieces of at most CHUNK (a new stream each call)."""

    name: str  # what errors call it (a path, an S3 key)
    open: Callable[[], Iterator[bytes]]


def file_part(path: Path) -> Part:
    def pieces() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while piece := handle.read(CHUNK):
                yield piece

    return Part(str(path), pieces)


class MultipartBody:
    """``multipart/related; type="application/dicom"``, one part per instance, streamed from its source.

    Made by reading every part once (its size and the body's SHA-256); ``stream()`` reads them again and raises
    OSError where a part is not the size it was (a body that does not match its signature is never sent whole)."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.boundary = uuid.uuid4().hex
        self.head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self.separator = b"\r\n" + self.head
        self.tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self.content_type = f'multipart/related; type="application/dicom"; boundary={self.boundary}'
        digest = hashlib.sha256()
        self.sizes: list[int] = []
        for number, part in enumerate(parts):
            digest.update(self.head if number == 0 else self.separator)
            size = 0
            for piece in part.open():
                size += len(piece)
                digest.update(piece)
            self.sizes.append(size)
        digest.update(self.tail)
        self.sha256 = digest.hexdigest()
        self.length = len(self.head) + len(self.separator) * (len(parts) - 1) + sum(self.sizes) + len(self.tail)

    @property
    def file_size(self) -> int:
        return sum(self.sizes)

    def stream(self) -> Iterator[bytes]:
        for number, part in enumerate(self.parts):
            yield self.head if number == 0 else self.separator
            sent = 0
            for piece in part.open():
                sent += len(piece)
                yield piece
            if sent != self.sizes[number]:
                raise OSError(f"{part.name} changed size while sent ({sent} of {self.sizes[number]} bytes)")
        yield self.tail


def signed_headers(credentials: Any, region: str, url: str, body: MultipartBody) -> dict[str, str]:
    """The StoreDICOM request's headers, SigV4-signed (service ``medical-imaging``) over the body's SHA-256."""
    request = AWSRequest(
        method="POST",
        url=url,
        headers={
            "Content-Type": body.content_type,
            "Content-Length": str(body.length),
            "Accept": "application/dicom+json",
            "X-Amz-Content-SHA256": body.sha256,
        },
    )
    SigV4Auth(credentials, SIGNING_SERVICE, region).add_auth(request)
    return dict(request.headers.items())


# -- the response -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """What the response says about one instance it lists."""

    stored: bool
    sop_class_uid: str = ""
    image_set_id: str = ""  # stored: the image set its Retrieve URL names
    failure_reason: int | None = None  # failed: its Failure Reason


def listings(body: bytes) -> dict[str, Listed]:
    """Every instance the response lists, by SOP Instance UID (empty where it is not a DICOM JSON response).

    An instance listed both stored and failed (a server that stored one copy and refused another) counts stored."""
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    # One DICOM JSON object; some servers wrap it in an array.
    objects = document if isinstance(document, list) else [document]
    found: dict[str, Listed] = {}
    for stored, sequence in ((True, REFERENCED_SOP_SEQUENCE), (False, FAILED_SOP_SEQUENCE)):
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            element = obj.get(sequence)
            items = (element.get("Value") if isinstance(element, dict) else None) or []
            for item in items:
                uid = first_value(item, REFERENCED_SOP_INSTANCE_UID) if isinstance(item, dict) else None
                if not isinstance(uid, str) or uid in found:
                    continue
                found[uid] = _listed(stored, item)
    return found


def _listed(stored: bool, item: dict[str, Any]) -> Listed:
    sop_class = first_value(item, REFERENCED_SOP_CLASS_UID)
    sop_class = sop_class if isinstance(sop_class, str) else ""
    if stored:
        return Listed(True, sop_class, image_set_id=image_set_id(item))
    reason = first_value(item, FAILURE_REASON)
    return Listed(False, sop_class, failure_reason=reason if isinstance(reason, int) else None)


def describe_failure(http_status: int, listed: Listed) -> str:
    code = listed.failure_reason
    return f"HTTP {http_status}, Failure Reason " + (f"0x{code:04X}" if code is not None else "missing")


def first_value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def image_set_id(item: dict[str, Any]) -> str:
    """The image set the Retrieve URL names (AHI's retrieve URLs take ``imageSetId``), where it names one."""
    url = first_value(item, RETRIEVE_URL)
    if not isinstance(url, str):
        return ""
    return (parse_qs(urlsplit(url).query).get("imageSetId") or [""])[0]


def error_message(body: bytes) -> str:
    """AWS error bodies are JSON with a message; anything else is cut short (it may be a whole HTML page)."""
    try:
        document = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(document, dict):
        for name in ("message", "Message", "errorMessage"):
            if isinstance(document.get(name), str):
                return str(document[name][:200])
    return ""
